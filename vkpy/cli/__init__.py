"""The ``vkpy`` command line.

Each subcommand lives in its own module exposing ``COMMAND`` (a :class:`vkpy.cli.command.Command`);
adding one means writing that module and naming it in :data:`COMMAND_MODULES`. Modules import their
heavy dependencies inside ``run`` so that ``vkpy version`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
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
    "vkpy.cli.version",
)

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_CONFIG = 2  # also argparse's exit code for a bad command line
EXIT_INTERRUPTED = 130


def commands() -> list[Command]:
    return [importlib.import_module(name).COMMAND for name in COMMAND_MODULES]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vkpy",
        description="A virtual kubelet: schedule Kubernetes pods onto devices that cannot be nodes.",
    )
    parser.add_argument("--version", action="version", version=f"vkpy {vkpy.__version__}")
    subparsers = parser.add_subparsers(title="commands", metavar="COMMAND")
    for command in commands():
        sub = subparsers.add_parser(command.name, help=command.help, description=command.help)
        sub.set_defaults(run=command.run)
        command.configure(sub)
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
