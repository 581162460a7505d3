"""``vkpy plugins``: what is installed, what each plugin provides, and what failed to load."""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from typing import TYPE_CHECKING

from vkpy.cli.command import Command
from vkpy.cli.common import load_registry_quietly

if TYPE_CHECKING:
    from vkpy.plugins.loader import PluginInfo, PluginRegistry

_HEADERS = ("NAME", "DISTRIBUTION", "VERSION", "TRANSPORTS", "HOOKS")


def _table(rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip() for row in rows
    )


def _hooks(info: PluginInfo, registry: PluginRegistry) -> list[str]:
    """The hooks a plugin answers: its module's, and those of the transport classes it registers."""
    names = set(info.hooks)
    for transport in info.transports:
        cls = registry.transports[transport]
        names.update(attr for attr in dir(cls) if hasattr(getattr(cls, attr, None), "vkpy_impl"))
    names.discard("register_transports")
    return sorted(names)


def _run(args: argparse.Namespace) -> int:
    registry = load_registry_quietly()
    infos = [registry.infos[name] for name in sorted(registry.infos)]
    if args.json:
        document = {
            "plugins": [
                {
                    "name": info.name,
                    "module": info.module,
                    "distribution": info.distribution,
                    "version": info.version,
                    "transports": list(info.transports),
                    "hooks": _hooks(info, registry),
                }
                for info in infos
            ],
            "broken": [{"name": name, "error": error} for name, error in sorted(registry.errors.items())],
        }
        print(json.dumps(document, indent=2))
        return 0
    if infos:
        rows = [_HEADERS] + [
            (
                i.name,
                i.distribution,
                i.version,
                ", ".join(i.transports) or "-",
                ", ".join(_hooks(i, registry)) or "-",
            )
            for i in infos
        ]
        print(_table(rows))
    else:
        print("no plugins installed")
    if registry.errors:
        print("\nbroken plugins:")
        for name, error in sorted(registry.errors.items()):
            print(f"  {name}: {error}")
    return 0


def _configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print a JSON document instead of a table")


COMMAND = Command(name="plugins", help="list the installed plugins", run=_run, configure=_configure)
