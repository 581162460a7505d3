"""Every key of the configuration file (the attrs classes of vkpy/config/schema.py) is documented
in docs/configuration.md: a class with a section of its own (``## `log` ``) in a table row per key
(``| `level` |``), a nested class without one (``restart_backoff: {initial, max}``) in its parent
key's row."""

from __future__ import annotations

import re

import pytest
from meta_support import DOCS, markdown_sections, schema_classes

ROOT_CLASS = "VkpyConfig"
ROOT_SECTION = "Top level"
# Fields the loader fills itself; they are not keys a user writes.
NOT_KEYS = {("VkpyConfig", "source"), ("NodeConfig", "transport_options")}

CLASSES = schema_classes()
GUIDE = (DOCS / "configuration.md").read_text()
SECTIONS = markdown_sections(GUIDE)


def _row(section: str, key: str) -> str | None:
    match = re.search(rf"^\| `{re.escape(key)}` .*$", section, re.M)
    return match.group(0) if match else None


def _nested(annotation: str) -> list[str]:
    return [name for name in CLASSES if re.search(rf"\b{name}\b", annotation)]


def _keys() -> list[tuple[str, str, str, str | None]]:
    """(class, key, section title, parent key whose row must name the key, or None)."""
    out: list[tuple[str, str, str, str | None]] = []

    def walk(cls: str, section: str, parent: str | None) -> None:
        for key, annotation in CLASSES[cls]:
            if (cls, key) in NOT_KEYS:
                continue
            out.append((cls, key, section, parent))
            for nested in _nested(annotation):
                own = f"`{key}`"
                if own in SECTIONS:
                    walk(nested, own, None)
                else:
                    walk(nested, section, parent or key)

    walk(ROOT_CLASS, ROOT_SECTION, None)
    return out


KEYS = _keys()


def test_the_schema_is_found() -> None:
    assert ("NodeConfig", "restart_backoff", "`nodes`", None) in KEYS
    assert ("Backoff", "initial", "`nodes`", "restart_backoff") in KEYS
    assert ("KubeletConfig", "tls_cert", "`kubelet`", None) in KEYS


@pytest.mark.parametrize(("cls", "key", "section", "parent"), KEYS, ids=[f"{c}.{k}" for c, k, _, _ in KEYS])
def test_key_is_documented(cls: str, key: str, section: str, parent: str | None) -> None:
    assert section in SECTIONS, f"docs/configuration.md has no '## {section}' section"
    if parent is None:
        assert _row(SECTIONS[section], key), (
            f"{cls}.{key}: docs/configuration.md section '{section}' has no table row '| `{key}` |'"
        )
    else:
        row = _row(SECTIONS[section], parent)
        assert row is not None, f"docs/configuration.md section '{section}' has no row for `{parent}`"
        assert re.search(rf"\b{re.escape(key)}\b", row), (
            f"{cls}.{key}: the row of `{parent}` in docs/configuration.md does not mention `{key}`"
        )
