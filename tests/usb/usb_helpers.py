"""Helpers for the USB transport tests: a recording NodeHandle, pods, waiting."""

from __future__ import annotations

import asyncio
import itertools
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar, cast

import structlog
from vkpy_usb.testing import EmulatedDevice

from vkpy import Container, DeviceHealth, Pod
from vkpy.testing.cluster import ControlPlane

T = TypeVar("T")

MakeDevice = Callable[..., EmulatedDevice]
"""The ``make_device`` fixture: plugs an emulated device into the test's bus."""

VENDOR_ID = 0x1209
PRODUCT_ID = 0x0001


class RecordingNode:
    """The smallest NodeHandle: records pushed status reports and health."""

    def __init__(self, name: str = "usb-node") -> None:
        self.name = name
        self.transport: Any = None
        self.log = structlog.get_logger("tests.usb").bind(node=name)
        self.reports: list[str] = []
        self.health: list[DeviceHealth] = []

    def report_status(self, pod_uid: str) -> None:
        self.reports.append(pod_uid)

    def set_health(self, health: DeviceHealth) -> None:
        self.health.append(health)

    @property
    def reachable(self) -> bool:
        return bool(self.health) and self.health[-1].reachable


_names = itertools.count()


def make_pod(*argv: str, name: str | None = None) -> Pod:
    return Pod(
        uid=str(uuid.uuid4()),
        namespace="default",
        name=name or f"usb-pod-{next(_names)}",
        node_name="usb-node",
        containers=(Container(name="main", command=argv),),
        restart_policy="Never",
    )


async def eventually(
    probe: Callable[[], Awaitable[T]],
    check: Callable[[T], bool],
    timeout: float = 10.0,
    what: str = "condition",
) -> T:
    """Ask ``probe`` until ``check`` accepts its answer; return that answer."""
    last: Any = None
    try:
        async with asyncio.timeout(timeout):
            while True:
                try:
                    last = await probe()
                except Exception as exc:  # not yet: e.g. the link is still reconnecting
                    last = exc
                else:
                    if check(last):
                        return cast(T, last)
                await asyncio.sleep(0.05)
    except TimeoutError:
        raise AssertionError(f"timed out waiting for {what}; last: {last!r}") from None


async def until(check: Callable[[], bool], timeout: float = 10.0, what: str = "condition") -> None:
    async def probe() -> bool:
        return check()

    await eventually(probe, bool, timeout, what)


def node_condition(cluster: ControlPlane, node: str) -> dict[str, Any]:
    """The node's Ready condition as the API server has it."""
    data = cluster.kubectl_json("get", "node", node)
    for condition in data["status"].get("conditions", []):
        if condition["type"] == "Ready":
            return dict(condition)
    return {}
