"""The ``vkpy`` command line.

Each subcommand lives in its own module exposing ``COMMAND`` (a :class:`vkpy.cli.command.Command`);
adding one means writing that module and naming it in :data:`COMMAND_MODULES`. Modules import their
heavy dependencies inside ``run`` so that ``vkpy version`` stays fast.

Installed plugins add subcommands the same way, through the entry point group ``vkpy.commands``
(``usb = "vkpy_usb.cli"``: the entry point's name is the subcommand, its module exposes
``COMMAND``). Each is loaded on its own: one that fails to import or has no valid ``COMMAND`` does
not break the command line; it becomes a stub that explains the problem when run. A plugin cannot
replace a built-in command (the built-in wins).
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import sys
from collections.abc import Sequence

import vkpy
from vkpy.cli.command import Command
from vkpy.errors import ConfigError, VkpyError
from vkpy.logconfig import configure_logging

COMMAND_MODULES = (
    "vkpy.cli.run",
    "vkpy.cli.check",
    "vkpy.cli.plugins",
    "vkpy.cli.certs",
    "vkpy.cli.version",
)

PLUGIN_COMMAND_GROUP = "vkpy.commands"

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_CONFIG = 2  # also argparse's exit code for a bad command line
EXIT_INTERRUPTED = 130


def builtin_commands() -> list[Command]:
    return [importlib.import_module(name).COMMAND for name in COMMAND_MODULES]


def commands() -> list[Command]:
    """The built-in subcommands, then those of installed plugins."""
    builtin = builtin_commands()
    return builtin + plugin_commands({command.name for command in builtin})


def _broken_command(name: str, problem: str) -> Command:
    def run(_args: argparse.Namespace) -> int:
        print(f"error: the plugin command {name!r} is not available: {problem}", file=sys.stderr)
        return EXIT_FAILURE

    return Command(name=name, help="(broken plugin command: run it to see why)", run=run)


def plugin_commands(taken: set[str]) -> list[Command]:
    """The subcommands of installed plugins (entry point group ``vkpy.commands``), each loaded on
    its own; a broken one is replaced by a stub that reports the problem when run. Names in
    ``taken`` (the built-in commands) cannot be taken over by a plugin."""
    found: dict[str, Command] = {}
    for ep in sorted(importlib.metadata.entry_points(group=PLUGIN_COMMAND_GROUP), key=lambda e: e.name):
        owner = f"{ep.value} (from {ep.dist.name if ep.dist else 'an unknown distribution'})"
        if ep.name in taken:
            continue  # a built-in command wins
        if ep.name in found:
            found[ep.name] = _broken_command(
                ep.name, f"two plugins provide it, one is {owner}; uninstall one"
            )
            continue
        try:
            command = ep.load().COMMAND
        except Exception as exc:  # a broken plugin must not take the command line down
            found[ep.name] = _broken_command(ep.name, f"{owner} failed to load: {type(exc).__name__}: {exc}")
            continue
        if not isinstance(command, Command):
            found[ep.name] = _broken_command(ep.name, f"{owner}: COMMAND is not a vkpy.cli.command.Command")
            continue
        if command.name != ep.name:  # the entry point's name is what the user types
            command = Command(name=ep.name, help=command.help, run=command.run, configure=command.configure)
        found[ep.name] = command
    return list(found.values())


def _add(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser], command: Command, *, plugin: bool
) -> None:
    sub = subparsers.add_parser(command.name, help=command.help, description=command.help)
    sub.set_defaults(run=command.run)
    try:
        command.configure(sub)
    except Exception as exc:
        if not plugin:
            raise
        problem = f"adding its arguments failed: {type(exc).__name__}: {exc}"
        sub.set_defaults(run=_broken_command(command.name, problem).run)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vkpy",
        description="A virtual kubelet: schedule Kubernetes pods onto devices that cannot be nodes.",
    )
    parser.add_argument("--version", action="version", version=f"vkpy {vkpy.__version__}")
    subparsers = parser.add_subparsers(title="commands", metavar="COMMAND")
    builtin = builtin_commands()
    for command in builtin:
        _add(subparsers, command, plugin=False)
    for command in plugin_commands({command.name for command in builtin}):
        _add(subparsers, command, plugin=True)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "run", None) is None:
        parser.print_help(sys.stderr)
        return EXIT_CONFIG
    # Until a command says otherwise, only problems are logged, and never onto stdout.
    configure_logging("warning", "auto")
    try:
        code: int = args.run(args)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return EXIT_CONFIG
    except VkpyError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    return code
