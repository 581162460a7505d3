"""Pieces several commands share: the ``-c`` option and loading the plugins without log noise."""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from vkpy.plugins.loader import PluginRegistry


def default_config_path() -> Path:
    return Path(os.environ.get("VKPY_CONFIG") or "vkpy.yaml")


def add_config_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-c",
        "--config",
        type=Path,
        default=default_config_path(),
        metavar="FILE",
        help="the configuration file (default: $VKPY_CONFIG, else ./vkpy.yaml)",
    )


def load_registry_quietly() -> PluginRegistry:
    """Load the plugins for a command that reports broken plugins itself, without the loader also
    logging each failure."""
    from vkpy.plugins.loader import load_plugins

    loader_log = logging.getLogger("vkpy.plugins")
    previous = loader_log.level
    loader_log.setLevel(logging.CRITICAL)
    try:
        return load_plugins()
    finally:
        loader_log.setLevel(previous)
