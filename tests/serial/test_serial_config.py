"""The serial transport as the configuration file and the plugin loader see it, and how it finds and
opens ports (stable by-id names, glob patterns, clear messages)."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest
import serial
from serial_support import SerialLink
from vkpy_serial import PortError, SerialOptions, SerialTransport, resolve_port
from vkpy_serial.transport import _explain

from vkpy.config import ConfigValidationError, build_config
from vkpy.plugins.loader import load_plugins


def load(tmp_path: Path, serial_section: object) -> object:
    registry = load_plugins()
    raw = {"nodes": [{"name": "board", "transport": "serial", "serial": serial_section}]}
    return build_config(raw, tmp_path / "vkpy.yaml", registry).nodes[0].transport_options


def test_the_plugin_registers_the_serial_transport() -> None:
    registry = load_plugins()
    assert registry.transports["serial"] is SerialTransport
    info = registry.infos["serial"]
    assert info.distribution == "vkpy-serial"
    assert info.transports == ("serial",)


def test_a_node_section_becomes_serial_options_with_defaults(tmp_path: Path) -> None:
    options = load(
        tmp_path,
        {
            "port": "/dev/serial/by-id/usb-Board-if00",
            "request_timeout": "2s",
            "device_id": "board-1",
            "rtscts": True,
        },
    )
    assert options == SerialOptions(
        port="/dev/serial/by-id/usb-Board-if00", request_timeout=2.0, device_id="board-1", rtscts=True
    )
    assert isinstance(options, SerialOptions)
    assert (options.baudrate, options.bytesize, options.parity, options.stopbits) == (115200, 8, "none", 1.0)
    assert options.exclusive
    assert options.reconnect_max == 30.0


@pytest.mark.parametrize(
    ("section", "path", "text"),
    [
        ({}, "nodes[0].serial.port", "missing required key"),
        ({"port": "ttyUSB0"}, "nodes[0].serial.port", "not an absolute path"),
        ({"port": "/dev/ttyUSB0", "baudrate": "fast"}, "nodes[0].serial.baudrate", "positive number"),
        ({"port": "/dev/ttyUSB0", "parity": "evne"}, "nodes[0].serial.parity", "did you mean 'even'"),
        ({"port": "/dev/ttyUSB0", "stopbits": 3}, "nodes[0].serial.stopbits", "1, 1.5 or 2"),
        ({"port": "/dev/ttyUSB0", "bytesize": 9}, "nodes[0].serial.bytesize", "expected one of 5, 6, 7, 8"),
        ({"port": "/dev/ttyUSB0", "xonxoff": True}, "nodes[0].serial.xonxoff", "binary frames"),
        ({"port": "/dev/ttyUSB0", "attempts": 0}, "nodes[0].serial.attempts", "between 1 and 20"),
        ({"port": "/dev/ttyUSB0", "reconnect_max": "100ms"}, "nodes[0].serial.reconnect_max", "at least"),
        ({"port": "/dev/ttyUSB0", "baud": 9600}, "nodes[0].serial.baud", "did you mean 'baudrate'"),
    ],
)
def test_mistakes_are_reported_at_their_key(
    tmp_path: Path, section: dict[str, object], path: str, text: str
) -> None:
    with pytest.raises(ConfigValidationError) as raised:
        load(tmp_path, section)
    message = str(raised.value)
    assert f"{path}:" in message
    assert text in message


def test_slow_lines_stretch_the_default_timeout_only() -> None:
    class Node:
        name = "n"

    fast = SerialTransport(Node(), SerialOptions(port="/dev/x"))  # type: ignore[arg-type]
    slow = SerialTransport(Node(), SerialOptions(port="/dev/x", baudrate=9600))  # type: ignore[arg-type]
    chosen = SerialTransport(Node(), SerialOptions(port="/dev/x", baudrate=9600, request_timeout=0.5))  # type: ignore[arg-type]
    assert 1.0 <= fast.client_options()["timeout"] < 1.2
    assert slow.client_options()["timeout"] > 6
    assert chosen.client_options()["timeout"] == 0.5


def test_ports_are_found_by_name_or_by_pattern(link: SerialLink, tmp_path: Path) -> None:
    by_id = link.host_path.parent
    assert resolve_port(str(link.host_path)) == str(link.host_path)
    assert resolve_port(str(by_id / "usb-vkpy_*")) == str(link.host_path)
    with pytest.raises(PortError, match="no serial port matches"):
        resolve_port(str(by_id / "usb-nothing*"))
    (by_id / "usb-vkpy_Other_0002-if00").symlink_to(link.host_path)
    with pytest.raises(PortError, match="2 serial ports match"):
        resolve_port(str(by_id / "usb-vkpy_*"))


def test_open_failures_say_what_to_do() -> None:
    denied = serial.SerialException(
        errno.EACCES, "could not open port /dev/ttyACM0: [Errno 13] Permission denied"
    )
    assert "dialout" in _explain("/dev/ttyACM0", denied)
    missing = serial.SerialException(errno.ENOENT, "could not open port /dev/ttyACM0: [Errno 2] No such file")
    assert _explain("/dev/ttyACM0", missing) == "/dev/ttyACM0 does not exist (device unplugged?)"
    locked = serial.SerialException(errno.EAGAIN, "Could not exclusively lock port /dev/ttyACM0: [Errno 11]")
    assert "in use by another program" in _explain("/dev/ttyACM0", locked)


async def test_an_exclusively_opened_port_is_not_opened_twice(link: SerialLink) -> None:
    class Node:
        name = "n"

        def set_health(self, health: object) -> None:
            pass

    first = SerialTransport(Node(), SerialOptions(port=str(link.host_path)))  # type: ignore[arg-type]
    second = SerialTransport(Node(), SerialOptions(port=str(link.host_path)))  # type: ignore[arg-type]
    stream = await first.open_stream()
    try:
        with pytest.raises(PortError, match="in use by another program"):
            await second.open_stream()
    finally:
        await stream.close()
