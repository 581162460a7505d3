"""What a subcommand is: a name, a one-line help, a function adding its arguments, and a function
running it. Command groups (``vkpy certs issue``) add their own subparsers in ``configure`` and set
``run`` on each with ``parser.set_defaults(run=...)``, which overrides the group's."""

from __future__ import annotations

import argparse
from collections.abc import Callable

import attrs

RunFunction = Callable[[argparse.Namespace], int]


def _no_arguments(parser: argparse.ArgumentParser) -> None:
    """A command without options."""


@attrs.frozen
class Command:
    name: str
    help: str
    run: RunFunction
    configure: Callable[[argparse.ArgumentParser], None] = _no_arguments
