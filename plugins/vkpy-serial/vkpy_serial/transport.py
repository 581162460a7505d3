"""The ``serial`` transport: a :class:`~vkpy.protocol.ProtocolTransport` whose byte stream is a
serial port opened with pyserial-asyncio-fast.

Everything about pods, reconnects and logs is the base class's; this module only knows how to
find and open the port, and how a slow line stretches the protocol's timeouts.
"""

from __future__ import annotations

import asyncio
import errno
import glob
from typing import Any, Literal

import attrs
import serial
import serial_asyncio_fast

from vkpy.config import InvalidValue, parse_with
from vkpy.protocol import AsyncioStreams, ByteStream, ProtocolOptions, ProtocolTransport
from vkpy.types import NodeHandle

PARITIES = {"none": "N", "even": "E", "odd": "O", "mark": "M", "space": "S"}
_GLOB_CHARS = frozenset("*?[")
_LARGE_EXCHANGE_BYTES = 3300
"""A bulk ``logs`` exchange at the default chunk size, request and reply, in bytes on the wire."""
_BITS_PER_BYTE_TWICE = 20
"""Two transmission times of one byte at 10 bits per byte (8N1): the spec's timeout rule."""


def _port(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise InvalidValue(
            "expected the path of a serial port",
            hint="prefer a stable name such as /dev/serial/by-id/usb-<vendor>_<product>_<serial>-if00",
        )
    if not value.startswith("/"):
        raise InvalidValue(f"{value!r} is not an absolute path", hint="e.g. /dev/serial/by-id/usb-...")
    return value


def _stopbits(value: Any) -> float:
    if isinstance(value, bool) or value not in (1, 1.5, 2):
        raise InvalidValue(f"expected 1, 1.5 or 2, got {value!r}")
    return float(value)


def _baudrate(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise InvalidValue(
            f"expected a positive number of bits per second, got {value!r}", hint="e.g. 115200"
        )
    return value


@attrs.frozen(kw_only=True)
class SerialOptions(ProtocolOptions):
    """The node's ``serial:`` section (plus the link settings of :class:`ProtocolOptions`)."""

    port: str = attrs.field(metadata=parse_with(_port))
    """The port's path. ``/dev/serial/by-id/...`` names stay the same across reboots and replugs;
    a glob pattern (``/dev/serial/by-id/usb-Espressif*``) must match exactly one port."""
    baudrate: int = attrs.field(default=115200, metadata=parse_with(_baudrate))
    bytesize: Literal[5, 6, 7, 8] = 8
    parity: Literal["none", "even", "odd", "mark", "space"] = "none"
    stopbits: float = attrs.field(default=1.0, metadata=parse_with(_stopbits))
    rtscts: bool = False
    """Hardware flow control (RTS/CTS)."""
    xonxoff: bool = False
    """Software flow control. Never with the vkpy protocol's binary frames unless the device
    escapes 0x11/0x13; kept for completeness."""
    dsrdtr: bool = False
    """Hardware flow control (DSR/DTR)."""
    exclusive: bool = True
    """Lock the port (``flock``) so that no other program vkpy-aware or not opens it meanwhile."""

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        if self.xonxoff:
            raise InvalidValue(
                "the vkpy protocol sends binary frames: XON/XOFF flow control would eat 0x11 and 0x13 bytes",
                hint="use rtscts: true for flow control",
                key="xonxoff",
            )


class SerialTransport(ProtocolTransport):
    """A node per serial port; see docs/transports/serial.md."""

    name = "serial"
    options_class = SerialOptions

    def __init__(self, node: NodeHandle, options: SerialOptions) -> None:
        super().__init__(node, options)
        self.options: SerialOptions
        self._resolved: str | None = None

    def describe(self) -> str:
        port = self.options.port
        if self._resolved is not None and self._resolved != port:
            return f"{port} ({self._resolved})"
        return port

    def default_request_timeout(self) -> float:
        # docs/protocol.md section 12: at least 0.5 s + two transmission times of a large exchange.
        floor = 0.5 + _BITS_PER_BYTE_TWICE * _LARGE_EXCHANGE_BYTES / self.options.baudrate
        return max(super().default_request_timeout(), floor)

    async def open_stream(self) -> ByteStream:
        path = await asyncio.to_thread(resolve_port, self.options.port)
        self._resolved = path
        o = self.options
        try:
            reader, writer = await serial_asyncio_fast.open_serial_connection(
                url=path,
                baudrate=o.baudrate,
                bytesize=o.bytesize,
                parity=PARITIES[o.parity],
                stopbits=o.stopbits if o.stopbits == 1.5 else int(o.stopbits),
                rtscts=o.rtscts,
                xonxoff=o.xonxoff,
                dsrdtr=o.dsrdtr,
                exclusive=o.exclusive,
            )
        except serial.SerialException as exc:
            raise PortError(_explain(path, exc)) from exc
        return SerialStream(reader, writer, path)


class SerialStream(AsyncioStreams):
    """The port as a byte stream; a hang-up is reported as what it is."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, path: str) -> None:
        super().__init__(reader, writer)
        self.path = path

    async def read(self) -> bytes:
        try:
            return await super().read()
        except serial.SerialException as exc:
            # pyserial's "readiness to read but returned no data" is a hang-up: the device or its
            # adapter went away (or reset its USB side).
            raise PortError("the port hung up (device unplugged or reset?)") from exc


class PortError(OSError):
    """The port could not be opened; the message says why and what to do."""


def resolve_port(port: str) -> str:
    """The path to open: ``port`` itself, or the one path a glob pattern matches."""
    if not _GLOB_CHARS & set(port):
        return port
    matches = sorted(glob.glob(port))
    if not matches:
        raise PortError(f"no serial port matches {port} (device unplugged?)")
    if len(matches) > 1:
        raise PortError(
            f"{len(matches)} serial ports match {port}: {', '.join(matches)}; make the pattern specific"
        )
    return matches[0]


def _explain(path: str, exc: serial.SerialException) -> str:
    code = exc.errno if isinstance(exc.errno, int) else None
    if code == errno.ENOENT:
        return f"{path} does not exist (device unplugged?)"
    if code == errno.EACCES:
        return (
            f"permission denied opening {path}: add the user running vkpy to the group that owns it "
            "(usually dialout: sudo usermod -aG dialout $USER, then log in again)"
        )
    if code in (errno.EAGAIN, errno.EWOULDBLOCK) and "lock" in str(exc).lower():
        return f"{path} is in use by another program (vkpy opens ports exclusively)"
    if code == errno.EBUSY:
        return f"{path} is busy (in use by another program)"
    return str(exc)
