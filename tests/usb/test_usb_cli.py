"""``vkpy usb list`` as a user runs it (a subprocess, over the emulated bus or the machine's real
libusb), and plugin subcommands through the ``vkpy.commands`` entry point group."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

from usb_helpers import RecordingNode, until
from vkpy_usb import UsbOptions, UsbTransport
from vkpy_usb.testing import BusFile

EMULATED = {"VKPY_USB_BACKEND": "vkpy_usb.testing:EmulatedBackend"}


def vkpy(
    *args: str, env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "vkpy", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
        cwd=cwd,
    )


def plug_some(bus: BusFile) -> None:
    bus.add("board-a", serial_number="A1", port_numbers=[1, 4], manufacturer="Acme", product="Sensor board")
    bus.add("board-p", serial_number="P2", port_numbers=[2], access_denied=True)
    bus.add(
        "keyboard",
        vendor_id=0x046D,
        product_id=0xC31C,
        serial_number=None,
        port_numbers=[3],
        interfaces=[
            {"number": 0, "interface_class": 3, "endpoints": [{"address": 0x81, "max_packet": 8, "kind": 3}]}
        ],
    )


def test_usb_list_shows_what_a_user_can_configure(bus_file: BusFile) -> None:
    plug_some(bus_file)
    result = vkpy("usb", "list", env=EMULATED)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split() == [
        "PATH",
        "ID",
        "SERIAL",
        "MANUFACTURER",
        "PRODUCT",
        "ACCESS",
        "VKPY",
        "INTERFACE",
    ]
    board = next(line for line in lines if line.startswith("1-1.4"))
    assert board.split()[:5] == ["1-1.4", "1209:0001", "A1", "Acme", "Sensor"]
    assert " ok " in board
    assert "0 (in 0x81, out 0x01, 64 B packets)" in board
    denied = next(line for line in lines if line.startswith("1-2"))
    assert "permission denied" in denied
    assert not any(line.startswith("1-3") for line in lines)  # the keyboard needs --all
    assert 'usb: {vendor_id: 0x1209, product_id: 0x0001, serial_number: "A1"}' in result.stdout
    assert 'ATTR{idVendor}=="1209", ATTR{idProduct}=="0001"' in result.stdout
    assert "plugdev" in result.stdout

    everything = vkpy("usb", "list", "--all", env=EMULATED)
    keyboard = next(line for line in everything.stdout.splitlines() if line.startswith("1-3"))
    assert keyboard.split()[1] == "046d:c31c"
    assert keyboard.rstrip().endswith("-")

    document = json.loads(vkpy("usb", "list", "--json", "--vendor-id", "1209", env=EMULATED).stdout)
    by_serial = {d["serial_number"]: d for d in document["devices"]}
    assert set(by_serial) == {"A1", None}
    a1 = by_serial["A1"]
    assert (a1["vendor_id"], a1["port_path"], a1["accessible"]) == ("0x1209", "1-1.4", True)
    assert a1["interface"]["endpoint_in"] == "0x81"
    denied_json = by_serial[None]
    assert (denied_json["accessible"], denied_json["problem"]) == (False, "permission denied")


def test_usb_list_follows_plug_events(bus_file: BusFile) -> None:
    bus_file.add("board-a", serial_number="A1")
    assert "A1" in vkpy("usb", "list", env=EMULATED).stdout
    bus_file.unplug("board-a")
    assert (
        "no USB devices with a vendor-specific bulk interface found"
        in vkpy("usb", "list", env=EMULATED).stdout
    )


def test_usb_list_on_this_machine_uses_libusb() -> None:
    # The real libusb-1.0 backend; a CI machine or container may have no USB devices at all.
    result = vkpy("usb", "list", "--all", "--json")
    assert result.returncode == 0, result.stderr
    assert isinstance(json.loads(result.stdout)["devices"], list)


def test_a_missing_libusb_is_reported_with_the_package_to_install(bus_file: BusFile) -> None:
    result = vkpy("usb", "list", "--backend", "vkpy_usb.testing:missing_libusb")
    assert result.returncode == 1
    assert result.stderr.startswith("error: no libusb-1.0 library found")
    assert "apt-get install libusb-1.0-0" in result.stderr
    assert "pip install vkpy-usb[bundled-libusb]" in result.stderr


async def test_a_node_without_libusb_is_not_ready_with_the_package_to_install() -> None:
    node = RecordingNode()
    options = UsbOptions(
        vendor_id=0x1209, product_id=1, backend="vkpy_usb.testing:missing_libusb", startup_wait=2.0
    )
    transport = UsbTransport(node, options)
    await transport.node_start(node)
    try:
        await until(lambda: bool(node.health) and "libusb" in node.health[-1].message, what="NotReady")
        assert "apt-get install libusb-1.0-0" in node.health[-1].message
    finally:
        await transport.node_stop(node)


def test_plugin_commands_come_from_entry_points_and_a_broken_one_breaks_nothing(tmp_path: Path) -> None:
    site = tmp_path / "site"
    dist = site / "vkpy_fake_commands-0.1.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: vkpy-fake-commands\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(
        textwrap.dedent(
            """\
            [vkpy.commands]
            hello = vkpy_fake_hello
            broken = vkpy_fake_broken
            notacommand = vkpy_fake_notcommand
            run = vkpy_fake_hello
            """
        )
    )
    (site / "vkpy_fake_hello.py").write_text(
        textwrap.dedent(
            """\
            from vkpy.cli.command import Command

            def run(args):
                print(f"hello, {args.who}")
                return 0

            COMMAND = Command(
                name="hello",
                help="say hello",
                run=run,
                configure=lambda parser: parser.add_argument("who"),
            )
            """
        )
    )
    (site / "vkpy_fake_broken.py").write_text("raise ImportError('a dependency is missing')\n")
    (site / "vkpy_fake_notcommand.py").write_text("COMMAND = 'not a Command'\n")
    env = {"PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])}

    usage = vkpy("--help", env=env)
    assert usage.returncode == 0, usage.stderr
    for name in ("hello", "broken", "notacommand", "usb", "run"):
        assert re.search(rf"^    {name}\b", usage.stdout, re.MULTILINE), name
    assert "(broken plugin command: run it to see why)" in usage.stdout

    hello = vkpy("hello", "world", env=env)
    assert (hello.returncode, hello.stdout) == (0, "hello, world\n")

    broken = vkpy("broken", env=env)
    assert broken.returncode == 1
    assert "error: the plugin command 'broken' is not available" in broken.stderr
    assert (
        "vkpy_fake_broken (from vkpy-fake-commands) failed to load: ImportError: a dependency is missing"
        in (broken.stderr)
    )
    wrong = vkpy("notacommand", env=env)
    assert wrong.returncode == 1
    assert "COMMAND is not a vkpy.cli.command.Command" in wrong.stderr

    # A plugin cannot take over a built-in command, and the others still work.
    assert "hello" not in vkpy("run", "--help", env=env).stdout
    version = vkpy("version", env=env)
    assert version.returncode == 0
    assert version.stdout.strip()
