"""The stronger tier: the real libusb-1.0 backend under ``umockdev-run``, which fakes sysfs and
the usbfs device node without root or kernel modules.

What runs for real here: libusb's enumeration (sysfs), its descriptor parsing, port numbers, the
sysfs fallback for strings, opening ``/dev/bus/usb/001/005``, the kernel-driver check, claiming and
releasing the interface, and bulk URBs: a protocol frame that ends on a packet boundary goes out
with its zero-length packet, and the device's reply frame comes back and decodes.

What cannot run here: umockdev replays usbfs URBs from a static script that allows one URB in
flight at a time and compares OUT data byte for byte, while the transport's stream keeps an IN URB
pending in its reader thread as the writer sends. So the whole protocol conversation runs on the
emulated pyusb backend (the other tests), and this test drives the pipe one transfer at a time.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
import textwrap
from pathlib import Path
from types import ModuleType

import pytest
from vkpy_usb.testing import load_program

from vkpy.protocol import Hello, encode_frame, encode_request
from vkpy.testing.pytest_plugin import missing_part

SERIAL = "UMOCK1"
MAX_PACKET = 64


def _descriptors(
    vendor: int, product: int, interface_class: int, endpoints: list[tuple[int, int, int]]
) -> str:
    device = struct.pack("<BBHBBBBHHHBBBB", 18, 1, 0x0200, 0, 0, 0, 64, vendor, product, 0x0100, 1, 2, 3, 1)
    body = struct.pack("<BBBBBBBBB", 9, 4, 0, 0, len(endpoints), interface_class, 0, 0, 0)
    for address, kind, size in endpoints:
        body += struct.pack("<BBBBHB", 7, 5, address, kind, size, 0 if kind == 2 else 12)
    config = struct.pack("<BBHBBBBB", 9, 2, 9 + len(body), 1, 1, 0, 0x80, 50) + body
    return (device + config).hex()


def device_file() -> str:
    """sysfs of a root hub and, on its port 4, a vendor device with a bulk pair (as umockdev-record
    would write them)."""
    hub = _descriptors(0x1D6B, 0x0002, 0x09, [(0x81, 3, 4)])
    board = _descriptors(0x1209, 0x0001, 0xFF, [(0x81, 2, MAX_PACKET), (0x01, 2, MAX_PACKET)])
    return textwrap.dedent(
        f"""\
        P: /devices/pci0000:00/0000:00:14.0/usb1
        N: bus/usb/001/001
        E: DEVNAME=/dev/bus/usb/001/001
        E: DEVTYPE=usb_device
        E: DRIVER=usb
        E: BUSNUM=001
        E: DEVNUM=001
        E: SUBSYSTEM=usb
        A: busnum=1
        A: devnum=1
        A: idVendor=1d6b
        A: idProduct=0002
        A: bConfigurationValue=1
        A: speed=480
        H: descriptors={hub}

        P: /devices/pci0000:00/0000:00:14.0/usb1/1-4
        N: bus/usb/001/005
        E: DEVNAME=/dev/bus/usb/001/005
        E: DEVTYPE=usb_device
        E: DRIVER=usb
        E: BUSNUM=001
        E: DEVNUM=005
        E: SUBSYSTEM=usb
        A: busnum=1
        A: devnum=5
        A: devpath=4
        A: idVendor=1209
        A: idProduct=0001
        A: bConfigurationValue=1
        A: speed=480
        A: serial={SERIAL}
        A: manufacturer=vkpy
        A: product=umockdev board
        H: descriptors={board}
        """
    )


def aligned_hello() -> tuple[str, bytes]:
    """A host name that makes the hello request (with its leading 00) a multiple of the packet size."""
    for n in range(MAX_PACKET):
        host = "vkpy-" + "u" * n
        wire = b"\x00" + encode_frame(encode_request(7, Hello(versions=(1,), max_frame=65536, host=host)))
        if len(wire) % MAX_PACKET == 0:
            return host, wire
    raise AssertionError("no host name aligns the hello")


def ioctl_script(hello: bytes, device: ModuleType) -> tuple[str, bytes]:
    """The usbfs conversation: capabilities, the hello (128 bytes, then the ZLP), and the reply
    that the reference device gives to exactly this hello."""
    board = device.Device(device_id=SERIAL)
    board.handle_body(device.decode_frame(hello[1:-1]))
    reply = b"\x00" + board.take_output()[0]
    read_size = 16384
    lines = [
        "USBDEVFS_GET_CAPABILITIES 0 00000000",
        f"USBDEVFS_REAPURBNDELAY 0 3 1 0 0 {len(hello)} {len(hello)} 0 {hello.hex().upper()}",
        "USBDEVFS_REAPURBNDELAY 0 3 1 0 0 0 0 0 ",
        f" USBDEVFS_REAPURBNDELAY 0 3 129 0 0 {read_size} {len(reply)} 0 {reply.hex().upper()}",
    ]
    return "\n".join(lines) + "\n", reply


PIPE_SCRIPT = """
import json, sys
import usb.backend.libusb1
from vkpy.protocol import FrameDecoder
from vkpy_usb import PipeSettings, UsbPipe, list_devices, select_device

backend = usb.backend.libusb1.get_backend()
hello = bytes.fromhex(sys.argv[1])
infos = [info.as_json() for info in list_devices(backend)]
device = select_device(backend, 0x1209, 0x0001, serial_number=sys.argv[2])
pipe = UsbPipe.open(device, PipeSettings(read_timeout=2.0))
sent = pipe.write(hello)
data = pipe.read()
pipe.close()
bodies = FrameDecoder(65536).feed(data or b"")
print(json.dumps({"devices": infos, "sent": sent, "zlps": pipe.zlps_sent, "received": len(data or b""),
                  "reply": json.loads(bodies[0]) if bodies else None, "backend": type(backend).__module__}))
"""


@pytest.fixture
def umockdev_run() -> str:
    path = shutil.which("umockdev-run")
    if path is None:
        missing_part("umockdev-run (Debian package umockdev; .ci/install-system-deps installs it)")
    assert path is not None
    return path


def test_real_libusb_finds_opens_and_moves_a_frame_under_umockdev(umockdev_run: str, tmp_path: Path) -> None:
    device = load_program()
    _host, hello = aligned_hello()
    assert len(hello) == 128
    script, reply = ioctl_script(hello, device)
    (tmp_path / "board.umockdev").write_text(device_file())
    (tmp_path / "board.ioctl").write_text(script)
    (tmp_path / "pipe.py").write_text(PIPE_SCRIPT)

    result = subprocess.run(
        [
            umockdev_run,
            "--device",
            str(tmp_path / "board.umockdev"),
            "--ioctl",
            f"/dev/bus/usb/001/005={tmp_path / 'board.ioctl'}",
            "--",
            sys.executable,
            str(tmp_path / "pipe.py"),
            hello.hex(),
            SERIAL,
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "VKPY_USB_BACKEND": ""},
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    outcome = json.loads(result.stdout.strip().splitlines()[-1])
    assert outcome["backend"] == "usb.backend.libusb1"

    (board,) = [d for d in outcome["devices"] if d["vendor_id"] == "0x1209"]
    assert board["port_path"] == "1-4"
    assert (board["bus"], board["address"]) == (1, 5)
    assert board["serial_number"] == SERIAL  # from sysfs: umockdev scripts no control transfers
    assert board["product"] == "umockdev board"
    assert board["interface"] == {
        "number": 0,
        "endpoint_in": "0x81",
        "endpoint_out": "0x01",
        "max_packet_in": 64,
        "max_packet_out": 64,
    }

    assert outcome["sent"] == 128
    assert outcome["zlps"] == 1  # the script expects the zero-length URB before the IN URB
    assert outcome["received"] == len(reply)
    assert outcome["reply"]["device_id"] == SERIAL
    assert outcome["reply"]["id"] == 7
