"""Test USB devices without hardware: an emulated bus below pyusb.

``EmulatedBackend`` is a pyusb backend (``usb.backend.IBackend``); pass it as ``backend=`` to
``usb.core.find``, to :class:`vkpy_usb.UsbTransport`, or name it in a node's test-only option
``backend: "vkpy_usb.testing:EmulatedBackend"``. Its devices have real descriptors and strings,
and their bulk endpoints lead to a device function: :class:`ReferenceDevice` runs the vkpy
reference device program behind them; write your own (``start(gadget)``/``stop()``) to emulate
your firmware. Everything above the backend, pyusb included, is the real code. See
docs/transports/usb.md, "Testing your own USB device plugin".

In-process::

    bus = EmulatedBus()
    board = bus.add(EmulatedDevice(serial_number="A1", function=ReferenceDevice(device_id="A1")))
    backend = EmulatedBackend(bus)
    board.stall(0x81); board.unplug(); board.plug(); board.power_cycle()

Across processes (``vkpy run`` in a subprocess): :class:`BusFile` writes the bus as a JSON file
that the subprocess's ``EmulatedBackend()`` follows (``$VKPY_USB_EMULATION``).
"""

from vkpy_usb.testing.busfile import BUS_ENV, BusFile, FollowedBus, bus_from_environment
from vkpy_usb.testing.emulated import (
    BULK,
    INTERRUPT,
    VENDOR_SPECIFIC,
    DeviceFunction,
    DeviceStats,
    EchoFunction,
    EmulatedBackend,
    EmulatedBus,
    EmulatedDevice,
    EndpointSpec,
    Gadget,
    InterfaceSpec,
    missing_libusb,
    usb_error,
    vendor_interface,
)
from vkpy_usb.testing.reference import PROGRAM_ENV, ReferenceDevice, default_program, load_program

__all__ = [
    "BULK",
    "BUS_ENV",
    "INTERRUPT",
    "PROGRAM_ENV",
    "VENDOR_SPECIFIC",
    "BusFile",
    "DeviceFunction",
    "DeviceStats",
    "EchoFunction",
    "EmulatedBackend",
    "EmulatedBus",
    "EmulatedDevice",
    "EndpointSpec",
    "FollowedBus",
    "Gadget",
    "InterfaceSpec",
    "ReferenceDevice",
    "bus_from_environment",
    "default_program",
    "load_program",
    "missing_libusb",
    "usb_error",
    "vendor_interface",
]
