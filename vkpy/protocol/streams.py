"""Byte streams a :class:`~vkpy.protocol.client.DeviceClient` can sit on.

(Not to be confused with vkpy's transport plugins, ``vkpy.Transport``: a serial or USB transport
plugin opens its device and wraps the connection in one of these for the client.)

A byte stream is any object with ``async read() -> bytes`` (a chunk of whatever size is available,
``b""`` at end of stream), ``async write(data)`` and ``async close()``; see :class:`ByteStream`.

* :class:`AsyncioStreams` wraps an asyncio ``StreamReader``/``StreamWriter`` pair: pyserial-asyncio's
  ``open_serial_connection``, an asyncio subprocess's stdout/stdin, a TCP connection.
* :class:`FdStream` drives a non-blocking file descriptor on the event loop: a tty or pty
  (configure termios before handing it over), a pipe, a socket.

A USB worker-thread bridge implements the same three methods itself (e.g. with
``loop.call_soon_threadsafe`` into an ``asyncio.Queue``).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
from typing import Protocol, runtime_checkable


@runtime_checkable
class ByteStream(Protocol):
    """What DeviceClient needs from a byte stream."""

    async def read(self) -> bytes:
        """Return the next chunk of bytes (at least one), or ``b""`` when the stream has ended."""
        ...

    async def write(self, data: bytes) -> None:
        """Write all of ``data``."""
        ...

    async def close(self) -> None:
        """Release the stream. Called once by DeviceClient.close()."""
        ...


class AsyncioStreams:
    """A ByteStream over an asyncio StreamReader/StreamWriter pair."""

    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, chunk_size: int = 4096
    ) -> None:
        self._reader = reader
        self._writer = writer
        self._chunk_size = chunk_size

    async def read(self) -> bytes:
        return await self._reader.read(self._chunk_size)

    async def write(self, data: bytes) -> None:
        self._writer.write(data)
        await self._writer.drain()

    async def close(self) -> None:
        self._writer.close()
        with contextlib.suppress(ConnectionError, OSError):
            await self._writer.wait_closed()


class FdStream:
    """A ByteStream over a file descriptor, made non-blocking and watched by the event loop.

    Reading a pty master whose other side has been closed gives EIO on Linux; that is reported as
    end of stream, like ``b""``. The descriptor is closed by :meth:`close` when ``close_fd``.
    """

    def __init__(self, fd: int, *, close_fd: bool = True, chunk_size: int = 4096) -> None:
        os.set_blocking(fd, False)
        self._fd = fd
        self._close_fd = close_fd
        self._chunk_size = chunk_size
        self._closed = False

    @property
    def fd(self) -> int:
        return self._fd

    async def read(self) -> bytes:
        while True:
            if self._closed:
                return b""
            try:
                return os.read(self._fd, self._chunk_size)
            except BlockingIOError:
                pass
            except OSError as exc:
                if exc.errno == errno.EIO:
                    return b""
                raise
            await self._wait(readable=True)

    async def write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            if self._closed:
                raise BrokenPipeError(errno.EPIPE, "stream is closed")
            try:
                written = os.write(self._fd, view)
            except BlockingIOError:
                await self._wait(readable=False)
                continue
            view = view[written:]

    async def _wait(self, *, readable: bool) -> None:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()

        def ready() -> None:
            if not future.done():
                future.set_result(None)

        if readable:
            loop.add_reader(self._fd, ready)
        else:
            loop.add_writer(self._fd, ready)
        try:
            await future
        finally:
            if readable:
                loop.remove_reader(self._fd)
            else:
                loop.remove_writer(self._fd)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._close_fd:
            os.close(self._fd)
