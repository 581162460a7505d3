"""Every hook is in the hook reference (docs/hooks.md) with its exact signature, and the reference
documents no hook that does not exist."""

from __future__ import annotations

import re

import pytest
from meta_support import DOCS, hook_signatures

HOOKS = hook_signatures()
REFERENCE = DOCS / "hooks.md"


def test_the_contract_is_found() -> None:
    assert "create_pod" in HOOKS
    assert HOOKS["delete_pod"] == (
        "async def delete_pod(node: NodeHandle, pod: Pod, grace_period_seconds: int) -> None"
    )


@pytest.mark.parametrize("hook", sorted(HOOKS))
def test_hook_is_documented_with_its_signature(hook: str) -> None:
    lines = {line.strip() for line in REFERENCE.read_text().splitlines()}
    assert f"### `{hook}`" in lines, f"docs/hooks.md has no '### `{hook}`' section"
    assert HOOKS[hook] in lines, (
        f"docs/hooks.md must show the signature of {hook} exactly as vkpy/hookspecs.py has it, on one "
        f"line:\n{HOOKS[hook]}"
    )


def test_no_documented_hook_is_missing_from_the_contract() -> None:
    # Hooks are snake_case; the types documented on the same page (`Pod`, `DEFER`) are not.
    documented = set(re.findall(r"^### `([a-z_]+)`", REFERENCE.read_text(), re.M))
    assert documented - set(HOOKS) == set(), "docs/hooks.md documents hooks vkpy/hookspecs.py does not have"
