"""Which pyusb backend talks to the USB devices.

vkpy uses the system's libusb-1.0 (Debian/Ubuntu package ``libusb-1.0-0``): it is what the
distribution updates, what udev rules are written for, and it is one small package. When it is
missing and the ``libusb-package`` wheel is installed (``pip install vkpy-usb[bundled-libusb]``),
that bundled copy is used instead. Neither found: :class:`NoUsbBackend` names what to install.

Tests (and plugin authors' tests) replace the backend: a node's ``backend:`` option, or
``$VKPY_USB_BACKEND``, names an importable ``module:attribute`` (``vkpy_usb.testing:EmulatedBackend``)
that is a backend object or a callable returning one. It is resolved once per process, so every
node of a process shares one backend (and one emulated bus).
"""

from __future__ import annotations

import importlib
import os
import threading
from typing import Any

from vkpy_usb.errors import NoUsbBackend

BACKEND_ENV = "VKPY_USB_BACKEND"
"""Environment variable naming a test backend (``module:attribute``), like the ``backend`` option."""

NO_BACKEND_MESSAGE = (
    "no libusb-1.0 library found, so pyusb cannot reach USB devices: install the system package "
    "(Debian/Ubuntu: 'apt-get install libusb-1.0-0'; Fedora: 'dnf install libusb1'; macOS: "
    "'brew install libusb'), or the bundled copy with 'pip install vkpy-usb[bundled-libusb]' "
    "(the libusb-package wheel)"
)

_lock = threading.Lock()
_resolved: dict[str | None, Any] = {}


def system_backend() -> Any:
    """pyusb's libusb-1.0 backend: the system library, else ``libusb-package``'s bundled one."""
    import usb.backend.libusb1

    backend = usb.backend.libusb1.get_backend()
    if backend is not None:
        return backend
    try:
        import libusb_package  # type: ignore[import-not-found,unused-ignore]
    except ImportError:
        raise NoUsbBackend(NO_BACKEND_MESSAGE) from None
    backend = libusb_package.get_libusb1_backend()
    if backend is None:
        raise NoUsbBackend(NO_BACKEND_MESSAGE)
    return backend


def load_backend_spec(spec: str) -> Any:
    """The backend named by ``module:attribute``: the attribute itself, or what calling it returns
    when it is a class or a function."""
    module_name, sep, attribute = spec.partition(":")
    if not sep or not module_name or not attribute:
        raise ValueError(f"a backend is named as 'module:attribute', got {spec!r}")
    module = importlib.import_module(module_name)
    target: Any = module
    for part in attribute.split("."):
        target = getattr(target, part)
    if callable(target) and not hasattr(target, "enumerate_devices"):
        return target()
    if isinstance(target, type):
        return target()
    return target


def resolve_backend(spec: str | None = None) -> Any:
    """The backend for ``spec`` (a node's ``backend`` option), else ``$VKPY_USB_BACKEND``, else
    the system's libusb-1.0. Resolved once per process and spec."""
    import usb.core

    key = spec or os.environ.get(BACKEND_ENV) or None
    with _lock:
        if key in _resolved:
            return _resolved[key]
        try:
            backend = load_backend_spec(key) if key is not None else system_backend()
        except usb.core.NoBackendError:
            raise NoUsbBackend(NO_BACKEND_MESSAGE) from None
        _resolved[key] = backend
        return backend


def is_libusb(backend: Any) -> bool:
    """True for pyusb's libusb-1.0 backend (where Linux sysfs describes the same devices)."""
    return type(backend).__module__ == "usb.backend.libusb1"
