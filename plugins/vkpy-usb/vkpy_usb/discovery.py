"""Finding USB devices: listing what is plugged (``vkpy usb list``) and picking the one device a
node is configured for, by vendor/product id and then serial number or port path.

Everything here blocks (pyusb does): the transport calls it from a worker thread.
"""

from __future__ import annotations

import errno
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import attrs
import usb.core
import usb.util

from vkpy_usb.backend import is_libusb
from vkpy_usb.errors import (
    UsbDeviceAmbiguous,
    UsbDeviceNotFound,
    UsbPermissionDenied,
    describe_device,
    ids,
    is_gone,
    permission_fix,
    usb_errno,
)

VENDOR_SPECIFIC = 0xFF
SYSFS_DEVICES = Path("/sys/bus/usb/devices")


@attrs.frozen
class Endpoints:
    """A vendor interface's bulk pair, as found in the descriptors."""

    interface: int
    endpoint_in: int
    endpoint_out: int
    max_packet_in: int
    max_packet_out: int
    interface_class: int = VENDOR_SPECIFIC


@attrs.frozen
class UsbDeviceInfo:
    """One plugged device, as ``vkpy usb list`` shows it."""

    vendor_id: int
    product_id: int
    bus: int | None
    address: int | None
    port_path: str | None
    manufacturer: str | None
    product: str | None
    serial_number: str | None
    accessible: bool
    problem: str | None
    endpoints: Endpoints | None
    """The first vendor-specific interface with a bulk IN/OUT pair: what the transport would use."""

    @property
    def ids(self) -> str:
        return ids(self.vendor_id, self.product_id)

    def as_json(self) -> dict[str, Any]:
        ep = self.endpoints
        return {
            "vendor_id": f"0x{self.vendor_id:04x}",
            "product_id": f"0x{self.product_id:04x}",
            "bus": self.bus,
            "address": self.address,
            "port_path": self.port_path,
            "manufacturer": self.manufacturer,
            "product": self.product,
            "serial_number": self.serial_number,
            "accessible": self.accessible,
            "problem": self.problem,
            "interface": None
            if ep is None
            else {
                "number": ep.interface,
                "endpoint_in": f"0x{ep.endpoint_in:02x}",
                "endpoint_out": f"0x{ep.endpoint_out:02x}",
                "max_packet_in": ep.max_packet_in,
                "max_packet_out": ep.max_packet_out,
            },
        }


def port_path(device: Any) -> str | None:
    """The Linux name of the device's place in the USB tree, ``<bus>-<port>[.<port>...]`` (as in
    ``/sys/bus/usb/devices/1-1.4``): stable as long as the device stays in the same socket."""
    ports: Sequence[int] | None = getattr(device, "port_numbers", None)
    if device.bus is None or not ports:
        return None
    return f"{int(device.bus)}-{'.'.join(str(int(p)) for p in ports)}"


def _sysfs_string(path: str | None, name: str, root: Path = SYSFS_DEVICES) -> str | None:
    """A string descriptor as Linux caches it in sysfs, readable without opening the device."""
    if path is None:
        return None
    try:
        return (root / path / name).read_text(encoding="utf-8", errors="replace").strip() or None
    except OSError:
        return None


def _bulk_pair(interface: Any) -> tuple[Any, Any] | None:
    bulk_in = bulk_out = None
    for ep in interface:
        if usb.util.endpoint_type(ep.bmAttributes) != usb.util.ENDPOINT_TYPE_BULK:
            continue
        if usb.util.endpoint_direction(ep.bEndpointAddress) == usb.util.ENDPOINT_IN:
            bulk_in = bulk_in or ep
        else:
            bulk_out = bulk_out or ep
    if bulk_in is None or bulk_out is None:
        return None
    return bulk_in, bulk_out


def _configuration(device: Any, value: int | None) -> Any:
    configurations = list(device)
    if value is None:
        return configurations[0] if configurations else None
    for configuration in configurations:
        if configuration.bConfigurationValue == value:
            return configuration
    return None


def find_endpoints(
    device: Any,
    *,
    configuration: int | None = None,
    interface: int | None = None,
    endpoint_in: int | None = None,
    endpoint_out: int | None = None,
) -> Endpoints:
    """The interface and bulk endpoints to use. Without ``interface``: the first vendor-specific
    interface (class 0xFF) with a bulk IN and a bulk OUT endpoint. Endpoint addresses not given
    are the interface's first bulk IN/OUT; given ones must be bulk endpoints of that interface."""
    from vkpy_usb.errors import UsbDescriptorError

    what = describe_device(device)
    cfg = _configuration(device, configuration)
    if cfg is None:
        raise UsbDescriptorError(f"USB device {what} has no configuration {configuration}")
    interfaces = [i for i in cfg if i.bAlternateSetting == 0]
    if interface is not None:
        chosen = [i for i in interfaces if i.bInterfaceNumber == interface]
        if not chosen:
            numbers = ", ".join(str(i.bInterfaceNumber) for i in interfaces) or "none"
            raise UsbDescriptorError(
                f"USB device {what} has no interface {interface} (its interfaces: {numbers})"
            )
        candidates = chosen
    else:
        candidates = [
            i for i in interfaces if i.bInterfaceClass == VENDOR_SPECIFIC and _bulk_pair(i) is not None
        ]
        if not candidates:
            summary = ", ".join(f"{i.bInterfaceNumber} (class 0x{i.bInterfaceClass:02x})" for i in interfaces)
            raise UsbDescriptorError(
                f"USB device {what} has no vendor-specific interface (class 0xff) with a bulk IN/OUT "
                f"endpoint pair (its interfaces: {summary or 'none'}); set 'interface' (and the "
                "endpoints) if the device uses another class"
            )
    intf = candidates[0]
    endpoints = {ep.bEndpointAddress: ep for ep in intf}

    def pick(address: int | None, direction: int, index: int) -> Any:
        if address is None:
            pair = _bulk_pair(intf)
            if pair is None:
                raise UsbDescriptorError(
                    f"interface {intf.bInterfaceNumber} of USB device {what} has no bulk IN/OUT endpoint pair"
                )
            return pair[index]
        ep = endpoints.get(address)
        name = "endpoint_in" if direction == usb.util.ENDPOINT_IN else "endpoint_out"
        if ep is None:
            known = ", ".join(f"0x{a:02x}" for a in endpoints) or "none"
            raise UsbDescriptorError(
                f"{name} 0x{address:02x} is not an endpoint of interface {intf.bInterfaceNumber} of "
                f"USB device {what} (its endpoints: {known})"
            )
        if usb.util.endpoint_type(ep.bmAttributes) != usb.util.ENDPOINT_TYPE_BULK:
            raise UsbDescriptorError(f"{name} 0x{address:02x} of USB device {what} is not a bulk endpoint")
        if usb.util.endpoint_direction(address) != direction:
            raise UsbDescriptorError(f"{name} 0x{address:02x} of USB device {what} points the wrong way")
        return ep

    ep_in = pick(endpoint_in, usb.util.ENDPOINT_IN, 0)
    ep_out = pick(endpoint_out, usb.util.ENDPOINT_OUT, 1)
    return Endpoints(
        interface=int(intf.bInterfaceNumber),
        endpoint_in=int(ep_in.bEndpointAddress),
        endpoint_out=int(ep_out.bEndpointAddress),
        max_packet_in=int(ep_in.wMaxPacketSize) & 0x7FF,
        max_packet_out=int(ep_out.wMaxPacketSize) & 0x7FF,
        interface_class=int(intf.bInterfaceClass),
    )


@attrs.frozen
class _Strings:
    manufacturer: str | None = None
    product: str | None = None
    serial_number: str | None = None
    accessible: bool = True
    problem: str | None = None


def _read_strings(device: Any, backend: Any) -> _Strings:
    """The device's manufacturer/product/serial strings. Reading them opens the device, which is
    also the test of whether vkpy may use it; on Linux, sysfs has them for devices we may not open."""
    try:
        langids = usb.util.get_langids(device)
        langid = langids[0] if langids else None

        def read(index: int) -> str | None:
            if not index or langid is None:
                return None
            text: str = usb.util.get_string(device, index, langid)
            return text

        return _Strings(
            manufacturer=read(device.iManufacturer),
            product=read(device.iProduct),
            serial_number=read(device.iSerialNumber),
        )
    except (usb.core.USBError, ValueError) as exc:
        code = usb_errno(exc)
        if code == errno.EACCES:
            problem = "permission denied"
        elif is_gone(exc):
            problem = "unplugged"
        else:
            problem = str(exc)
        path = port_path(device) if is_libusb(backend) else None
        return _Strings(
            manufacturer=_sysfs_string(path, "manufacturer"),
            product=_sysfs_string(path, "product"),
            serial_number=_sysfs_string(path, "serial"),
            accessible=False,
            problem=problem,
        )
    finally:
        usb.util.dispose_resources(device)


def describe(device: Any, backend: Any) -> UsbDeviceInfo:
    strings = _read_strings(device, backend)
    try:
        endpoints: Endpoints | None = find_endpoints(device)
    except Exception:  # any descriptor trouble means "not a device vkpy can use as is"
        endpoints = None
    return UsbDeviceInfo(
        vendor_id=int(device.idVendor),
        product_id=int(device.idProduct),
        bus=None if device.bus is None else int(device.bus),
        address=None if device.address is None else int(device.address),
        port_path=port_path(device),
        manufacturer=strings.manufacturer,
        product=strings.product,
        serial_number=strings.serial_number,
        accessible=strings.accessible,
        problem=strings.problem,
        endpoints=endpoints,
    )


def list_devices(
    backend: Any, *, vendor_id: int | None = None, product_id: int | None = None
) -> list[UsbDeviceInfo]:
    """Every plugged device (optionally of one vendor/product), in bus/path order."""
    match: dict[str, int] = {}
    if vendor_id is not None:
        match["idVendor"] = vendor_id
    if product_id is not None:
        match["idProduct"] = product_id
    infos = [describe(d, backend) for d in usb.core.find(find_all=True, backend=backend, **match)]
    return sorted(infos, key=lambda i: (i.bus or 0, i.port_path or "", i.address or 0))


def _serial(device: Any, backend: Any) -> tuple[str | None, OSError | None]:
    """The device's serial number, or the error that kept us from reading it."""
    try:
        langids = usb.util.get_langids(device)
        if not device.iSerialNumber or not langids:
            return None, None
        return usb.util.get_string(device, device.iSerialNumber, langids[0]), None
    except usb.core.USBError as exc:
        path = port_path(device) if is_libusb(backend) else None
        return _sysfs_string(path, "serial"), exc
    finally:
        usb.util.dispose_resources(device)


def _summary(devices: Iterable[tuple[Any, str | None]]) -> str:
    parts = []
    for device, serial in devices:
        where = port_path(device) or f"bus {device.bus} address {device.address}"
        parts.append(f"{where} (serial {serial!r})" if serial else where)
    return ", ".join(parts)


def select_device(
    backend: Any,
    vendor_id: int,
    product_id: int,
    *,
    serial_number: str | None = None,
    path: str | None = None,
) -> Any:
    """The one plugged device with these ids (and serial number and/or port path, when given).

    Raises :class:`UsbDeviceNotFound`, :class:`UsbDeviceAmbiguous` when several match and the
    configuration does not say which, or :class:`UsbPermissionDenied` when the serial numbers
    cannot be read for lack of permission.
    """
    wanted = ids(vendor_id, product_id)
    candidates = list(usb.core.find(find_all=True, backend=backend, idVendor=vendor_id, idProduct=product_id))
    if path is not None:
        elsewhere = [d for d in candidates if port_path(d) != path]
        candidates = [d for d in candidates if port_path(d) == path]
        if not candidates:
            there = f"; devices {wanted} are at {_summary((d, None) for d in elsewhere)}" if elsewhere else ""
            raise UsbDeviceNotFound(f"no USB device {wanted} at port path {path} (is it plugged in?){there}")
    if serial_number is not None:
        seen: list[tuple[Any, str | None]] = []
        denied: list[Any] = []
        for device in candidates:
            serial, error = _serial(device, backend)
            if serial == serial_number:
                if error is not None and usb_errno(error) == errno.EACCES:
                    raise UsbPermissionDenied(
                        f"permission denied opening USB device {describe_device(device)} "
                        f"(serial {serial_number!r}): {permission_fix(vendor_id, product_id)}"
                    )
                return device
            seen.append((device, serial))
            if error is not None and usb_errno(error) == errno.EACCES:
                denied.append(device)
        if denied:
            raise UsbPermissionDenied(
                f"cannot read the serial numbers of USB devices {wanted} at "
                f"{_summary((d, None) for d in denied)}: permission denied; "
                f"{permission_fix(vendor_id, product_id)}"
            )
        others = f"; plugged devices {wanted}: {_summary(seen)}" if seen else ""
        raise UsbDeviceNotFound(
            f"no USB device {wanted} with serial number {serial_number!r} (is it plugged in? "
            f"'vkpy usb list' shows what is){others}"
        )
    if not candidates:
        raise UsbDeviceNotFound(
            f"no USB device {wanted} is plugged in ('vkpy usb list' shows the devices present, "
            "'lsusb' their ids)"
        )
    if len(candidates) > 1:
        described = [(d, _serial(d, backend)[0]) for d in candidates]
        raise UsbDeviceAmbiguous(
            f"{len(candidates)} USB devices {wanted} are plugged in: {_summary(described)}; set "
            "serial_number (or port_path) in the node's usb: section to say which one this node is"
        )
    return candidates[0]
