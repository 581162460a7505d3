"""The node's ``usb:`` section."""

from __future__ import annotations

import re
from typing import Any

import attrs

from vkpy.config import InvalidValue, PositiveDuration, describe, parse_with
from vkpy.protocol import ProtocolOptions
from vkpy_usb.pipe import PipeSettings
from vkpy_usb.stream import DeviceTarget

_PORT_PATH = re.compile(r"[0-9]+-[0-9]+(\.[0-9]+)*")
_BACKEND_SPEC = re.compile(r"[A-Za-z_][\w.]*:[A-Za-z_][\w.]*")
ID_HINT = 'USB ids are hexadecimal, as lsusb shows them: write 0x1209, or quote it: "1209"'


def _number(value: Any, what: str, maximum: int, hint: str) -> int:
    if isinstance(value, bool):
        raise InvalidValue(f"expected {what}, got {describe(value)}", hint=hint)
    if isinstance(value, int):
        number = value
    elif isinstance(value, str):
        text = value.strip().lower()
        text = text[2:] if text.startswith("0x") else text
        try:
            number = int(text, 16)
        except ValueError:
            raise InvalidValue(f"expected {what}, got {describe(value)}", hint=hint) from None
    else:
        raise InvalidValue(f"expected {what}, got {describe(value)}", hint=hint)
    if not 0 <= number <= maximum:
        raise InvalidValue(f"{what} must be between 0x0 and 0x{maximum:x}, got 0x{number:x}", hint=hint)
    return number


def usb_id(value: Any) -> int:
    """A 16-bit vendor or product id: an integer (YAML reads ``0x1209`` as one) or a hex string
    (``"1209"`` and ``"0x1209"`` both mean 0x1209, as lsusb prints it)."""
    return _number(value, "a 16-bit USB id", 0xFFFF, ID_HINT)


def endpoint_address(value: Any) -> int | None:
    """An endpoint address such as ``0x81`` (IN endpoints have bit 7 set)."""
    if value is None:
        return None
    return _number(value, "an endpoint address", 0xFF, "e.g. 0x81 for IN endpoint 1, 0x01 for OUT endpoint 1")


def port_path(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not _PORT_PATH.fullmatch(value.strip()):
        raise InvalidValue(
            f'expected a USB port path such as "1-1.4" (bus-port.port...), got {describe(value)}',
            hint="'vkpy usb list' shows each device's port path",
        )
    return value.strip()


def backend_spec(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not _BACKEND_SPEC.fullmatch(value):
        raise InvalidValue(
            f"expected an importable 'module:attribute', got {describe(value)}",
            hint="for tests only, e.g. vkpy_usb.testing:EmulatedBackend; leave unset for libusb",
        )
    return value


def _size(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 64 <= value <= 1048576:
        raise InvalidValue(f"expected a number of bytes between 64 and 1048576, got {describe(value)}")
    return value


def _small(value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 255:
        raise InvalidValue(f"expected a number between 0 and 255, got {describe(value)}")
    return value


@attrs.frozen(kw_only=True)
class UsbOptions(ProtocolOptions):
    """The node's ``usb:`` section (plus the link settings of :class:`vkpy.protocol.ProtocolOptions`)."""

    vendor_id: int = attrs.field(metadata=parse_with(usb_id))
    product_id: int = attrs.field(metadata=parse_with(usb_id))
    serial_number: str | None = None
    """Picks one device among identical ones by its serial number string."""
    port_path: str | None = attrs.field(default=None, metadata=parse_with(port_path))
    """Picks one device by where it is plugged in (``"1-1.4"``), for devices without serial numbers."""
    configuration: int | None = attrs.field(default=None, metadata=parse_with(_small))
    """bConfigurationValue to use; default: the device's first configuration."""
    interface: int | None = attrs.field(default=None, metadata=parse_with(_small))
    """bInterfaceNumber; default: the first vendor-specific interface with a bulk IN/OUT pair."""
    endpoint_in: int | None = attrs.field(default=None, metadata=parse_with(endpoint_address))
    endpoint_out: int | None = attrs.field(default=None, metadata=parse_with(endpoint_address))
    """Endpoint addresses; default: the interface's first bulk IN and bulk OUT endpoints."""
    detach_kernel_driver: bool = True
    """Detach a kernel driver bound to the interface (and reattach it when vkpy lets go)."""
    read_timeout: PositiveDuration = 0.1
    """How long each bulk read waits; bounds how fast a closed link notices."""
    write_timeout: PositiveDuration = 2.0
    """How long a write may wait for the device to take data before the rest is dropped."""
    read_size: int = attrs.field(default=16384, metadata=parse_with(_size))
    """Bytes asked per bulk read (rounded up to a multiple of the IN packet size)."""
    reconnect_max: PositiveDuration = 5.0
    """Reconnect delays double up to this: a replugged device is found within it."""
    backend: str | None = attrs.field(default=None, metadata=parse_with(backend_spec))
    """For tests only: an importable ``module:attribute`` naming a pyusb backend to use instead of
    libusb (``vkpy_usb.testing:EmulatedBackend``)."""

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        if self.endpoint_in is not None and not self.endpoint_in & 0x80:
            raise InvalidValue(
                f"0x{self.endpoint_in:02x} is an OUT endpoint address; IN addresses have bit 7 set (0x81)",
                key="endpoint_in",
            )
        if self.endpoint_out is not None and self.endpoint_out & 0x80:
            raise InvalidValue(
                f"0x{self.endpoint_out:02x} is an IN endpoint address; OUT addresses have bit 7 clear (0x01)",
                key="endpoint_out",
            )

    @property
    def target(self) -> DeviceTarget:
        return DeviceTarget(self.vendor_id, self.product_id, self.serial_number, self.port_path)

    @property
    def pipe_settings(self) -> PipeSettings:
        return PipeSettings(
            configuration=self.configuration,
            interface=self.interface,
            endpoint_in=self.endpoint_in,
            endpoint_out=self.endpoint_out,
            detach_kernel_driver=self.detach_kernel_driver,
            read_timeout=self.read_timeout,
            write_timeout=self.write_timeout,
            read_size=self.read_size,
        )
