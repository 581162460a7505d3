"""The example device plugin's hooks called directly, in front of a real ``local`` transport: what
a plugin author's unit tests look like (docs/testing-plugins.md)."""

from __future__ import annotations

import asyncio
import importlib.util
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import structlog

from vkpy import DEFER, Container, DeviceHealth, LogOptions, Pod, PodRejected, PodStatusReport, Terminated
from vkpy.plugins.local import LocalOptions, LocalTransport

MODULE = Path(__file__).resolve().parents[2] / "examples" / "01-device-plugin" / "vkpy_nice_runner.py"


def _load() -> ModuleType:
    # From the file itself: these tests need no installed package (the end-to-end ones do).
    spec = importlib.util.spec_from_file_location("vkpy_nice_runner", MODULE)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


plugin = _load()


class Node:
    """The smallest :class:`vkpy.NodeHandle`: what the core hands every hook."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.transport: Any = None
        self.log = structlog.get_logger("tests.examples").bind(node=name)
        self.health = DeviceHealth(reachable=True)

    def report_status(self, pod_uid: str) -> None:
        """The core would ask get_pod_status now; these tests poll instead."""

    def set_health(self, health: DeviceHealth) -> None:
        self.health = health


@pytest.fixture
async def node(tmp_path: Path) -> AsyncIterator[Node]:
    node = Node("unit-nice")
    node.transport = LocalTransport(node, LocalOptions(state_dir=str(tmp_path / "device")))
    await node.transport.node_start(node)
    try:
        yield node
    finally:
        for uid in await node.transport.list_pods(node):
            pod = Pod(uid=uid, namespace="", name="", node_name=node.name, containers=())
            await node.transport.delete_pod(node, pod, 0)
            await until(lambda p=pod: status(node, p), lambda report: report is None)
        await node.transport.node_stop(node)


def make_pod(annotations: dict[str, str] | None = None) -> Pod:
    # `nice` without arguments prints the niceness it runs at.
    return Pod(
        uid=str(uuid.uuid4()),
        namespace="default",
        name="cruncher",
        node_name="unit-nice",
        containers=(Container(name="main", command=("nice",)),),
        restart_policy="Never",
        annotations=annotations or {},
    )


async def status(node: Node, pod: Pod) -> PodStatusReport | None:
    report: PodStatusReport | None = await node.transport.get_pod_status(node, pod)
    return report


async def until(ask: Any, accept: Any, timeout: float = 15) -> Any:
    async with asyncio.timeout(timeout):
        while not accept(answer := await ask()):
            await asyncio.sleep(0.05)
    return answer


async def run_to_the_end(node: Node, pod: Pod) -> None:
    def ended(report: PodStatusReport | None) -> bool:
        return report is not None and isinstance(report.containers["main"], Terminated)

    await until(lambda: status(node, pod), ended)


async def output(node: Node, pod: Pod, previous: bool = False) -> int:
    lines = node.transport.get_container_logs(node, pod, "main", LogOptions(previous=previous))
    return int(b"".join([line.data async for line in lines]))


async def test_pods_without_the_annotation_are_deferred(node: Node) -> None:
    pod = make_pod()
    assert await plugin.create_pod(node, pod) is DEFER
    assert await plugin.restart_container(node, pod, "main") is DEFER
    assert await status(node, pod) is None  # the plugin itself did nothing on the device


async def test_annotated_pods_run_niced_and_stay_niced_after_a_restart(node: Node) -> None:
    plain, niced = make_pod(), make_pod({plugin.ANNOTATION: "7"})
    await node.transport.create_pod(node, plain)  # what the core does after a DEFER
    assert await plugin.create_pod(node, niced) is None
    await run_to_the_end(node, plain)
    await run_to_the_end(node, niced)
    base = await output(node, plain)
    assert await output(node, niced) == min(19, base + 7)

    assert await plugin.restart_container(node, niced, "main") is None
    await until(lambda: output(node, niced, previous=True), lambda value: value == min(19, base + 7))
    await run_to_the_end(node, niced)
    assert await output(node, niced) == min(19, base + 7)


@pytest.mark.parametrize("value", ["0", "20", "-5", "ten", " 5", "5.0", "٣"])
async def test_bad_annotations_reject_the_pod(node: Node, value: str) -> None:
    pod = make_pod({plugin.ANNOTATION: value})
    with pytest.raises(PodRejected, match="must be a whole number from 1 to 19") as rejected:
        await plugin.create_pod(node, pod)
    assert rejected.value.reason == "InvalidNiceness"
    assert await status(node, pod) is None


def test_an_empty_argv_is_left_alone() -> None:
    assert plugin.with_nice(Container(name="idle"), 5) == Container(name="idle")
    niced = plugin.with_nice(Container(name="c", command=("a",), args=("b",)), 5)
    assert niced.argv == ("nice", "-n", "5", "a", "b")
