"""Fixtures of the USB transport tests: an emulated bus below pyusb (vkpy_usb.testing) with the
reference device behind each emulated device's bulk endpoints."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from usb_helpers import MakeDevice
from vkpy_usb.testing import BusFile, EmulatedBackend, EmulatedBus, EmulatedDevice, ReferenceDevice


@pytest.fixture
def usb_bus() -> Iterator[EmulatedBus]:
    bus = EmulatedBus()
    yield bus
    bus.shutdown()


@pytest.fixture
def usb_backend(usb_bus: EmulatedBus) -> EmulatedBackend:
    return EmulatedBackend(usb_bus)


@pytest.fixture
def make_device(usb_bus: EmulatedBus) -> MakeDevice:
    """``make_device(serial_number="A1", port_numbers=(1, 4), reference={"pods": 2})`` plugs in an
    emulated device running the reference device (``function=None``... to run another function)."""

    def make(
        *, reference: dict[str, Any] | None = None, plugged: bool = True, **options: Any
    ) -> EmulatedDevice:
        if "function" not in options:
            device_id = options.get("serial_number") or "usb-device"
            options["function"] = ReferenceDevice(**{"device_id": device_id, **(reference or {})})
        return usb_bus.add(EmulatedDevice(**options), plugged=plugged)

    return make


@pytest.fixture
def bus_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> BusFile:
    """A bus file that subprocesses started by this test follow (their environment names it)."""
    bus = BusFile(tmp_path / "usb-bus.json")
    for key, value in bus.env.items():
        monkeypatch.setenv(key, value)
    return bus
