"""Which watch objects a pod worker ignores as older than the one its own status write returned."""

from __future__ import annotations

from typing import Any

import pytest

from vkpy.pods.worker import _older


def _pod(rv: str) -> dict[str, Any]:
    return {"metadata": {"uid": "u", "resourceVersion": rv}}


@pytest.mark.parametrize(
    ("incoming", "held", "older"),
    [
        ("41", "42", True),
        ("42", "42", False),
        ("43", "42", False),
        ("9", "10", True),  # compared as numbers, not as strings
        ("100", "99", False),
        ("abc", "42", False),  # not etcd's: never called older
        ("41", "", False),
    ],
)
def test_older_compares_etcd_revisions_as_numbers(incoming: str, held: str, older: bool) -> None:
    assert _older(_pod(incoming), _pod(held)) is older


def test_nothing_is_older_than_no_object() -> None:
    assert _older(_pod("1"), None) is False
