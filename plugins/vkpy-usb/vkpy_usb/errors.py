"""What goes wrong between vkpy and a USB device, with messages that name the fix.

The transport's link task turns any of these into the node's NotReady message, so each message
stands on its own: which device, what failed, and what the user should do about it.
"""

from __future__ import annotations

import errno
from typing import Any

from vkpy.errors import VkpyError

DOCS = "docs/transports/usb.md"
UDEV_RULES_FILE = "/etc/udev/rules.d/70-vkpy-usb.rules"


class UsbTransportError(VkpyError):
    """Base of the USB transport's errors."""


class NoUsbBackend(UsbTransportError):
    """libusb-1.0 is not installed (pyusb's ``NoBackendError``)."""


class UsbDeviceNotFound(UsbTransportError):
    """No plugged device matches the node's vendor/product id, serial number or port path."""


class UsbDeviceAmbiguous(UsbTransportError):
    """Several devices match and nothing in the configuration says which one is meant."""


class UsbPermissionDenied(UsbTransportError):
    """The OS refused to open the device (EACCES): a udev rule is missing."""


class UsbBusy(UsbTransportError):
    """Another program or a kernel driver holds the interface (EBUSY)."""


class UsbDescriptorError(UsbTransportError):
    """The device has no usable interface or endpoints for the configuration given."""


def usb_errno(exc: BaseException) -> int | None:
    """The errno of a pyusb ``USBError`` (an ``OSError``), or None."""
    return exc.errno if isinstance(exc, OSError) else None


def is_gone(exc: BaseException) -> bool:
    """The device was unplugged (libusb ``NO_DEVICE``, and ``NOT_FOUND`` for a handle whose device
    vanished while the call was made)."""
    return usb_errno(exc) in (errno.ENODEV, errno.ENOENT, errno.ESHUTDOWN)


def ids(vendor_id: int, product_id: int) -> str:
    return f"{vendor_id:04x}:{product_id:04x}"


def udev_rule(vendor_id: int, product_id: int) -> str:
    """A rule giving the ``plugdev`` group (and the user at the seat) access to one device model."""
    return (
        f'SUBSYSTEM=="usb", ATTR{{idVendor}}=="{vendor_id:04x}", ATTR{{idProduct}}=="{product_id:04x}", '
        'MODE="0660", GROUP="plugdev", TAG+="uaccess"'
    )


def permission_fix(vendor_id: int, product_id: int) -> str:
    return (
        "give the user running vkpy access with a udev rule: put the line "
        f"'{udev_rule(vendor_id, product_id)}' in {UDEV_RULES_FILE}, add the user to the plugdev "
        "group (usermod -aG plugdev USER, then log in again), run 'udevadm control --reload-rules && "
        f"udevadm trigger' and replug the device (see {DOCS})"
    )


def device_node(bus: int | None, address: int | None) -> str | None:
    """The usbfs node libusb opens on Linux."""
    if bus is None or address is None:
        return None
    return f"/dev/bus/usb/{bus:03d}/{address:03d}"


def describe_device(device: Any) -> str:
    """``1209:0001 at 1-1.4 (/dev/bus/usb/001/005)`` for a pyusb device."""
    from vkpy_usb.discovery import port_path

    text = ids(int(device.idVendor), int(device.idProduct))
    path = port_path(device)
    if path is not None:
        text += f" at {path}"
    node = device_node(device.bus, device.address)
    if node is not None:
        text += f" ({node})"
    return text


def open_error(exc: OSError, device: Any, action: str, interface: int | None = None) -> Exception:
    """Turn a pyusb error met while opening a device into an error whose message names the fix;
    other errors are returned as they are."""
    code = usb_errno(exc)
    what = describe_device(device)
    if code == errno.EACCES:
        return UsbPermissionDenied(
            f"permission denied {action} USB device {what}: "
            f"{permission_fix(int(device.idVendor), int(device.idProduct))}"
        )
    if code == errno.EBUSY:
        holder = f"interface {interface} of " if interface is not None else ""
        return UsbBusy(
            f"{holder}USB device {what} is busy ({action}): another program holds it (another vkpy, "
            "a modem manager, a serial console) or a kernel driver was not detached. Stop the other "
            "program, or keep detach_kernel_driver: true so vkpy detaches the kernel driver "
            f"(see {DOCS})"
        )
    return exc
