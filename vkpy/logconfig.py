"""Logging set-up: structlog events and the standard library's records (aiohttp, asyncssh...) rendered
the same way on stderr, as JSON lines for machines or as aligned text for people."""

from __future__ import annotations

import logging
import sys
import threading
from typing import IO, Any

import structlog
from structlog.typing import Processor

LEVELS = ("debug", "info", "warning", "error", "critical")
FORMATS = ("auto", "json", "console")

# Libraries whose info/debug records are noise next to vkpy's own events.
QUIET_LIBRARIES = ("aiohttp", "asyncssh", "asyncio", "kubernetes_asyncio", "urllib3")


class _VkpyHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Marks the handler this module installs, so that configuring again replaces it."""


class _LineLogger:
    """Writes structlog's rendered events straight to the stream, one line each.

    vkpy's own events skip the standard library's record machinery (a LogRecord, a walk up the
    stack for the caller, the handler chain): that cost 93 us a line against 24 us, and a pod burst
    logs two lines per pod (benchmarks/README.md). The lock is the stdlib handler's, so a library's
    record and a vkpy event never interleave mid-line."""

    def __init__(self, name: str, stream: IO[str], lock: Any) -> None:
        self.name = name
        # The stdlib logger of the same name still decides whether an event is wanted, so that
        # `logging.getLogger("vkpy.plugins").setLevel(...)` quiets vkpy's events as it always did.
        self.levels = logging.getLogger(name)
        self._stream = stream
        self._lock = lock

    def msg(self, message: str) -> None:
        with self._lock:
            self._stream.write(message + "\n")
            self._stream.flush()

    log = debug = info = warn = warning = error = err = critical = exception = fatal = msg


_METHOD_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "warn": logging.WARNING,
    "error": logging.ERROR,
    "err": logging.ERROR,
    "exception": logging.ERROR,
    "critical": logging.CRITICAL,
    "fatal": logging.CRITICAL,
}


def _wanted_by_its_logger(logger: Any, method_name: str, event_dict: Any) -> Any:
    levels = getattr(logger, "levels", None)
    if levels is not None and not levels.isEnabledFor(_METHOD_LEVELS.get(method_name, logging.INFO)):
        raise structlog.DropEvent
    return event_dict


class _LineLoggerFactory:
    def __init__(self, stream: IO[str], lock: Any) -> None:
        self._stream = stream
        self._lock = lock

    def __call__(self, *args: Any) -> _LineLogger:
        return _LineLogger(str(args[0]) if args else "vkpy", self._stream, self._lock)


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
            _wanted_by_its_logger,
            *shared,
            structlog.processors.StackInfoRenderer(),
            *renderer,
        ],
        logger_factory=_LineLoggerFactory(out, handler.lock or threading.RLock()),
        wrapper_class=structlog.make_filtering_bound_logger(numeric_level),
        # Loggers bound before a second call must follow the new set-up, so nothing is cached.
        cache_logger_on_first_use=False,
    )
