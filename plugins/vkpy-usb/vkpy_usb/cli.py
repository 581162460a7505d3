"""``vkpy usb list``: the USB devices a user could configure as nodes, with what to write in the
node's ``usb:`` section, and whether vkpy may open them. Added to the ``vkpy`` command line through
the ``vkpy.commands`` entry point group; pyusb is imported only when the command runs."""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from typing import TYPE_CHECKING

from vkpy.cli.command import Command

if TYPE_CHECKING:
    from vkpy_usb.discovery import UsbDeviceInfo

_HEADERS = ("PATH", "ID", "SERIAL", "MANUFACTURER", "PRODUCT", "ACCESS", "VKPY INTERFACE")


def _table(rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip() for row in rows
    )


def _interface(info: UsbDeviceInfo) -> str:
    ep = info.endpoints
    if ep is None:
        return "-"
    endpoints = f"in 0x{ep.endpoint_in:02x}, out 0x{ep.endpoint_out:02x}"
    return f"{ep.interface} ({endpoints}, {ep.max_packet_in} B packets)"


def _id_filter(value: str) -> int:
    from vkpy_usb.options import usb_id

    try:
        return usb_id(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _run_list(args: argparse.Namespace) -> int:
    import usb.core

    from vkpy_usb.backend import NO_BACKEND_MESSAGE, resolve_backend
    from vkpy_usb.discovery import list_devices
    from vkpy_usb.errors import NoUsbBackend, udev_rule

    try:
        backend = resolve_backend(args.backend)
        infos = list_devices(backend, vendor_id=args.vendor_id, product_id=args.product_id)
    except usb.core.NoBackendError:
        raise NoUsbBackend(NO_BACKEND_MESSAGE) from None
    if not args.all:
        infos = [i for i in infos if i.endpoints is not None]
    if args.json:
        print(json.dumps({"devices": [i.as_json() for i in infos]}, indent=2))
        return 0
    if not infos:
        what = "USB devices" if args.all else "USB devices with a vendor-specific bulk interface"
        print(f"no {what} found" + ("" if args.all else " (--all lists every device)"))
        return 0
    rows = [_HEADERS] + [
        (
            i.port_path or "-",
            i.ids,
            i.serial_number or "-",
            i.manufacturer or "-",
            i.product or "-",
            "ok" if i.accessible else (i.problem or "no"),
            _interface(i),
        )
        for i in infos
    ]
    print(_table(rows))
    usable = [i for i in infos if i.endpoints is not None]
    if usable:
        first = usable[0]
        pick = (
            f"serial_number: {json.dumps(first.serial_number)}"
            if first.serial_number
            else f'port_path: "{first.port_path}"'
        )
        print(
            f"\nA node for the first one: transport: usb, usb: {{vendor_id: 0x{first.vendor_id:04x}, "
            f"product_id: 0x{first.product_id:04x}, {pick}}}"
        )
    denied = sorted({(i.vendor_id, i.product_id) for i in infos if i.problem == "permission denied"})
    if denied:
        print("\nPermission denied: vkpy cannot open some devices. Give access with udev rules such as")
        for vendor, product in denied:
            print(f"  {udev_rule(vendor, product)}")
        print("in /etc/udev/rules.d/70-vkpy-usb.rules, add the user to plugdev, reload udev and replug.")
    return 0


def _configure(parser: argparse.ArgumentParser) -> None:
    subparsers = parser.add_subparsers(title="commands", metavar="COMMAND")
    listing = subparsers.add_parser(
        "list",
        help="list the USB devices vkpy could use as nodes",
        description="List plugged USB devices: ids, strings, serial number, port path, whether vkpy "
        "may open them, and the vendor interface the usb transport would use.",
    )
    listing.add_argument("--json", action="store_true", help="print a JSON document instead of a table")
    listing.add_argument(
        "--all", action="store_true", help="every device, not only those with a vendor bulk interface"
    )
    listing.add_argument("--vendor-id", type=_id_filter, help="only devices of this vendor id (hex)")
    listing.add_argument("--product-id", type=_id_filter, help="only devices of this product id (hex)")
    listing.add_argument("--backend", help=argparse.SUPPRESS)  # tests: module:attribute of a pyusb backend
    listing.set_defaults(run=_run_list)

    def usage(_args: argparse.Namespace) -> int:
        parser.print_help()
        return 2

    parser.set_defaults(run=usage)


COMMAND = Command(
    name="usb",
    help="USB devices for the usb transport (vkpy usb list)",
    run=lambda _args: 2,
    configure=_configure,
)
