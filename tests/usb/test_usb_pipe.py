"""The bulk pipe and its asyncio stream, through the real pyusb on the emulated bus: packets and
zero-length packets, short reads, stalls, timeouts, kernel drivers, permissions, unplug, close."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
import usb.core
from usb_helpers import PRODUCT_ID, VENDOR_ID, MakeDevice, until
from vkpy_usb import (
    DeviceTarget,
    PipeSettings,
    UsbBusy,
    UsbPermissionDenied,
    UsbPipe,
    open_usb_stream,
    select_device,
)
from vkpy_usb.pipe import WriteTimeout
from vkpy_usb.testing import EchoFunction, EmulatedBackend, EmulatedDevice, Gadget

FAST = PipeSettings(read_timeout=0.05, write_timeout=0.3)


class Scripted:
    """A device function that sends what the test queues, each item as one IN transfer, and keeps
    what the host sent as the OUT transfers it completed."""

    def __init__(self, rx_buffer: int = 4096) -> None:
        self.rx_buffer = rx_buffer
        self.received: list[bytes] = []
        self.gadget: Gadget | None = None
        self._thread: threading.Thread | None = None

    def start(self, gadget: Gadget) -> None:
        self.gadget = gadget

        def run() -> None:
            while True:
                data = gadget.read(self.rx_buffer, 0.05)
                if data is None:
                    return
                if data:
                    self.received.append(data)

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._thread is not None:
            self._thread.join(5)

    def send(self, data: bytes) -> None:
        assert self.gadget is not None
        self.gadget.write(data)


def open_pipe(backend: EmulatedBackend, settings: PipeSettings = FAST, serial: str | None = None) -> UsbPipe:
    device = select_device(backend, VENDOR_ID, PRODUCT_ID, serial_number=serial)
    return UsbPipe.open(device, settings)


def read_all(pipe: UsbPipe, size: int, timeout: float = 5.0) -> list[bytes]:
    """Transfers read until ``size`` bytes came (zero-length ones included)."""
    chunks: list[bytes] = []
    deadline = time.monotonic() + timeout
    while sum(len(c) for c in chunks) < size:
        assert time.monotonic() < deadline, f"only {chunks!r} arrived"
        data = pipe.read()
        if data is not None:
            chunks.append(data)
    return chunks


def test_a_write_ending_on_a_packet_boundary_is_followed_by_a_zero_length_packet(
    make_device: MakeDevice, usb_backend: EmulatedBackend
) -> None:
    echo = EchoFunction(rx_buffer=4096)
    device = make_device(function=echo, max_packet=64)
    # Without the ZLP the device's receive (a 4 KiB buffer) waits for more packets: what pyusb
    # alone sends stays stuck, as on real device stacks.
    raw = select_device(usb_backend, VENDOR_ID, PRODUCT_ID)
    assert raw.write(0x01, b"x" * 128, 1000) == 128
    time.sleep(0.3)
    assert echo.received == []
    usb.util.dispose_resources(raw)

    pipe = open_pipe(usb_backend)
    try:
        pipe.write(b"y" * 128)
        assert read_all(pipe, 256) == [b"x" * 128 + b"y" * 128]  # both, in one transfer after the ZLP
        assert device.stats.zlps_from_host == 1
        assert pipe.zlps_sent == 1

        pipe.write(b"z" * 100)  # ends with a short packet: no ZLP needed
        assert read_all(pipe, 100) == [b"z" * 100]
        assert device.stats.zlps_from_host == 1
    finally:
        pipe.close()


def test_a_zero_length_packet_from_the_device_is_an_empty_read_not_the_end(
    make_device: MakeDevice, usb_backend: EmulatedBackend
) -> None:
    script = Scripted()
    device = make_device(function=script, max_packet=64)
    pipe = open_pipe(usb_backend, PipeSettings(read_timeout=0.05, read_size=64))
    try:
        script.send(b"a" * 64)  # one full packet, then the device's ZLP
        assert pipe.read() == b"a" * 64  # the 64-byte buffer is full: the transfer is complete
        assert pipe.read() == b""  # the ZLP arrives as a transfer of its own
        assert pipe.zlps_received == 1
        script.send(b"after")
        assert pipe.read() == b"after"
        assert device.stats.zlps_to_host == 1
    finally:
        pipe.close()


async def test_the_stream_skips_zero_length_packets(
    make_device: MakeDevice, usb_backend: EmulatedBackend
) -> None:
    script = Scripted()
    make_device(function=script, max_packet=64)
    stream = await open_usb_stream(
        usb_backend, DeviceTarget(VENDOR_ID, PRODUCT_ID), PipeSettings(read_timeout=0.05, read_size=64)
    )
    try:
        script.send(b"b" * 64)
        script.send(b"tail")
        async with asyncio.timeout(5):
            assert await stream.read() == b"b" * 64
            assert await stream.read() == b"tail"  # not b"" (end of stream) for the ZLP between
        assert stream.pipe.zlps_received == 1
    finally:
        await stream.close()


def test_short_reads_and_transfers_longer_than_the_read_buffer(
    make_device: MakeDevice, usb_backend: EmulatedBackend
) -> None:
    script = Scripted()
    make_device(function=script, max_packet=64)
    pipe = open_pipe(usb_backend, PipeSettings(read_timeout=0.05, read_size=128))
    try:
        for part in (b"one", b"two", b"three"):
            script.send(part)
        assert read_all(pipe, 11) == [b"one", b"two", b"three"]  # each short transfer on its own

        script.send(bytes(range(200)))  # one transfer of 4 packets, read 128 bytes at a time
        assert read_all(pipe, 200) == [bytes(range(128)), bytes(range(128, 200))]
    finally:
        pipe.close()


def test_a_device_that_sends_no_zlp_is_still_read_when_the_read_times_out(
    make_device: MakeDevice, usb_backend: EmulatedBackend
) -> None:
    script = Scripted()
    make_device(function=script, max_packet=64, send_zlp=False)
    pipe = open_pipe(usb_backend, PipeSettings(read_timeout=0.1, read_size=4096))
    try:
        script.send(b"c" * 128)  # ends on a packet boundary, and the buggy device adds no ZLP
        started = time.monotonic()
        assert read_all(pipe, 128) == [b"c" * 128]  # libusb hands over what came when it timed out
        assert time.monotonic() - started >= 0.09
    finally:
        pipe.close()


def test_an_in_stall_is_cleared_and_the_read_retried(
    make_device: MakeDevice, usb_backend: EmulatedBackend
) -> None:
    script = Scripted()
    device = make_device(function=script)
    pipe = open_pipe(usb_backend)
    try:
        device.stall(0x81)
        script.send(b"after the stall")
        assert read_all(pipe, 15) == [b"after the stall"]
        assert device.stats.stalls_cleared == 1
        assert pipe.stalls_cleared == 1
        assert not device.halted(0x81)
    finally:
        pipe.close()


def test_an_out_stall_is_cleared_and_the_write_retried(
    make_device: MakeDevice, usb_backend: EmulatedBackend
) -> None:
    echo = EchoFunction()
    device = make_device(function=echo)
    pipe = open_pipe(usb_backend)
    try:
        device.stall(0x01)
        pipe.write(b"hello")
        assert read_all(pipe, 5) == [b"hello"]
        assert device.stats.stalls_cleared == 1
    finally:
        pipe.close()


def test_an_endpoint_that_keeps_stalling_is_given_up(
    make_device: MakeDevice, usb_backend: EmulatedBackend
) -> None:
    device = make_device(function=Scripted())
    pipe = open_pipe(usb_backend)
    try:
        device.stall(0x81, sticky=True)
        with pytest.raises(usb.core.USBError, match="keeps stalling") as raised:
            pipe.read()
        assert raised.value.errno == 32  # EPIPE
        assert device.stats.stalls_cleared == 5
    finally:
        pipe.close()


def test_reads_time_out_quietly(make_device: MakeDevice, usb_backend: EmulatedBackend) -> None:
    make_device(function=Scripted())
    pipe = open_pipe(usb_backend, PipeSettings(read_timeout=0.1))
    try:
        started = time.monotonic()
        assert pipe.read() is None
        assert 0.09 <= time.monotonic() - started < 1.0
    finally:
        pipe.close()


def test_a_write_the_device_does_not_take_times_out_and_a_partial_one_says_how_much(
    make_device: MakeDevice, usb_backend: EmulatedBackend
) -> None:
    device = make_device(function=None, out_buffer=128)  # nothing drains the device's 2-packet buffer
    pipe = open_pipe(usb_backend, PipeSettings(write_timeout=0.2))
    try:
        with pytest.raises(WriteTimeout, match="128 of 256 bytes not sent"):
            pipe.write(b"w" * 256)  # two packets fit; libusb reports the partial transfer
        device.set_accepting_out(False)
        started = time.monotonic()
        with pytest.raises(WriteTimeout, match=r"took no data for 0\.2 s"):
            pipe.write(b"more")
        assert time.monotonic() - started >= 0.19
    finally:
        pipe.close()


async def test_the_stream_drops_a_timed_out_write_and_goes_on(
    make_device: MakeDevice, usb_backend: EmulatedBackend
) -> None:
    echo = EchoFunction()
    device = make_device(function=echo)
    stream = await open_usb_stream(usb_backend, DeviceTarget(VENDOR_ID, PRODUCT_ID), FAST)
    try:
        device.set_accepting_out(False)
        await stream.write(b"lost")  # dropped with a warning: the protocol retransmits
        device.set_accepting_out(True)
        await stream.write(b"kept")
        async with asyncio.timeout(5):
            assert await stream.read() == b"kept"
    finally:
        await stream.close()


def test_a_kernel_driver_is_detached_and_reattached(
    make_device: MakeDevice, usb_backend: EmulatedBackend
) -> None:
    device = make_device(function=EchoFunction(), kernel_driver=True)
    pipe = open_pipe(usb_backend)
    assert pipe.detached_kernel_driver
    assert device.stats.kernel_driver_detaches == 1
    assert device.claimed(0)
    assert not device.kernel_driver_attached(0)
    pipe.close()
    assert not device.claimed(0)
    assert device.kernel_driver_attached(0)
    assert device.stats.kernel_driver_attaches == 1
    assert device.stats.closes == device.stats.opens  # dispose_resources closed every handle


def test_without_detaching_a_kernel_driver_the_interface_is_busy(
    make_device: MakeDevice, usb_backend: EmulatedBackend
) -> None:
    device = make_device(function=EchoFunction(), kernel_driver=True)
    with pytest.raises(UsbBusy, match="detach_kernel_driver: true"):
        open_pipe(usb_backend, PipeSettings(detach_kernel_driver=False))
    assert device.kernel_driver_attached(0)
    assert device.stats.closes == device.stats.opens


def test_an_interface_claimed_by_another_program_is_busy(
    make_device: MakeDevice, usb_backend: EmulatedBackend
) -> None:
    make_device(function=EchoFunction(), claimed_elsewhere=True, port_numbers=(1, 4))
    with pytest.raises(UsbBusy) as busy:
        open_pipe(usb_backend)
    message = str(busy.value)
    assert "interface 0 of USB device 1209:0001 at 1-1.4" in message
    assert "another program holds it" in message


def test_permission_denied_names_the_udev_rule_and_the_group(
    make_device: MakeDevice, usb_backend: EmulatedBackend
) -> None:
    make_device(function=EchoFunction(), access_denied=True, serial_number="P1", port_numbers=(3,))
    with pytest.raises(UsbPermissionDenied) as denied:
        open_pipe(usb_backend)
    message = str(denied.value)
    assert message.startswith("permission denied opening USB device 1209:0001 at 1-3 (/dev/bus/usb/001/")
    assert (
        'SUBSYSTEM=="usb", ATTR{idVendor}=="1209", ATTR{idProduct}=="0001", MODE="0660", GROUP="plugdev"'
        in message
    )
    assert "/etc/udev/rules.d/70-vkpy-usb.rules" in message
    assert "usermod -aG plugdev" in message
    assert "udevadm control --reload-rules" in message
    assert "docs/transports/usb.md" in message

    # With a serial number to match, the error comes while reading serial numbers.
    with pytest.raises(
        UsbPermissionDenied, match="cannot read the serial numbers of USB devices 1209:0001 at 1-3"
    ):
        open_pipe(usb_backend, serial="P1")


def test_an_unconfigured_device_is_configured_and_a_configured_one_left_alone(
    make_device: MakeDevice, usb_backend: EmulatedBackend
) -> None:
    fresh = make_device(function=EchoFunction(), configured_at_plug=False, serial_number="U0")
    configured = make_device(function=EchoFunction(), serial_number="C1")
    first = open_pipe(usb_backend, serial="U0")
    second = open_pipe(usb_backend, serial="C1")
    first.close()
    second.close()
    assert fresh.stats.set_configurations == 1
    assert fresh.configuration == 1
    assert configured.stats.set_configurations == 0


async def test_unplugging_ends_the_stream_and_close_still_cleans_up(
    make_device: MakeDevice, usb_backend: EmulatedBackend
) -> None:
    device = make_device(function=EchoFunction())
    stream = await open_usb_stream(usb_backend, DeviceTarget(VENDOR_ID, PRODUCT_ID), FAST)
    await stream.write(b"ping")
    async with asyncio.timeout(5):
        assert await stream.read() == b"ping"
        device.unplug()
        assert await stream.read() == b""  # end of stream
        assert await stream.read() == b""
    assert "unplugged" in stream.end_reason
    with pytest.raises(OSError, match=r"closed|unplugged"):
        await stream.write(b"more")
    await stream.close()
    assert stream.pipe.closed


async def test_close_releases_the_interface_and_stops_both_threads(
    make_device: MakeDevice, usb_backend: EmulatedBackend
) -> None:
    device = make_device(function=EchoFunction())
    stream = await open_usb_stream(usb_backend, DeviceTarget(VENDOR_ID, PRODUCT_ID), FAST)
    threads = [t for t in threading.enumerate() if t.name.startswith(("vkpy-usb-read", "vkpy-usb-write"))]
    assert len(threads) == 2
    assert device.claimed(0)
    await stream.close()
    assert not device.claimed(0)
    assert device.stats.releases == 1
    assert device.stats.closes == device.stats.opens
    await until(lambda: not any(t.is_alive() for t in threads), what="the worker threads to end")


async def test_an_open_that_outlives_its_caller_releases_the_device(
    make_device: MakeDevice, usb_backend: EmulatedBackend
) -> None:
    device = make_device(function=EchoFunction(), open_delay=0.3)  # slower than the caller's timeout
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.1):
            await open_usb_stream(usb_backend, DeviceTarget(VENDOR_ID, PRODUCT_ID), FAST)
    await until(lambda: device.stats.opens > 0 and not device.claimed(0), what="the late open to be undone")
    await until(lambda: device.stats.closes == device.stats.opens, what="every handle to be closed")


def test_the_emulated_device_keeps_its_descriptors(
    usb_backend: EmulatedBackend, make_device: MakeDevice
) -> None:
    device: EmulatedDevice = make_device(
        serial_number="D1", manufacturer="Acme", product="Widget", port_numbers=(2, 1)
    )
    found = usb.core.find(backend=usb_backend, idVendor=VENDOR_ID)
    assert (found.manufacturer, found.product, found.serial_number) == ("Acme", "Widget", "D1")
    assert found.port_numbers == (2, 1)
    assert found.address == device.address
    (interface,) = list(found[0])
    assert [ep.bEndpointAddress for ep in interface] == [0x81, 0x01]
    usb.util.dispose_resources(found)
