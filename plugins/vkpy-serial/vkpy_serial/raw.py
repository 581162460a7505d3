"""The serial port as a raw byte channel (``mode: raw``), for device plugins that speak the device's
own protocol over it (the ``micropython`` plugin speaks MicroPython's raw REPL).

:class:`RawPort` keeps the port open exactly as the protocol mode keeps its link: it opens it in
the background, turns the node NotReady (``DeviceDisconnected``) when it cannot be opened or hangs
up, and opens it again with capped backoff. It never writes a byte by itself.

A device plugin uses it through ``node.transport``::

    async with node.transport.channel() as ch:   # one user at a time, first come first served
        await ch.write(b"\\x03")
        data = await ch.read()                    # raises LinkLost once the port hung up

Bytes that arrive while nobody holds a channel are dropped, as a UART drops what nobody reads: a
plugin starts every exchange from a state it sets itself (MicroPython: Ctrl-C, Ctrl-A).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

import structlog

from vkpy.errors import DeviceUnreachable
from vkpy.protocol import ByteStream
from vkpy.types import DeviceHealth

if TYPE_CHECKING:
    from .transport import SerialTransport

BUFFER_LIMIT = 1 << 20
"""Bytes kept for a channel holder that does not read: the port is not read further meanwhile."""

__all__ = ["LinkLost", "RawChannel", "RawPort"]


class LinkLost(ConnectionError):
    """The port hung up (or was closed) while a channel was open on it."""


class _Link:
    """One opening of the port: its stream, what arrived, and why it ended."""

    def __init__(self, stream: ByteStream, number: int) -> None:
        self.stream = stream
        self.number = number
        self.buffer = bytearray()
        self.arrived = asyncio.Event()
        self.room = asyncio.Event()
        self.room.set()
        self.ended: str | None = None
        self.held = False
        self.dropped = 0

    def end(self, reason: str) -> None:
        if self.ended is None:
            self.ended = reason
        self.arrived.set()
        self.room.set()


class RawChannel:
    """Exclusive use of the open port, from :meth:`RawPort.channel`."""

    def __init__(self, link: _Link, describe: str) -> None:
        self._link = link
        self._describe = describe

    @property
    def connection(self) -> int:
        """Which opening of the port this channel is on (1 for the first, then one more per reopen)."""
        return self._link.number

    @property
    def lost(self) -> bool:
        """True once the port hung up; what arrived before can still be read."""
        return self._link.ended is not None

    def pending(self) -> int:
        """Bytes that arrived and are not read yet."""
        return len(self._link.buffer)

    async def read(self, max_bytes: int = 4096) -> bytes:
        """At least one byte (at most ``max_bytes``), waiting for it; raises :class:`LinkLost` once the
        port hung up and everything that arrived before has been read."""
        link = self._link
        while not link.buffer:
            if link.ended is not None:
                raise LinkLost(f"{self._describe}: {link.ended}")
            link.arrived.clear()
            await link.arrived.wait()
        data = bytes(link.buffer[:max_bytes])
        del link.buffer[:max_bytes]
        if len(link.buffer) < BUFFER_LIMIT:
            link.room.set()
        return data

    def discard_input(self) -> int:
        """Drop what arrived and is not read yet; returns how many bytes."""
        count = len(self._link.buffer)
        self._link.buffer.clear()
        self._link.room.set()
        return count

    async def write(self, data: bytes) -> None:
        """Write all of ``data``; raises :class:`LinkLost` when the port is gone."""
        link = self._link
        if link.ended is not None:
            raise LinkLost(f"{self._describe}: {link.ended}")
        try:
            await link.stream.write(data)
        except (OSError, RuntimeError) as exc:
            # A closed asyncio transport raises RuntimeError; a vanished tty an OSError.
            link.end(f"writing failed: {exc}")
            raise LinkLost(f"{self._describe}: {link.ended}") from exc


class RawPort:
    """Keeps the port of a :class:`~vkpy_serial.SerialTransport` in ``mode: raw`` open; see the
    module docstring."""

    def __init__(self, transport: SerialTransport) -> None:
        self._transport = transport
        self._options = transport.options
        self._log = structlog.get_logger("vkpy.serial.raw").bind(node=transport.node.name)
        self._lock = asyncio.Lock()
        self._link: _Link | None = None
        self._connected = asyncio.Event()
        self._first_attempt = asyncio.Event()
        self._health = DeviceHealth(False, "DeviceConnecting", "connecting")
        self._task: asyncio.Task[None] | None = None
        self._openings = 0

    @property
    def health(self) -> DeviceHealth:
        return self._health

    @property
    def connection(self) -> int | None:
        """The number of the current opening of the port, None while it is closed."""
        link = self._link
        return link.number if link is not None and link.ended is None else None

    @property
    def busy(self) -> bool:
        """True while a channel is held."""
        return self._lock.locked()

    async def wait_connected(self, timeout: float | None = None) -> bool:
        """Wait until the port is open (True) or ``timeout`` passes (False)."""
        try:
            async with asyncio.timeout(timeout):
                await self._connected.wait()
        except TimeoutError:
            return False
        return True

    @contextlib.asynccontextmanager
    async def channel(self) -> AsyncIterator[RawChannel]:
        """Exclusive use of the open port: waits its turn (first come, first served), then raises
        :class:`vkpy.DeviceUnreachable` if the port is not open at that moment."""
        async with self._lock:
            link = self._link
            if link is None or link.ended is not None:
                raise DeviceUnreachable(self._health.message or f"{self._transport.describe()}: not open")
            link.buffer.clear()
            link.held = True
            try:
                yield RawChannel(link, self._transport.describe())
            finally:
                link.held = False
                link.buffer.clear()
                link.room.set()

    # -- life ----------------------------------------------------------------------------------------

    async def start(self) -> None:
        self._set_health(DeviceHealth(False, "DeviceConnecting", f"{self._transport.describe()}: connecting"))
        self._task = asyncio.get_running_loop().create_task(
            self._run(), name=f"serial-raw:{self._transport.node.name}"
        )
        wait = self._options.startup_wait
        if wait > 0:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    await self._first_attempt.wait()

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def _set_health(self, health: DeviceHealth) -> None:
        if health != self._health:
            self._health = health
            self._transport.node.set_health(health)

    async def _run(self) -> None:
        attempt = 0
        last_problem = ""
        while True:
            try:
                stream = await self._open()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                problem = _explain(exc)
                self._set_health(
                    DeviceHealth(False, "DeviceDisconnected", f"{self._transport.describe()}: {problem}")
                )
                o = self._options
                delay = min(o.reconnect_max, o.reconnect_initial * 2 ** min(attempt, 30))
                attempt += 1
                log = self._log.warning if problem != last_problem else self._log.debug
                log("serial.open_failed", port=self._transport.describe(), reason=problem, retry_in=delay)
                last_problem = problem
                self._first_attempt.set()
                await asyncio.sleep(delay)
                continue
            attempt, last_problem = 0, ""
            self._openings += 1
            link = _Link(stream, self._openings)
            self._link = link
            self._connected.set()
            self._set_health(DeviceHealth(True))
            self._first_attempt.set()
            self._log.info("serial.raw_open", port=self._transport.describe(), opening=link.number)
            try:
                reason = await self._pump(link)
            finally:
                self._connected.clear()
                link.end("the port was closed")
                with contextlib.suppress(Exception):
                    await stream.close()
            where = self._transport.describe()
            self._set_health(DeviceHealth(False, "DeviceDisconnected", f"{where}: {reason}"))
            self._log.warning(
                "serial.raw_closed", port=self._transport.describe(), reason=reason, dropped=link.dropped
            )
            await asyncio.sleep(self._options.reconnect_initial)

    async def _open(self) -> ByteStream:
        timeout = self._options.connect_timeout
        try:
            async with asyncio.timeout(timeout):
                return await self._transport.open_stream()
        except TimeoutError:
            raise OSError(f"opening the port took longer than {timeout:g}s") from None

    async def _pump(self, link: _Link) -> str:
        """Read the port until it ends (hang-up, EOF); returns why it ended."""
        while True:
            await link.room.wait()
            try:
                data = await link.stream.read()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                reason = _explain(exc)
                link.end(reason)
                return reason
            if not data:
                link.end("the port reached end of file")
                return "the port reached end of file"
            if not link.held:
                link.dropped += len(data)
                continue
            link.buffer += data
            link.arrived.set()
            if len(link.buffer) >= BUFFER_LIMIT:
                link.room.clear()


def _explain(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror + (f": {exc.filename}" if exc.filename else "")
    return str(exc) or type(exc).__name__
