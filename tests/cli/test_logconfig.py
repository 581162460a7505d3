"""Logging set-up, checked in child processes (it configures process-wide state) on real streams:
a pipe (JSON lines) and a pseudo-terminal (console text)."""

from __future__ import annotations

import json
import os
import pty
import subprocess
import sys
import textwrap

import pytest

_SCRIPT = textwrap.dedent(
    """
    import logging, sys
    import structlog
    from vkpy.logconfig import configure_logging

    log = structlog.get_logger("vkpy.test")
    configure_logging("info", sys.argv[1])
    configure_logging(sys.argv[2], sys.argv[1])  # a second call replaces the first
    log.debug("debug.event", n=1)
    log.info("pod.started", pod="default/p", exit_code=0)
    logging.getLogger("aiohttp.access").info("aiohttp chatter")
    logging.getLogger("asyncssh").warning("asyncssh warns %s", "loudly")
    try:
        1 / 0
    except ZeroDivisionError:
        log.exception("pod.crashed")
    """
)


def _run(fmt: str, level: str) -> list[str]:
    result = subprocess.run(
        [sys.executable, "-c", _SCRIPT, fmt, level], capture_output=True, text=True, timeout=60, check=True
    )
    assert result.stdout == ""  # logs never go to stdout
    return result.stderr.splitlines()


@pytest.mark.parametrize("fmt", ["auto", "json"])
def test_json_lines_when_not_a_terminal(fmt: str) -> None:
    events = [json.loads(line) for line in _run(fmt, "info")]
    assert [e["event"] for e in events] == ["pod.started", "asyncssh warns loudly", "pod.crashed"]
    started = events[0]
    assert started["pod"] == "default/p"
    assert started["exit_code"] == 0
    assert started["level"] == "info"
    assert started["logger"] == "vkpy.test"
    assert started["timestamp"].endswith("Z")
    assert "T" in started["timestamp"]
    assert events[1]["logger"] == "asyncssh"
    assert events[1]["level"] == "warning"
    assert "ZeroDivisionError" in events[2]["exception"]


def test_debug_level_shows_debug_but_keeps_libraries_at_warning() -> None:
    events = [json.loads(line)["event"] for line in _run("json", "debug")]
    assert events == ["debug.event", "pod.started", "asyncssh warns loudly", "pod.crashed"]


def test_error_level_filters() -> None:
    assert [json.loads(line)["event"] for line in _run("json", "error")] == ["pod.crashed"]


def test_console_when_forced() -> None:
    lines = _run("console", "info")
    assert "pod.started" in lines[0]
    assert "pod='default/p'" in lines[0] or "pod=default/p" in lines[0]
    assert not lines[0].startswith("{")


def test_console_on_a_terminal() -> None:
    controller, terminal = pty.openpty()
    try:
        process = subprocess.Popen(
            [sys.executable, "-c", _SCRIPT, "auto", "info"], stdout=subprocess.DEVNULL, stderr=terminal
        )
        os.close(terminal)
        output = b""
        while True:
            try:
                chunk = os.read(controller, 4096)
            except OSError:  # the terminal closes when the child exits
                break
            if not chunk:
                break
            output += chunk
        assert process.wait(timeout=60) == 0
    finally:
        os.close(controller)
    text = output.decode()
    assert "pod.started" in text
    assert '"event"' not in text  # not JSON
    assert "\x1b[" in text  # coloured, as on a terminal


def test_unknown_level_or_format_is_refused() -> None:
    from vkpy.logconfig import configure_logging

    with pytest.raises(ValueError, match="unknown log level"):
        configure_logging("loud")
    with pytest.raises(ValueError, match="unknown log format"):
        configure_logging("info", "xml")
