"""``vkpy check``: validate a configuration file against the installed plugins, reporting every issue."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping
from typing import Any

from vkpy.cli.command import Command
from vkpy.cli.common import add_config_argument, load_registry_quietly
from vkpy.errors import ConfigError


def _referenced_plugins(raw: Any) -> set[str]:
    """Plugin names the file may rely on: transports (a transport's plugin is usually named like it)
    and device plugins. A broken plugin outside this set is only a warning."""
    names: set[str] = set()
    nodes = raw.get("nodes") if isinstance(raw, Mapping) else None
    for node in nodes if isinstance(nodes, list) else []:
        if not isinstance(node, Mapping):
            continue
        if isinstance(node.get("transport"), str):
            names.add(node["transport"])
        plugins = node.get("plugins")
        names.update(p for p in plugins if isinstance(p, str)) if isinstance(plugins, list) else None
    return names


def _run(args: argparse.Namespace) -> int:
    from vkpy.config import build_config, read_config_file

    registry = load_registry_quietly()
    try:
        raw = read_config_file(args.config)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 1
    used = _referenced_plugins(raw)
    for name, error in sorted(registry.errors.items()):
        if name not in used:
            print(f"warning: {error}", file=sys.stderr)
    try:
        config = build_config(raw, args.config, registry)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 1
    nodes = ", ".join(f"{node.name} ({node.transport})" for node in config.nodes)
    print(f"ok: {len(config.nodes)} node(s): {nodes}")
    return 0


def _configure(parser: argparse.ArgumentParser) -> None:
    add_config_argument(parser)


COMMAND = Command(
    name="check",
    help="validate a configuration file against the installed plugins",
    run=_run,
    configure=_configure,
)
