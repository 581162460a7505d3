"""Helpers for the local transport tests: a recording NodeHandle, pod builders, waiting."""

from __future__ import annotations

import asyncio
import functools
import itertools
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import structlog

from vkpy import Container, DeviceHealth, Pod, PodStatusReport, Volume
from vkpy.plugins.local import LocalOptions, LocalTransport

T = TypeVar("T")


class RecordingNode:
    """The smallest NodeHandle: records pushed status reports and health."""

    def __init__(self, name: str = "test-node") -> None:
        self.name = name
        self.transport: Any = None
        self.log = structlog.get_logger("tests.local").bind(node=name)
        self.reports: list[str] = []
        self.health: list[DeviceHealth] = []
        self._changed = asyncio.Event()

    def report_status(self, pod_uid: str) -> None:
        self.reports.append(pod_uid)
        self._changed.set()

    def set_health(self, health: DeviceHealth) -> None:
        self.health.append(health)

    async def next_report(self, pod_uid: str, timeout: float = 10.0) -> None:
        """Wait for a report about ``pod_uid`` made after this call."""
        seen = len(self.reports)
        async with asyncio.timeout(timeout):
            while pod_uid not in self.reports[seen:]:
                self._changed.clear()
                await self._changed.wait()


_names = itertools.count()


def make_pod(
    *containers: Container,
    init: tuple[Container, ...] = (),
    volumes: tuple[Volume, ...] = (),
    grace: int = 30,
) -> Pod:
    return Pod(
        uid=str(uuid.uuid4()),
        namespace="default",
        name=f"pod-{next(_names)}",
        node_name="test-node",
        containers=containers,
        init_containers=init,
        volumes=volumes,
        termination_grace_period_seconds=grace,
    )


def sh(name: str, script: str, **kwargs: Any) -> Container:
    return Container(name=name, command=("sh", "-c", script), **kwargs)


async def eventually(
    probe: Callable[[], Awaitable[T]], check: Callable[[T], bool], timeout: float = 10.0
) -> T:
    """Ask ``probe`` until ``check`` accepts its answer; return that answer."""
    async with asyncio.timeout(timeout):
        while True:
            value = await probe()
            if check(value):
                return value
            await asyncio.sleep(0.05)


class Local:
    """The transport under test, its node, and shortcuts."""

    def __init__(self, transport: LocalTransport, node: RecordingNode) -> None:
        self.transport = transport
        self.node = node

    async def status(self, pod: Pod) -> PodStatusReport | None:
        return await self.transport.get_pod_status(self.node, pod)

    async def state(self, pod: Pod, container: str, init: bool = False) -> Any:
        report = await self.status(pod)
        assert report is not None
        return (report.init_containers if init else report.containers).get(container)

    async def wait_state(self, pod: Pod, container: str, kind: type, init: bool = False) -> Any:
        async def look() -> Any:
            return await self.state(pod, container, init)

        return await eventually(look, lambda s: isinstance(s, kind))


def new_transport(state_dir: Path, name: str = "test-node") -> tuple[LocalTransport, RecordingNode]:
    node = RecordingNode(name)
    transport = LocalTransport(node, LocalOptions(state_dir=str(state_dir)))
    node.transport = transport
    return transport, node


async def clean_up(transport: LocalTransport, node: RecordingNode) -> None:
    """Delete every pod left (grace 0) and wait until its folder is gone, so no process survives."""
    for uid in await transport.list_pods(node):
        pod = Pod(uid=uid, namespace="default", name="left-over", node_name=node.name, containers=())
        await transport.delete_pod(node, pod, 0)
        status = functools.partial(transport.get_pod_status, node, pod)
        await eventually(status, lambda report: report is None)
    await transport.node_stop(node)
