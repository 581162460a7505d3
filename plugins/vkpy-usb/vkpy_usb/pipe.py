"""A claimed vendor interface and its bulk OUT/IN pair: the byte pipe the vkpy protocol runs on.

Blocking, like pyusb: :class:`UsbPipe` is used from the worker threads of
:class:`vkpy_usb.stream.UsbStream`, never on the event loop. What it takes care of:

* **Opening**: detach a kernel driver that holds the interface (reattached on close), set the
  configuration only when another one is active (setting it again would reset the device on some
  hosts), claim the interface. EACCES and EBUSY become errors that name the fix.
* **Packets**: a write is one or more bulk transfers, which the host controller cuts into packets
  of ``wMaxPacketSize``. A device completes a receive only on a short packet or a full buffer, so a
  write whose length is a multiple of the packet size is followed by a zero-length packet (ZLP).
  Reads ask for a multiple of the packet size (a smaller buffer could overflow mid-packet) and a
  ZLP from the device is just an empty transfer, not the end of the stream.
* **Stalls**: an endpoint that answers STALL (EPIPE) is cleared with CLEAR_FEATURE(HALT) and the
  transfer is tried again, a few times.
"""

from __future__ import annotations

import array
import errno
import threading
from typing import Any

import attrs
import structlog
import usb.core
import usb.util

from vkpy_usb.discovery import Endpoints, find_endpoints
from vkpy_usb.errors import describe_device, is_gone, open_error, usb_errno

log = structlog.get_logger("vkpy.usb")

STALL_RETRIES = 5
"""Consecutive stalls cleared on one endpoint before the pipe gives up (and the link reopens)."""


@attrs.frozen
class PipeSettings:
    """How to open and drive the pipe (from the node's ``usb:`` options)."""

    configuration: int | None = None
    interface: int | None = None
    endpoint_in: int | None = None
    endpoint_out: int | None = None
    detach_kernel_driver: bool = True
    read_timeout: float = 0.1
    """Seconds one bulk read waits; bounds how fast the reader notices close()."""
    write_timeout: float = 2.0
    """Seconds a write may wait for the device to take data before the rest is dropped."""
    read_size: int = 16384
    """Bytes asked per bulk read (rounded up to a multiple of the IN packet size)."""
    write_chunk: int = 16384
    """Bytes per bulk OUT transfer (rounded up to a multiple of the OUT packet size)."""


class PipeClosed(OSError):
    """The pipe was closed by vkpy."""


class WriteTimeout(OSError):
    """The device took no data for ``write_timeout``."""


def _round_up(value: int, unit: int) -> int:
    unit = max(1, unit)
    return max(unit, -(-value // unit) * unit)


class UsbPipe:
    """An opened device with its interface claimed. Build with :meth:`open`; thread-safe for one
    reader thread and one writer thread (libusb allows concurrent transfers on different endpoints)."""

    def __init__(self, device: Any, endpoints: Endpoints, settings: PipeSettings, *, detached: bool) -> None:
        self.device = device
        self.endpoints = endpoints
        self.settings = settings
        self.detached_kernel_driver = detached
        self.description = describe_device(device)
        self.read_size = _round_up(settings.read_size, endpoints.max_packet_in)
        self.write_chunk = _round_up(settings.write_chunk, endpoints.max_packet_out)
        self._buffer = usb.util.create_buffer(self.read_size)
        self._closed = threading.Event()
        self._close_lock = threading.Lock()
        self._in_stalls = 0
        self.stalls_cleared = 0
        self.zlps_sent = 0
        self.zlps_received = 0

    # -- opening and closing --------------------------------------------------------------------------

    @classmethod
    def open(cls, device: Any, settings: PipeSettings) -> UsbPipe:
        """Claim the device's vendor interface. Raises UsbPermissionDenied, UsbBusy,
        UsbDescriptorError, or pyusb's USBError (ENODEV when it was unplugged meanwhile)."""
        endpoints = find_endpoints(
            device,
            configuration=settings.configuration,
            interface=settings.interface,
            endpoint_in=settings.endpoint_in,
            endpoint_out=settings.endpoint_out,
        )
        number = endpoints.interface
        detached = False
        try:
            detached = cls._detach(device, number, settings.detach_kernel_driver)
            cls._configure(device, settings.configuration)
            usb.util.claim_interface(device, number)
        except usb.core.USBError as exc:
            if detached:
                cls._reattach(device, number)
            usb.util.dispose_resources(device)
            raise open_error(exc, device, "opening", number) from exc
        except BaseException:
            if detached:
                cls._reattach(device, number)
            usb.util.dispose_resources(device)
            raise
        pipe = cls(device, endpoints, settings, detached=detached)
        log.debug(
            "usb.opened",
            device=pipe.description,
            interface=number,
            endpoint_in=f"0x{endpoints.endpoint_in:02x}",
            endpoint_out=f"0x{endpoints.endpoint_out:02x}",
            max_packet=endpoints.max_packet_in,
            detached_kernel_driver=detached,
        )
        return pipe

    @staticmethod
    def _detach(device: Any, interface: int, allowed: bool) -> bool:
        try:
            active = bool(device.is_kernel_driver_active(interface))
        except NotImplementedError:  # not on this OS (macOS, Windows): nothing to detach
            return False
        if not active:
            return False
        if not allowed:
            raise usb.core.USBError("Resource busy (a kernel driver holds the interface)", None, errno.EBUSY)
        device.detach_kernel_driver(interface)
        return True

    @staticmethod
    def _reattach(device: Any, interface: int) -> None:
        try:
            device.attach_kernel_driver(interface)
        except (usb.core.USBError, NotImplementedError) as exc:
            log.debug("usb.reattach_failed", interface=interface, error=str(exc))

    @staticmethod
    def _configure(device: Any, value: int | None) -> None:
        try:
            active = device.get_active_configuration()
        except usb.core.USBError as exc:
            if is_gone(exc) or usb_errno(exc) == errno.EACCES:
                raise
            active = None  # unconfigured
        configurations = list(device)
        wanted = (
            value if value is not None else (configurations[0].bConfigurationValue if configurations else 1)
        )
        if active is None or active.bConfigurationValue != wanted:
            device.set_configuration(wanted)

    def close(self) -> None:
        """Release the interface, give it back to its kernel driver, free pyusb's resources.
        Idempotent; errors of an unplugged device are ignored."""
        with self._close_lock:
            if self._closed.is_set():
                return
            self._closed.set()
            number = self.endpoints.interface
            try:
                usb.util.release_interface(self.device, number)
            except usb.core.USBError as exc:
                log.debug("usb.release_failed", device=self.description, error=str(exc))
            if self.detached_kernel_driver:
                self._reattach(self.device, number)
            usb.util.dispose_resources(self.device)
            log.debug("usb.closed", device=self.description)

    @property
    def closed(self) -> bool:
        return self._closed.is_set()

    # -- transfers ----------------------------------------------------------------------------------

    def _timeout_ms(self, seconds: float) -> int:
        return max(1, int(seconds * 1000))  # 0 would mean "wait forever" to libusb

    def _clear_stall(self, endpoint: int, stalls: int) -> None:
        if stalls > STALL_RETRIES:
            raise usb.core.USBError(
                f"endpoint 0x{endpoint:02x} keeps stalling ({stalls} times in a row)", None, errno.EPIPE
            )
        log.info("usb.stall_cleared", device=self.description, endpoint=f"0x{endpoint:02x}", stalls=stalls)
        self.device.clear_halt(endpoint)
        self.stalls_cleared += 1

    def read(self) -> bytes | None:
        """One bulk IN transfer: the bytes received, ``b""`` for a zero-length packet, or None when
        nothing came within ``read_timeout``. A stall is cleared and the read tried again. Raises
        pyusb's USBError otherwise (ENODEV: unplugged)."""
        if self._closed.is_set():
            raise PipeClosed(errno.EBADF, "the USB pipe is closed")
        endpoint = self.endpoints.endpoint_in
        timeout = self._timeout_ms(self.settings.read_timeout)
        while True:
            try:
                count = self.device.read(endpoint, self._buffer, timeout)
            except usb.core.USBTimeoutError:
                return None
            except usb.core.USBError as exc:
                if usb_errno(exc) != errno.EPIPE or self._closed.is_set():
                    raise
                # Counted across reads until data flows again: an endpoint that stalls at every
                # read is broken, and reopening the device is the better cure.
                self._in_stalls += 1
                self._clear_stall(endpoint, self._in_stalls)
                continue
            if count == 0:
                self.zlps_received += 1
                return b""
            self._in_stalls = 0
            data: bytes = self._buffer[:count].tobytes()
            return data

    def write(self, data: bytes) -> int:
        """Send ``data`` as bulk OUT transfers of at most ``write_chunk`` bytes, then a ZLP when the
        last one ended on a packet boundary. Returns the bytes sent; raises WriteTimeout when the
        device took nothing for ``write_timeout`` (the rest is not sent), pyusb's USBError
        otherwise (ENODEV: unplugged)."""
        if self._closed.is_set():
            raise PipeClosed(errno.EBADF, "the USB pipe is closed")
        endpoint = self.endpoints.endpoint_out
        packet = self.endpoints.max_packet_out
        timeout = self._timeout_ms(self.settings.write_timeout)
        view = memoryview(data)
        sent = 0
        stalls = 0
        while sent < len(view):
            chunk = view[sent : sent + self.write_chunk]
            try:
                count = int(self.device.write(endpoint, array.array("B", chunk.tobytes()), timeout))
            except usb.core.USBTimeoutError as exc:
                raise WriteTimeout(
                    errno.ETIMEDOUT,
                    f"the device took no data for {self.settings.write_timeout:g} s "
                    f"({len(view) - sent} of {len(view)} bytes not sent)",
                ) from exc
            except usb.core.USBError as exc:
                if usb_errno(exc) != errno.EPIPE or self._closed.is_set():
                    raise
                stalls += 1
                self._clear_stall(endpoint, stalls)
                continue
            # libusb reports a transfer cut short by the timeout with its count: send the rest.
            sent += count
            stalls = 0
        if data and len(data) % packet == 0:
            self._zlp(endpoint, timeout)
        return sent

    def _zlp(self, endpoint: int, timeout: int) -> None:
        stalls = 0
        while True:
            try:
                self.device.write(endpoint, array.array("B"), timeout)
            except usb.core.USBTimeoutError:
                log.debug("usb.zlp_timeout", device=self.description)
                return
            except usb.core.USBError as exc:
                if usb_errno(exc) != errno.EPIPE:
                    raise
                stalls += 1
                self._clear_stall(endpoint, stalls)
                continue
            self.zlps_sent += 1
            return
