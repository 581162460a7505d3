"""``vkpy version``."""

from __future__ import annotations

import argparse

import vkpy
from vkpy.cli.command import Command


def _run(args: argparse.Namespace) -> int:
    print(f"vkpy {vkpy.__version__}")
    return 0


COMMAND = Command(name="version", help="print vkpy's version", run=_run)
