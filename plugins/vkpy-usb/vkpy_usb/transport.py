"""The ``usb`` transport: a :class:`~vkpy.protocol.ProtocolTransport` whose byte stream is the bulk
OUT/IN pair of a device's vendor interface.

Pods, reconnects, reconciliation with ``list`` and logs are the base class's, exactly as for the
serial transport; this module only finds and opens the device. An unplugged device ends the
stream, the node turns NotReady, and the base class reopens the device (by the same serial number
or port path) when it is plugged in again.
"""

from __future__ import annotations

import asyncio
from typing import Any

import structlog

from vkpy.protocol import ByteStream, ProtocolTransport
from vkpy.types import NodeHandle
from vkpy_usb.backend import resolve_backend
from vkpy_usb.errors import ids
from vkpy_usb.options import UsbOptions
from vkpy_usb.stream import UsbStream, open_usb_stream

log = structlog.get_logger("vkpy.usb")


class UsbTransport(ProtocolTransport):
    """A node per USB device; see docs/transports/usb.md.

    ``backend`` (a pyusb backend object) replaces libusb, for tests run in-process; a ``vkpy run``
    process gets one from the ``backend`` option instead.
    """

    name = "usb"
    options_class = UsbOptions

    def __init__(self, node: NodeHandle, options: UsbOptions, *, backend: Any = None) -> None:
        super().__init__(node, options)
        self.options: UsbOptions
        self._backend = backend
        self.stream: UsbStream | None = None
        """The stream of the current (or last) connection."""

    def describe(self) -> str:
        o = self.options
        text = f"usb {ids(o.vendor_id, o.product_id)}"
        if o.serial_number is not None:
            text += f" serial {o.serial_number}"
        if o.port_path is not None:
            text += f" at {o.port_path}"
        return text

    async def backend(self) -> Any:
        """The pyusb backend (loading libusb once, off the event loop)."""
        if self._backend is None:
            self._backend = await asyncio.to_thread(resolve_backend, self.options.backend)
        return self._backend

    async def open_stream(self) -> ByteStream:
        backend = await self.backend()
        stream = await open_usb_stream(backend, self.options.target, self.options.pipe_settings)
        self.stream = stream
        pipe = stream.pipe
        log.info(
            "usb.device_opened",
            node=self.node.name,
            device=pipe.description,
            interface=pipe.endpoints.interface,
            max_packet=pipe.endpoints.max_packet_in,
        )
        return stream
