"""Which watch objects a pod worker ignores: the version it holds (the echo of its own status
write), or an older one (queued before that write)."""

from __future__ import annotations

from typing import Any

import pytest

from vkpy.pods.worker import _not_newer


def _pod(rv: str) -> dict[str, Any]:
    return {"metadata": {"uid": "u", "resourceVersion": rv}}


@pytest.mark.parametrize(
    ("incoming", "held", "ignored"),
    [
        ("41", "42", True),  # older
        ("42", "42", True),  # the same version
        ("43", "42", False),  # newer
        ("9", "10", True),  # compared as numbers, not as strings
        ("100", "99", False),
        ("abc", "abc", True),  # not etcd's: equal is still the same version
        ("abc", "42", False),  # not etcd's: never called older
        ("41", "", False),
        ("", "", False),
    ],
)
def test_versions_compare_as_etcd_revisions(incoming: str, held: str, ignored: bool) -> None:
    assert _not_newer(_pod(incoming), _pod(held)) is ignored


def test_nothing_is_held_before_the_first_object() -> None:
    assert _not_newer(_pod("1"), None) is False
