"""The bridge between pyusb's blocking calls and asyncio: a :class:`~vkpy.protocol.ByteStream` on
a :class:`~vkpy_usb.pipe.UsbPipe`, driven by two worker threads of its own.

* The **reader thread** loops on bulk IN reads with a short timeout (so it notices ``close()``)
  and hands each chunk to the event loop with ``loop.call_soon_threadsafe``.
* The **writer thread** takes the writes queued by :meth:`UsbStream.write` one by one; the
  coroutine waits for its write to be done. libusb allows transfers on different endpoints from
  different threads at once, so a pending read never delays a request (one thread alternating
  between the two would add up to a read timeout of latency to every request).

An unplugged device (ENODEV) ends the stream: ``read()`` returns ``b""``, as the ByteStream contract
says, and the protocol transport marks the node NotReady and reopens the device when it returns.
A write the device does not take within ``write_timeout`` is dropped with a warning instead of
closing the link: the protocol sends a request again when its reply does not come, and a device
that stays silent is caught by the keep-alive ping.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import queue
import threading
from typing import Any

import attrs
import structlog
import usb.core

from vkpy_usb.discovery import select_device
from vkpy_usb.errors import is_gone, usb_errno
from vkpy_usb.pipe import PipeClosed, PipeSettings, UsbPipe, WriteTimeout

log = structlog.get_logger("vkpy.usb")

READ_ERROR_RETRIES = 5
"""Consecutive unexpected read errors (EIO, EOVERFLOW...) before the stream gives up."""


@attrs.frozen
class DeviceTarget:
    """Which device a node means."""

    vendor_id: int
    product_id: int
    serial_number: str | None = None
    port_path: str | None = None


_Write = tuple[bytes, "asyncio.Future[None]"]


class UsbStream:
    """A ByteStream over a claimed USB interface. Made by :func:`open_usb_stream`."""

    def __init__(self, pipe: UsbPipe, loop: asyncio.AbstractEventLoop) -> None:
        self.pipe = pipe
        self._loop = loop
        self._incoming: asyncio.Queue[bytes | BaseException] = asyncio.Queue()
        self._outgoing: queue.SimpleQueue[_Write | None] = queue.SimpleQueue()
        self._stop = threading.Event()
        self._ended = False
        self._closed = False
        self.end_reason = ""
        name = pipe.description
        self._reader = threading.Thread(target=self._read_loop, name=f"vkpy-usb-read {name}", daemon=True)
        self._writer = threading.Thread(target=self._write_loop, name=f"vkpy-usb-write {name}", daemon=True)

    def start(self) -> None:
        self._reader.start()
        self._writer.start()

    # -- the ByteStream API ---------------------------------------------------------------------------

    async def read(self) -> bytes:
        if self._ended:
            return b""
        item = await self._incoming.get()
        if isinstance(item, BaseException):
            self._ended = True
            raise item
        if not item:
            self._ended = True
        return item

    async def write(self, data: bytes) -> None:
        if self._closed or self._stop.is_set():
            raise BrokenPipeError(errno.EPIPE, f"the USB stream is closed: {self.end_reason or 'closed'}")
        future: asyncio.Future[None] = self._loop.create_future()
        self._outgoing.put((bytes(data), future))
        await future

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._stop.set()
        self._outgoing.put(None)
        await asyncio.to_thread(self._shutdown)

    # -- the worker threads ---------------------------------------------------------------------------

    def _shutdown(self) -> None:
        settings = self.pipe.settings
        self._reader.join(settings.read_timeout + 5.0)
        self._writer.join(settings.write_timeout + 5.0)
        self.pipe.close()

    def _post(self, item: bytes | BaseException) -> bool:
        try:
            self._loop.call_soon_threadsafe(self._incoming.put_nowait, item)
        except RuntimeError:  # the event loop is closed: nobody is reading any more
            self._stop.set()
            return False
        return True

    def _read_loop(self) -> None:
        errors = 0
        end: bytes | BaseException = b""
        try:
            while not self._stop.is_set():
                try:
                    data = self.pipe.read()
                except PipeClosed:
                    self.end_reason = "closed"
                    break
                except usb.core.USBError as exc:
                    if self._stop.is_set():
                        break
                    if is_gone(exc):
                        self.end_reason = f"the device was unplugged ({exc.strerror or exc})"
                        log.warning("usb.unplugged", device=self.pipe.description, error=str(exc))
                        break
                    errors += 1
                    log.warning("usb.read_error", device=self.pipe.description, error=str(exc), count=errors)
                    if errors >= READ_ERROR_RETRIES:
                        self.end_reason = f"reading failed {errors} times in a row: {exc}"
                        end = exc
                        break
                    continue
                errors = 0
                if data and not self._post(data):
                    return
        except Exception as exc:  # a bug must end the stream visibly, not hang the client
            self.end_reason = f"the reader failed: {exc!r}"
            log.exception("usb.reader_failed", device=self.pipe.description)
            end = exc
        self._stop.set()
        self._post(end)

    def _write_loop(self) -> None:
        while True:
            item = self._outgoing.get()
            if item is None:
                break
            data, future = item
            error: BaseException | None = None
            if self._stop.is_set():
                error = BrokenPipeError(
                    errno.EPIPE, f"the USB stream is closed: {self.end_reason or 'closed'}"
                )
            else:
                try:
                    self.pipe.write(data)
                except WriteTimeout as exc:
                    log.warning("usb.write_dropped", device=self.pipe.description, error=exc.strerror)
                except PipeClosed as exc:
                    error = exc
                except usb.core.USBError as exc:
                    if is_gone(exc):
                        error = ConnectionResetError(
                            errno.ENODEV, f"the device was unplugged ({exc.strerror})"
                        )
                    else:
                        error = OSError(usb_errno(exc) or errno.EIO, f"USB write failed: {exc}")
                except Exception as exc:
                    error = exc
            self._settle(future, error)
        while True:  # writes queued behind the stop: fail them, nobody will send them
            try:
                item = self._outgoing.get_nowait()
            except queue.Empty:
                return
            if item is not None:
                self._settle(item[1], BrokenPipeError(errno.EPIPE, "the USB stream is closed"))

    def _settle(self, future: asyncio.Future[None], error: BaseException | None) -> None:
        def settle() -> None:
            if future.done():
                return
            if error is None:
                future.set_result(None)
            else:
                future.set_exception(error)

        with contextlib.suppress(RuntimeError):  # the loop is gone, and the waiter with it
            self._loop.call_soon_threadsafe(settle)


def _close_late(future: asyncio.Future[UsbPipe]) -> None:
    """An open that finished after its caller gave up: release the device in the background."""
    if future.cancelled() or future.exception() is not None:
        return
    threading.Thread(target=future.result().close, name="vkpy-usb-close", daemon=True).start()


async def open_usb_stream(backend: Any, target: DeviceTarget, settings: PipeSettings) -> UsbStream:
    """Find the target device, claim its interface (in a worker thread) and start the stream."""
    loop = asyncio.get_running_loop()

    def blocking_open() -> UsbPipe:
        device = select_device(
            backend,
            target.vendor_id,
            target.product_id,
            serial_number=target.serial_number,
            path=target.port_path,
        )
        return UsbPipe.open(device, settings)

    future = loop.run_in_executor(None, blocking_open)
    try:
        pipe = await asyncio.shield(future)
    except asyncio.CancelledError:
        future.add_done_callback(_close_late)
        raise
    stream = UsbStream(pipe, loop)
    stream.start()
    return stream
