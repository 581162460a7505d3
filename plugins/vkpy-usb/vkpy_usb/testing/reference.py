"""The reference device (``examples/device/vkpy_device.py``) as the function behind an emulated
device's bulk endpoints: its own protocol loop (``serve``) runs in a thread, reading OUT transfers
and writing each frame as one IN transfer, exactly as firmware on a USB stack would."""

from __future__ import annotations

import importlib.util
import os
import sys
import threading
from pathlib import Path
from types import ModuleType
from typing import Any

from vkpy_usb.testing.emulated import Gadget

PROGRAM_ENV = "VKPY_REFERENCE_DEVICE"
"""Path of ``vkpy_device.py`` when it is not in the vkpy checkout next to the installed vkpy."""

_modules: dict[Path, ModuleType] = {}
_modules_lock = threading.Lock()


def default_program() -> Path:
    """Where the reference device program is: ``$VKPY_REFERENCE_DEVICE``, else ``examples/device``
    of the checkout vkpy (or this plugin) was installed from."""
    configured = os.environ.get(PROGRAM_ENV)
    if configured:
        return Path(configured)
    import vkpy

    candidates = [
        Path(vkpy.__file__).resolve().parents[1] / "examples" / "device" / "vkpy_device.py",
        Path(__file__).resolve().parents[4] / "examples" / "device" / "vkpy_device.py",
    ]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(
        "the reference device program vkpy_device.py was not found (looked at "
        f"{', '.join(map(str, candidates))}); set ${PROGRAM_ENV} to its path"
    )


def load_program(path: Path | None = None) -> ModuleType:
    """The reference device program imported as a module (its ``main()`` does not run); once per path."""
    program = (path or default_program()).resolve()
    with _modules_lock:
        module = _modules.get(program)
        if module is not None:
            return module
        name = f"vkpy_reference_device_{len(_modules)}"
        spec = importlib.util.spec_from_file_location(name, program)
        if spec is None or spec.loader is None:
            raise ImportError(f"cannot load {program}")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
        _modules[program] = module
        return module


class _Port:
    """The reference device's port interface (``read(timeout_ms)``, ``write(data)``) on a gadget."""

    def __init__(self, gadget: Gadget, rx_buffer: int) -> None:
        self._gadget = gadget
        self._rx_buffer = rx_buffer

    def read(self, timeout_ms: int) -> bytes | None:
        return self._gadget.read(self._rx_buffer, max(0, timeout_ms) / 1000)

    def write(self, data: bytes) -> None:
        self._gadget.write(bytes(data))


class ReferenceDevice:
    """A :class:`~vkpy_usb.testing.emulated.DeviceFunction` running the reference device.

    ``options`` go to the program's ``Device`` (``device_id``, ``pods``, ``log_buffer``,
    ``max_frame``, ``cpu``, ``memory``). ``rx_buffer`` is the size of the device's OUT transfers
    (its receive buffer; a multiple of the packet size). Each power-up is a new boot: a new
    ``Device`` (new ``boot_id``, no pods); :attr:`device` is the running one, for assertions.
    """

    def __init__(self, program: Path | None = None, *, rx_buffer: int = 512, **options: Any) -> None:
        self._program = program
        self._rx_buffer = rx_buffer
        self._options = options
        self._thread: threading.Thread | None = None
        self.device: Any = None
        self.boots = 0

    def start(self, gadget: Gadget) -> None:
        module = load_program(self._program)
        device = module.Device(**self._options)
        self.device = device
        self.boots += 1
        port = _Port(gadget, self._rx_buffer)
        name = f"vkpy-reference-device {self._options.get('device_id', '')}".strip()
        self._thread = threading.Thread(target=module.serve, args=(device, port), name=name, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join(5)

    @property
    def pod_uids(self) -> list[str]:
        """The pods the running device holds (read from another thread: a snapshot)."""
        device = self.device
        return list(device.pods) if device is not None else []
