"""``vkpy run``: serve every node of the configuration until SIGTERM or SIGINT."""

from __future__ import annotations

import argparse
import asyncio
import importlib
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any

import structlog

from vkpy.cli.command import Command
from vkpy.cli.common import add_config_argument
from vkpy.errors import ConfigError
from vkpy.logconfig import FORMATS, LEVELS, configure_logging

if TYPE_CHECKING:
    from vkpy.config import VkpyConfig
    from vkpy.plugins.loader import PluginRegistry

    RuntimeRun = Callable[[VkpyConfig, PluginRegistry], Coroutine[Any, Any, None]]

log = structlog.get_logger("vkpy.cli")


def _configure(parser: argparse.ArgumentParser) -> None:
    add_config_argument(parser)
    parser.add_argument("--log-level", choices=LEVELS, help="override the file's log.level")
    parser.add_argument("--log-format", choices=FORMATS, help="override the file's log.format")


def _run(args: argparse.Namespace) -> int:
    from vkpy.config import load_config
    from vkpy.plugins.loader import load_plugins

    # Plugins log while loading, before the file says how to log.
    configure_logging(args.log_level or "info", args.log_format or "auto")
    registry = load_plugins()
    config = load_config(args.config, registry)
    configure_logging(args.log_level or config.log.level, args.log_format or config.log.format)
    # Imported here: the runtime pulls in the Kubernetes client, which the other commands do not need.
    runtime_run: RuntimeRun = importlib.import_module("vkpy.runtime").run
    try:
        asyncio.run(runtime_run(config, registry))
    except (ConfigError, KeyboardInterrupt):
        raise
    except Exception as exc:
        # Logged rather than printed: the traceback goes where the operator collects logs (JSON).
        log.exception("vkpy.failed", error=str(exc))
        return 1
    return 0


COMMAND = Command(name="run", help="run the nodes of a configuration file", run=_run, configure=_configure)
