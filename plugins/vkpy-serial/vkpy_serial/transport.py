"""The ``serial`` transport: a :class:`~vkpy.protocol.ProtocolTransport` whose byte stream is a
serial port opened with pyserial-asyncio-fast.

Everything about pods, reconnects and logs is the base class's; this module only knows how to
find and open the port, and how a slow line stretches the protocol's timeouts.

With ``mode: raw`` the port is a raw byte channel instead (:mod:`vkpy_serial.raw`): the transport
keeps it open and healthy but speaks no protocol, and leaves pods to a device plugin that uses
:meth:`SerialTransport.channel` (the ``micropython`` plugin).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import glob
from collections.abc import AsyncIterator, Collection, Mapping
from typing import Any, Literal

import attrs
import serial
import serial_asyncio_fast

from vkpy import hookimpl
from vkpy.config import InvalidValue, parse_with
from vkpy.errors import LogsNotAvailable, PodRejected
from vkpy.protocol import AsyncioStreams, ByteStream, ProtocolOptions, ProtocolTransport
from vkpy.types import DeviceHealth, LogLine, LogOptions, NodeHandle, Pod, PodStatusReport

from .raw import RawChannel, RawPort

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
    mode: Literal["protocol", "raw"] = "protocol"
    """``protocol``: the device speaks the vkpy device protocol. ``raw``: the port is a raw byte
    channel for a device plugin (``plugins: [micropython]``); the protocol settings do not apply."""

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        if self.xonxoff:
            what = "raw mode is binary" if self.mode == "raw" else "the vkpy protocol sends binary frames"
            raise InvalidValue(
                f"{what}: XON/XOFF flow control would eat 0x11 and 0x13 bytes",
                hint="use rtscts: true for flow control",
                key="xonxoff",
            )
        if self.mode == "raw" and self.device_id is not None:
            raise InvalidValue(
                "device_id is checked in the vkpy protocol's hello, which mode: raw does not speak",
                hint="remove device_id, or use mode: protocol",
                key="device_id",
            )


class SerialTransport(ProtocolTransport):
    """A node per serial port; see docs/transports/serial.md."""

    name = "serial"
    options_class = SerialOptions

    def __init__(self, node: NodeHandle, options: SerialOptions) -> None:
        super().__init__(node, options)
        self.options: SerialOptions
        self._resolved: str | None = None
        self._raw = RawPort(self) if options.mode == "raw" else None

    # -- raw mode: the API for device plugins --------------------------------------------------------

    @property
    def raw(self) -> bool:
        """True in ``mode: raw``: the port is a byte channel for a device plugin."""
        return self._raw is not None

    def channel(self) -> contextlib.AbstractAsyncContextManager[RawChannel]:
        """``async with transport.channel() as ch``: exclusive use of the open port (raw mode only).
        Waits for the previous user; raises :class:`vkpy.DeviceUnreachable` if the port is not open
        then. See :class:`vkpy_serial.raw.RawChannel`."""
        return self._raw_port().channel()

    @property
    def connection(self) -> int | None:
        """Raw mode: which opening of the port is current (it grows by one per reopen), None while
        the port is closed."""
        return self._raw_port().connection

    @property
    def channel_busy(self) -> bool:
        """Raw mode: True while some user holds the channel."""
        return self._raw_port().busy

    async def wait_connected(self, timeout: float | None = None) -> bool:
        if self._raw is not None:
            return await self._raw.wait_connected(timeout)
        return await super().wait_connected(timeout)

    def _raw_port(self) -> RawPort:
        if self._raw is None:
            raise RuntimeError(
                f"{self.describe()}: the raw channel needs mode: raw in the node's serial: section"
            )
        return self._raw

    def _no_device_plugin(self) -> PodRejected:
        return PodRejected(
            "transport serial in raw mode needs a device plugin such as micropython "
            f"(add plugins: [micropython] to node {self.node.name})",
            reason="NoDevicePlugin",
        )

    # -- hooks: the protocol's, or in raw mode the port alone -----------------------------------------

    @hookimpl
    async def node_start(self, node: NodeHandle) -> None:
        if self._raw is not None:
            await self._raw.start()
            return
        await super().node_start(node)

    @hookimpl
    async def node_stop(self, node: NodeHandle) -> None:
        if self._raw is not None:
            await self._raw.stop()
            return
        await super().node_stop(node)

    @hookimpl
    async def node_capacity(self, node: NodeHandle) -> Mapping[str, str] | None:
        if self._raw is not None:
            return None
        return await super().node_capacity(node)

    @hookimpl
    async def node_health(self, node: NodeHandle) -> DeviceHealth:
        if self._raw is not None:
            return self._raw.health
        return await super().node_health(node)

    @hookimpl
    async def list_pods(self, node: NodeHandle) -> Collection[str]:
        if self._raw is not None:
            return []  # the port alone holds no pods
        return await super().list_pods(node)

    @hookimpl
    async def create_pod(self, node: NodeHandle, pod: Pod) -> None:
        if self._raw is not None:
            raise self._no_device_plugin()
        await super().create_pod(node, pod)

    @hookimpl
    async def update_pod(self, node: NodeHandle, pod: Pod) -> None:
        if self._raw is None:
            await super().update_pod(node, pod)

    @hookimpl
    async def delete_pod(self, node: NodeHandle, pod: Pod, grace_period_seconds: int) -> None:
        if self._raw is None:
            await super().delete_pod(node, pod, grace_period_seconds)

    @hookimpl
    async def restart_container(self, node: NodeHandle, pod: Pod, container_name: str) -> None:
        if self._raw is not None:
            raise self._no_device_plugin()
        await super().restart_container(node, pod, container_name)

    @hookimpl
    async def get_pod_status(self, node: NodeHandle, pod: Pod) -> PodStatusReport | None:
        if self._raw is not None:
            return None  # never created: create_pod then says why
        return await super().get_pod_status(node, pod)

    @hookimpl
    def get_container_logs(
        self, node: NodeHandle, pod: Pod, container_name: str, options: LogOptions
    ) -> AsyncIterator[LogLine]:
        if self._raw is not None:
            raise LogsNotAvailable(str(self._no_device_plugin()))
        return super().get_container_logs(node, pod, container_name, options)

    # -- the port ---------------------------------------------------------------------------------------

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
