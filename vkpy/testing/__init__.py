"""Test helpers for vkpy and its plugins: a real control plane (``vkpy.testing.cluster``), the pytest
fixtures built on it (``vkpy.testing.pytest_plugin``, loaded automatically by pytest), a runner for
``vkpy run`` as a real process (``vkpy.testing.runner``) and polling helpers.

Importing this package stays cheap: each helper imports what it needs itself."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


class WaitTimeout(AssertionError):
    """A condition did not come true in time; the message says what was awaited and the last value."""


def wait_for(
    condition: Callable[[], T], timeout: float = 60, interval: float = 0.2, what: str = "condition"
) -> T:
    """Poll ``condition`` until it returns something truthy; return that. Exceptions count as "not
    yet" until the deadline, then the last one is reported."""
    deadline = time.monotonic() + timeout
    last: object = None
    while True:
        try:
            value = condition()
            if value:
                return value
            last = value
        except Exception as exc:
            last = exc
        if time.monotonic() > deadline:
            raise WaitTimeout(f"timed out after {timeout:.0f} s waiting for {what}; last: {last!r}")
        time.sleep(interval)
