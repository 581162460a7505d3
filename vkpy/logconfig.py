"""Logging set-up: structlog events and the standard library's records (aiohttp, asyncssh...) rendered by
one handler on stderr, as JSON lines for machines or as aligned text for people."""

from __future__ import annotations

import logging
import sys
from typing import IO

import structlog
from structlog.typing import Processor

LEVELS = ("debug", "info", "warning", "error", "critical")
FORMATS = ("auto", "json", "console")

# Libraries whose info/debug records are noise next to vkpy's own events.
QUIET_LIBRARIES = ("aiohttp", "asyncssh", "asyncio", "kubernetes_asyncio", "urllib3")


class _VkpyHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Marks the handler this module installs, so that configuring again replaces it."""


def configure_logging(level: str = "info", fmt: str = "auto", stream: IO[str] | None = None) -> None:
    """Route every log through structlog's renderer on ``stream`` (stderr by default).

    ``fmt`` is ``json``, ``console``, or ``auto``: console on a terminal, JSON otherwise. Calling it
    again replaces the previous set-up (the CLI configures logging once before reading the config
    file and again with the file's settings).
    """
    if level not in LEVELS:
        raise ValueError(f"unknown log level {level!r}; one of {', '.join(LEVELS)}")
    if fmt not in FORMATS:
        raise ValueError(f"unknown log format {fmt!r}; one of {', '.join(FORMATS)}")
    out = stream if stream is not None else sys.stderr
    tty = bool(getattr(out, "isatty", lambda: False)())
    use_json = fmt == "json" or (fmt == "auto" and not tty)
    numeric_level = logging.getLevelNamesMapping()[level.upper()]

    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer: list[Processor] = (
        [structlog.processors.format_exc_info, structlog.processors.JSONRenderer()]
        if use_json
        else [structlog.dev.ConsoleRenderer(colors=tty)]
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *renderer],
    )
    handler = _VkpyHandler(out)
    handler.setFormatter(formatter)

    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _VkpyHandler)]:
        root.removeHandler(old)
        old.close()
    root.addHandler(handler)
    root.setLevel(numeric_level)
    for name in QUIET_LIBRARIES:
        logging.getLogger(name).setLevel(max(logging.WARNING, numeric_level))

    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,
            *shared,
            structlog.processors.StackInfoRenderer(),
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.make_filtering_bound_logger(numeric_level),
        # Loggers bound before a second call must follow the new set-up, so nothing is cached.
        cache_logger_on_first_use=False,
    )
