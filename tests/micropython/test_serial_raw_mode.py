"""The serial transport's ``mode: raw``: the port kept open as a byte channel for a device plugin,
one user at a time, with the protocol mode's health and reconnects, and pod hooks that say a
device plugin is missing."""

from __future__ import annotations

import asyncio
import os
import tty
from pathlib import Path

import pytest
from board_support import RecordingNode, StartBoard, eventually
from conftest import MakeTransport
from vkpy_serial import LinkLost, SerialOptions, SerialTransport

from vkpy import Container, DeviceHealth, LogOptions, LogsNotAvailable, Pod, PodRejected
from vkpy.config import ConfigValidationError, build_config
from vkpy.plugins.loader import load_plugins


def load(tmp_path: Path, serial_section: object) -> object:
    raw = {"nodes": [{"name": "board", "transport": "serial", "serial": serial_section}]}
    return build_config(raw, tmp_path / "vkpy.yaml", load_plugins()).nodes[0].transport_options


def test_mode_is_an_option_of_the_serial_section(tmp_path: Path) -> None:
    assert load(tmp_path, {"port": "/dev/ttyACM0"}) == SerialOptions(port="/dev/ttyACM0", mode="protocol")
    assert load(tmp_path, {"port": "/dev/ttyACM0", "mode": "raw"}) == SerialOptions(
        port="/dev/ttyACM0", mode="raw"
    )


@pytest.mark.parametrize(
    ("section", "path", "text"),
    [
        ({"port": "/dev/ttyACM0", "mode": "rwa"}, "nodes[0].serial.mode", "did you mean 'raw'"),
        (
            {"port": "/dev/ttyACM0", "mode": "raw", "device_id": "b1"},
            "nodes[0].serial.device_id",
            "mode: raw",
        ),
        (
            {"port": "/dev/ttyACM0", "mode": "raw", "xonxoff": True},
            "nodes[0].serial.xonxoff",
            "raw mode is binary",
        ),
    ],
)
def test_raw_mode_mistakes_are_reported_at_their_key(
    tmp_path: Path, section: dict[str, object], path: str, text: str
) -> None:
    with pytest.raises(ConfigValidationError) as raised:
        load(tmp_path, section)
    assert f"{path}:" in str(raised.value)
    assert text in str(raised.value)


async def test_the_channel_is_one_user_at_a_time_first_come_first_served(
    start_board: StartBoard, raw_transport: MakeTransport
) -> None:
    board = start_board()
    transport, _ = await raw_transport(board.path)
    order: list[str] = []

    async def use(name: str, hold: float) -> None:
        async with transport.channel() as channel:
            order.append(f"{name} in")
            await channel.write(b"\r\x03")
            await asyncio.sleep(hold)
            order.append(f"{name} out")

    first = asyncio.ensure_future(use("first", 0.3))
    await asyncio.sleep(0.05)
    assert transport.channel_busy
    second = asyncio.ensure_future(use("second", 0))
    third = asyncio.ensure_future(use("third", 0))
    await asyncio.gather(first, second, third)
    assert order == ["first in", "first out", "second in", "second out", "third in", "third out"]
    assert not transport.channel_busy


async def test_bytes_nobody_holds_a_channel_for_are_dropped(
    start_board: StartBoard, raw_transport: MakeTransport
) -> None:
    board = start_board()
    transport, _ = await raw_transport(board.path)
    async with transport.channel() as channel:
        await channel.write(b"\r")  # the board answers with a prompt...
    await asyncio.sleep(0.3)  # ...which arrives while nobody listens
    async with transport.channel() as channel:
        assert channel.pending() == 0
        await channel.write(b"\r")
        async with asyncio.timeout(5):
            assert b">>> " in await channel.read()


async def test_health_follows_the_port_and_a_hang_up_ends_the_channel(
    start_board: StartBoard, raw_transport: MakeTransport
) -> None:
    board = start_board()
    transport, node = await raw_transport(board.path)
    assert await transport.node_health(node) == DeviceHealth(True)
    assert transport.connection == 1
    async with transport.channel() as channel:
        board.kill()  # the cable is pulled

        async def read_to_the_end() -> None:
            async with asyncio.timeout(5):
                while True:
                    await channel.read()

        with pytest.raises(LinkLost, match="hung up"):
            await read_to_the_end()
        with pytest.raises(LinkLost):
            await channel.write(b"\x03")
    health = await eventually(lambda: transport.node_health(node), lambda h: not h.reachable)
    assert health.reason == "DeviceDisconnected"
    closed: int | None = transport.connection
    assert closed is None
    assert not await transport.wait_connected(0.1)


async def test_a_missing_port_is_not_ready_and_opened_once_it_exists(
    tmp_path: Path, raw_transport: MakeTransport
) -> None:
    link = tmp_path / "by-id" / "usb-MicroPython_Board-if00"
    link.parent.mkdir()
    transport, node = await raw_transport(str(link), startup_wait=0.5)
    health = await transport.node_health(node)
    assert (health.reachable, health.reason) == (False, "DeviceDisconnected")
    assert "does not exist (device unplugged?)" in health.message
    master, slave = os.openpty()
    tty.setraw(slave)
    try:
        link.symlink_to(os.ttyname(slave))  # plugged in
        assert await transport.wait_connected(5)
        assert await transport.node_health(node) == DeviceHealth(True)
        async with transport.channel() as channel:
            await channel.write(b"raw bytes, no protocol")
            assert os.read(master, 100) == b"raw bytes, no protocol"
    finally:
        os.close(master)
        os.close(slave)


async def test_without_a_device_plugin_pods_are_rejected_with_a_clear_reason(
    start_board: StartBoard, raw_transport: MakeTransport
) -> None:
    board = start_board()
    transport, node = await raw_transport(board.path, name="raw-alone")
    pod = Pod(uid="u1", namespace="default", name="p", node_name="raw-alone", containers=(Container("main"),))
    assert await transport.get_pod_status(node, pod) is None
    with pytest.raises(
        PodRejected, match="transport serial in raw mode needs a device plugin such as micropython"
    ):
        await transport.create_pod(node, pod)
    with pytest.raises(PodRejected) as rejected:
        await transport.create_pod(node, pod)
    assert rejected.value.reason == "NoDevicePlugin"
    assert "plugins: [micropython]" in str(rejected.value)
    with pytest.raises(LogsNotAvailable, match="needs a device plugin"):
        transport.get_container_logs(node, pod, "main", LogOptions())
    assert await transport.list_pods(node) == []
    await transport.delete_pod(node, pod, 0)  # holds nothing: nothing to do
    assert await transport.node_capacity(node) is None


def test_the_raw_api_is_refused_in_protocol_mode() -> None:
    transport = SerialTransport(RecordingNode(), SerialOptions(port="/dev/ttyACM0"))
    assert not transport.raw
    with pytest.raises(RuntimeError, match="needs mode: raw"):
        transport.channel()
