"""vkpy-usb: the ``usb`` transport, a Kubernetes node per USB device whose vendor interface speaks
the vkpy device protocol on a bulk IN/OUT endpoint pair (pyusb over libusb-1.0). Registered
through the ``vkpy`` entry point group as ``usb``; ``vkpy usb list`` comes through
``vkpy.commands``.

Configuration and behaviour: docs/transports/usb.md. Testing without hardware:
:mod:`vkpy_usb.testing`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from vkpy import hookimpl
from vkpy_usb.backend import BACKEND_ENV, resolve_backend, system_backend
from vkpy_usb.discovery import Endpoints, UsbDeviceInfo, find_endpoints, list_devices, select_device
from vkpy_usb.errors import (
    NoUsbBackend,
    UsbBusy,
    UsbDescriptorError,
    UsbDeviceAmbiguous,
    UsbDeviceNotFound,
    UsbPermissionDenied,
    UsbTransportError,
    udev_rule,
)
from vkpy_usb.options import UsbOptions
from vkpy_usb.pipe import PipeSettings, UsbPipe
from vkpy_usb.stream import DeviceTarget, UsbStream, open_usb_stream
from vkpy_usb.transport import UsbTransport

__all__ = [
    "BACKEND_ENV",
    "DeviceTarget",
    "Endpoints",
    "NoUsbBackend",
    "PipeSettings",
    "UsbBusy",
    "UsbDescriptorError",
    "UsbDeviceAmbiguous",
    "UsbDeviceInfo",
    "UsbDeviceNotFound",
    "UsbOptions",
    "UsbPermissionDenied",
    "UsbPipe",
    "UsbStream",
    "UsbTransport",
    "UsbTransportError",
    "find_endpoints",
    "list_devices",
    "open_usb_stream",
    "register_transports",
    "resolve_backend",
    "select_device",
    "system_backend",
    "udev_rule",
]


@hookimpl
def register_transports(register: Callable[[str, type[Any]], None]) -> None:
    register("usb", UsbTransport)
