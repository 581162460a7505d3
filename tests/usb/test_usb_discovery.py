"""Finding the device a node means among several, reading what ``vkpy usb list`` shows, picking the
interface and endpoints from the descriptors, and the ``usb:`` options."""

from __future__ import annotations

import pytest
from usb_helpers import PRODUCT_ID, VENDOR_ID, MakeDevice
from vkpy_usb import (
    UsbDescriptorError,
    UsbDeviceAmbiguous,
    UsbDeviceNotFound,
    UsbOptions,
    find_endpoints,
    list_devices,
    select_device,
)
from vkpy_usb.testing import INTERRUPT, EmulatedBackend, EndpointSpec, InterfaceSpec, vendor_interface

from vkpy.config import ConfigValidationError, structure


def test_a_device_is_found_by_ids_and_serial_number_among_several(
    make_device: MakeDevice, usb_backend: EmulatedBackend
) -> None:
    make_device(serial_number="A1", port_numbers=(1,))
    make_device(serial_number="B2", port_numbers=(2,))
    make_device(serial_number="C3", port_numbers=(3,), product_id=0x0002)
    make_device(serial_number="D4", port_numbers=(4,), vendor_id=0x16C0)

    found = select_device(usb_backend, VENDOR_ID, PRODUCT_ID, serial_number="B2")
    assert (found.serial_number, found.port_numbers) == ("B2", (2,))
    assert select_device(usb_backend, VENDOR_ID, 0x0002).serial_number == "C3"
    assert select_device(usb_backend, 0x16C0, PRODUCT_ID).serial_number == "D4"
    assert select_device(usb_backend, VENDOR_ID, PRODUCT_ID, path="1-1").serial_number == "A1"
    assert select_device(usb_backend, VENDOR_ID, PRODUCT_ID, serial_number="A1", path="1-1").port_numbers == (
        1,
    )

    with pytest.raises(UsbDeviceAmbiguous) as ambiguous:
        select_device(usb_backend, VENDOR_ID, PRODUCT_ID)
    assert "2 USB devices 1209:0001 are plugged in: 1-1 (serial 'A1'), 1-2 (serial 'B2')" in str(
        ambiguous.value
    )
    assert "set serial_number (or port_path)" in str(ambiguous.value)

    with pytest.raises(UsbDeviceNotFound) as missing:
        select_device(usb_backend, VENDOR_ID, PRODUCT_ID, serial_number="Z9")
    assert "no USB device 1209:0001 with serial number 'Z9'" in str(missing.value)
    assert "1-1 (serial 'A1'), 1-2 (serial 'B2')" in str(missing.value)

    with pytest.raises(UsbDeviceNotFound, match=r"no USB device 1209:0001 at port path 1-7.*are at 1-1, 1-2"):
        select_device(usb_backend, VENDOR_ID, PRODUCT_ID, path="1-7")
    with pytest.raises(UsbDeviceNotFound, match=r"no USB device 1209:00ff is plugged in \('vkpy usb list'"):
        select_device(usb_backend, VENDOR_ID, 0x00FF)


def test_an_unplugged_device_is_not_found_and_a_replugged_one_is(
    make_device: MakeDevice, usb_backend: EmulatedBackend
) -> None:
    device = make_device(serial_number="A1")
    first = device.address
    device.unplug()
    with pytest.raises(UsbDeviceNotFound):
        select_device(usb_backend, VENDOR_ID, PRODUCT_ID, serial_number="A1")
    device.plug()
    found = select_device(usb_backend, VENDOR_ID, PRODUCT_ID, serial_number="A1")
    assert found.address != first  # a new address, as after a real replug


def test_list_devices_reads_strings_paths_access_and_the_interface(
    make_device: MakeDevice, usb_backend: EmulatedBackend
) -> None:
    make_device(serial_number="A1", port_numbers=(1, 4), manufacturer="Acme", product="Sensor board")
    make_device(serial_number="P2", port_numbers=(2,), access_denied=True)
    cdc = InterfaceSpec(0, 0x02, endpoints=(EndpointSpec(0x83, 16, INTERRUPT),))
    make_device(
        serial_number=None,
        port_numbers=(3,),
        product_id=0x0002,
        interfaces=(cdc, vendor_interface(1, 0x82, 0x02, max_packet=512)),
    )
    make_device(serial_number="K1", port_numbers=(5,), interfaces=(cdc,), vendor_id=0x046D)

    infos = {i.port_path: i for i in list_devices(usb_backend)}
    assert sorted(infos, key=str) == ["1-1.4", "1-2", "1-3", "1-5"]

    board = infos["1-1.4"]
    assert (board.manufacturer, board.product, board.serial_number) == ("Acme", "Sensor board", "A1")
    assert board.accessible
    assert board.problem is None
    assert board.endpoints is not None
    assert board.endpoints.interface == 0

    denied = infos["1-2"]
    assert not denied.accessible
    assert denied.problem == "permission denied"
    assert denied.serial_number is None  # no sysfs behind an emulated bus

    composite = infos["1-3"]
    assert composite.serial_number is None
    assert composite.endpoints is not None
    assert (
        composite.endpoints.interface,
        composite.endpoints.endpoint_in,
        composite.endpoints.endpoint_out,
    ) == (
        1,
        0x82,
        0x02,
    )
    assert composite.endpoints.max_packet_in == 512

    keyboard = infos["1-5"]
    assert keyboard.endpoints is None  # nothing the usb transport could use

    assert [i.port_path for i in list_devices(usb_backend, vendor_id=0x046D)] == ["1-5"]
    assert [i.port_path for i in list_devices(usb_backend, product_id=0x0002)] == ["1-3"]
    as_json = board.as_json()
    assert as_json["vendor_id"] == "0x1209"
    assert as_json["interface"] == {
        "number": 0,
        "endpoint_in": "0x81",
        "endpoint_out": "0x01",
        "max_packet_in": 64,
        "max_packet_out": 64,
    }


def test_endpoints_come_from_the_descriptors_or_are_checked_against_them(
    make_device: MakeDevice, usb_backend: EmulatedBackend
) -> None:
    cdc = InterfaceSpec(0, 0x02, endpoints=(EndpointSpec(0x83, 16, INTERRUPT),))
    data = InterfaceSpec(1, 0x0A, endpoints=(EndpointSpec(0x84, 64), EndpointSpec(0x04, 64)))
    vendor = InterfaceSpec(
        2, 0xFF, endpoints=(EndpointSpec(0x85, 16, INTERRUPT), EndpointSpec(0x86), EndpointSpec(0x06))
    )
    make_device(function=None, interfaces=(cdc, data, vendor))
    device = select_device(usb_backend, VENDOR_ID, PRODUCT_ID)

    found = find_endpoints(device)  # the vendor interface, skipping its interrupt endpoint
    assert (found.interface, found.endpoint_in, found.endpoint_out) == (2, 0x86, 0x06)
    explicit = find_endpoints(device, interface=1)  # a CDC data interface named explicitly
    assert (explicit.interface, explicit.endpoint_in, explicit.endpoint_out, explicit.interface_class) == (
        1,
        0x84,
        0x04,
        0x0A,
    )
    assert find_endpoints(device, endpoint_in=0x86, endpoint_out=0x06).interface == 2

    with pytest.raises(UsbDescriptorError, match=r"has no interface 7 \(its interfaces: 0, 1, 2\)"):
        find_endpoints(device, interface=7)
    with pytest.raises(
        UsbDescriptorError, match=r"endpoint_in 0x85 of USB device 1209:0001 .* is not a bulk endpoint"
    ):
        find_endpoints(device, endpoint_in=0x85)
    with pytest.raises(
        UsbDescriptorError, match=r"endpoint_in 0x81 is not an endpoint of interface 2 .*0x85, 0x86, 0x06"
    ):
        find_endpoints(device, endpoint_in=0x81)
    with pytest.raises(UsbDescriptorError, match="has no bulk IN/OUT endpoint pair"):
        find_endpoints(device, interface=0)
    with pytest.raises(UsbDescriptorError, match="has no configuration 3"):
        find_endpoints(device, configuration=3)


def test_a_device_without_a_vendor_interface_says_what_it_has(
    make_device: MakeDevice, usb_backend: EmulatedBackend
) -> None:
    make_device(
        function=None, interfaces=(InterfaceSpec(0, 0x03, endpoints=(EndpointSpec(0x81, 8, INTERRUPT),)),)
    )
    device = select_device(usb_backend, VENDOR_ID, PRODUCT_ID)
    with pytest.raises(UsbDescriptorError) as error:
        find_endpoints(device)
    assert "no vendor-specific interface (class 0xff) with a bulk IN/OUT endpoint pair" in str(error.value)
    assert "its interfaces: 0 (class 0x03)" in str(error.value)
    assert "set 'interface'" in str(error.value)


def test_options_accept_hex_ids_and_name_the_key_at_fault() -> None:
    options = structure(
        UsbOptions,
        {
            "vendor_id": 0x1209,
            "product_id": "0x00ff",
            "serial_number": "A1",
            "port_path": "1-1.4",
            "endpoint_in": "0x81",
            "endpoint_out": 1,
            "read_timeout": "50ms",
        },
        "nodes[0].usb",
    )
    assert (options.vendor_id, options.product_id) == (0x1209, 0x00FF)
    assert (options.endpoint_in, options.endpoint_out, options.read_timeout) == (0x81, 0x01, 0.05)
    assert options.target.port_path == "1-1.4"
    assert options.pipe_settings.read_timeout == 0.05
    assert structure(UsbOptions, {"vendor_id": "1209", "product_id": "0001"}).vendor_id == 0x1209  # as lsusb

    with pytest.raises(ConfigValidationError) as bad:
        structure(
            UsbOptions,
            {
                "vendor_id": "acme",
                "product_id": 0x10000,
                "port_path": "usb1",
                "endpoint_in": "0x01",
                "endpoint_out": "0x82",
                "backend": "not a spec",
            },
            "nodes[0].usb",
        )
    text = str(bad.value)
    assert "nodes[0].usb.vendor_id: expected a 16-bit USB id, got 'acme'" in text
    assert "write 0x1209, or quote it" in text
    assert "nodes[0].usb.product_id: a 16-bit USB id must be between 0x0 and 0xffff, got 0x10000" in text
    assert 'nodes[0].usb.port_path: expected a USB port path such as "1-1.4"' in text
    assert "nodes[0].usb.backend: expected an importable 'module:attribute'" in text

    with pytest.raises(
        ConfigValidationError, match=r"nodes\[0\].usb.endpoint_in: 0x01 is an OUT endpoint address"
    ):
        structure(UsbOptions, {"vendor_id": 1, "product_id": 2, "endpoint_in": 1}, "nodes[0].usb")
    with pytest.raises(ConfigValidationError, match=r"usb.product_id: missing required key"):
        structure(UsbOptions, {"vendor_id": 1}, "usb")
