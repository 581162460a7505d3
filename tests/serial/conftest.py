"""Fixtures of the serial transport tests: software serial links, the reference device as a
process on them, and SerialTransport instances driven in-process."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from serial_support import DeviceProcess, MakeTransport, RecordingNode, SerialLink, StartDevice
from vkpy_serial import SerialOptions, SerialTransport


@pytest.fixture
def link(tmp_path: Path) -> Iterator[SerialLink]:
    serial_link = SerialLink(tmp_path / "link").plug()
    try:
        yield serial_link
    finally:
        if serial_link.plugged:
            serial_link.unplug()


@pytest.fixture
def start_device(tmp_path: Path) -> Iterator[StartDevice]:
    """``start_device(link, "--pods", "2")``: the reference device on the link's device side."""
    devices: list[DeviceProcess] = []

    def start(link: SerialLink, *args: str) -> DeviceProcess:
        device = DeviceProcess(link.device_path, *args, log_path=tmp_path / f"device-{len(devices)}.log")
        devices.append(device.start())
        return device

    yield start
    for device in devices:
        device.stop()


@pytest.fixture
async def make_transport() -> AsyncIterator[MakeTransport]:
    """``await make_transport(link, **options)``: a started SerialTransport on ``link.host_path``."""
    started: list[tuple[SerialTransport, RecordingNode]] = []

    async def make(
        link: SerialLink, name: str = "serial-test", **options: Any
    ) -> tuple[SerialTransport, RecordingNode]:
        options.setdefault("request_timeout", 0.5)
        options.setdefault("reconnect_initial", 0.1)
        options.setdefault("reconnect_max", 0.5)
        node = RecordingNode(name)
        transport = SerialTransport(node, SerialOptions(port=str(link.host_path), **options))
        node.transport = transport
        await transport.node_start(node)
        started.append((transport, node))
        return transport, node

    yield make
    for transport, node in started:
        await transport.node_stop(node)
