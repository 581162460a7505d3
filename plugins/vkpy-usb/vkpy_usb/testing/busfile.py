"""An emulated bus described by a JSON file, for tests that run ``vkpy run`` (or ``vkpy usb list``)
as a subprocess: the test writes the file with :class:`BusFile`, the subprocess's
``EmulatedBackend()`` follows it (``$VKPY_USB_EMULATION`` names the file), and plugging,
unplugging and power cycles happen when the test rewrites it.

The devices (and the reference device behind each) run inside the subprocess; the file only says
which exist and in what state::

    {"devices": {"board-a": {"plugged": true, "power_cycles": 0,
                             "device": {"vendor_id": 4617, "product_id": 1, "serial_number": "A1",
                                        "port_numbers": [1, 4]},
                             "reference": {"device_id": "board-a", "pods": 4}}}}
"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path
from typing import Any

from vkpy_usb.testing.emulated import EmulatedBus, EmulatedDevice, EndpointSpec, InterfaceSpec
from vkpy_usb.testing.reference import ReferenceDevice

BUS_ENV = "VKPY_USB_EMULATION"
POLL_SECONDS = 0.05
_MUTABLE = ("access_denied", "claimed_elsewhere", "send_zlp", "strict_transfers")


class BusFile:
    """The test's side: devices by name, written atomically to ``path`` at every change."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.devices: dict[str, dict[str, Any]] = {}
        if self.path.exists():
            self.devices = json.loads(self.path.read_text())["devices"]
        else:
            self._write()

    @property
    def env(self) -> dict[str, str]:
        """The environment a subprocess needs to follow this file."""
        return {BUS_ENV: str(self.path)}

    def add(
        self, name: str, *, plugged: bool = True, reference: dict[str, Any] | None = None, **device: Any
    ) -> None:
        """A device (``EmulatedDevice`` keyword arguments, JSON-able; ``interfaces`` as a list of
        ``{"number", "interface_class", "endpoints": [{"address", "max_packet", "kind"}]}``) running
        the reference device with ``reference`` options (default ``device_id`` = the name)."""
        if "port_numbers" in device:
            device["port_numbers"] = list(device["port_numbers"])
        self.devices[name] = {
            "plugged": plugged,
            "power_cycles": 0,
            "device": device,
            "reference": {"device_id": name, **(reference or {})},
        }
        self._write()

    def unplug(self, name: str, *, power_loss: bool = False) -> None:
        entry = self.devices[name]
        entry["plugged"] = False
        if power_loss:
            entry["power_cycles"] += 1
        self._write()

    def plug(self, name: str) -> None:
        self.devices[name]["plugged"] = True
        self._write()

    def power_cycle(self, name: str) -> None:
        self.devices[name]["power_cycles"] += 1
        self._write()

    def update(self, name: str, **changes: Any) -> None:
        """Change a device's flags (``access_denied``, ``claimed_elsewhere``, ``send_zlp``...)."""
        self.devices[name]["device"].update(changes)
        self._write()

    def remove(self, name: str) -> None:
        del self.devices[name]
        self._write()

    def _write(self) -> None:
        temporary = self.path.with_name(self.path.name + ".tmp")
        temporary.write_text(json.dumps({"devices": self.devices}, indent=1))
        os.replace(temporary, self.path)


def _interfaces(raw: Any) -> list[InterfaceSpec] | None:
    if raw is None:
        return None
    return [
        InterfaceSpec(
            number=int(i["number"]),
            interface_class=int(i.get("interface_class", 0xFF)),
            subclass=int(i.get("subclass", 0)),
            protocol=int(i.get("protocol", 0)),
            endpoints=tuple(
                EndpointSpec(int(e["address"]), int(e.get("max_packet", 64)), int(e.get("kind", 2)))
                for e in i.get("endpoints", ())
            ),
        )
        for i in raw
    ]


class FollowedBus(EmulatedBus):
    """The subprocess's side: an emulated bus kept in step with a bus file by a polling thread."""

    def __init__(self, path: Path) -> None:
        super().__init__()
        self.path = Path(path)
        self._named: dict[str, tuple[EmulatedDevice, dict[str, Any]]] = {}
        self._stamp: tuple[int, int] | None = None
        self._sync_lock = threading.Lock()
        self.sync()
        self._watcher = threading.Thread(target=self._watch, name="vkpy-usb-busfile", daemon=True)
        self._watcher.start()

    def _watch(self) -> None:
        while True:
            time.sleep(POLL_SECONDS)
            try:
                self.sync()
            except Exception:  # a half-written file is read again at the next poll
                self._stamp = None

    def sync(self) -> None:
        with self._sync_lock:
            try:
                stat = self.path.stat()
            except FileNotFoundError:
                return
            stamp = (stat.st_mtime_ns, stat.st_size)
            if stamp == self._stamp:
                return
            specs: dict[str, dict[str, Any]] = json.loads(self.path.read_text())["devices"]
            self._stamp = stamp
            for name in [n for n in self._named if n not in specs]:
                device, _ = self._named.pop(name)
                self.remove(device)
            for name, spec in specs.items():
                self._apply(name, spec)

    def _apply(self, name: str, spec: dict[str, Any]) -> None:
        known = self._named.get(name)
        if known is None:
            options = dict(spec["device"])
            options["interfaces"] = _interfaces(options.get("interfaces"))
            device = EmulatedDevice(**options, function=ReferenceDevice(**spec.get("reference", {})))
            self._named[name] = (device, spec)
            self.add(device, plugged=bool(spec["plugged"]))
            return
        device, previous = known
        for key in _MUTABLE:
            if key in spec["device"]:
                setattr(device, key, spec["device"][key])
        if spec["power_cycles"] != previous["power_cycles"]:
            device.unplug(power_loss=True)
            if spec["plugged"]:
                device.plug()
        elif spec["plugged"] and not device.plugged:
            device.plug()
        elif not spec["plugged"] and device.plugged:
            device.unplug()
        self._named[name] = (device, spec)


_followed: dict[str, FollowedBus] = {}
_followed_lock = threading.Lock()


def bus_from_environment() -> FollowedBus:
    """The bus file named by ``$VKPY_USB_EMULATION``, followed (once per process and path)."""
    path = os.environ.get(BUS_ENV)
    if not path:
        raise RuntimeError(
            f"EmulatedBackend() without a bus needs ${BUS_ENV} to name a bus file "
            "(vkpy_usb.testing.BusFile); this backend is for tests only"
        )
    with _followed_lock:
        bus = _followed.get(path)
        if bus is None:
            bus = FollowedBus(Path(path))
            _followed[path] = bus
        return bus
