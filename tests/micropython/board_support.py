"""The fake MicroPython board (vkpy_micropython.testing.fake_board) as a separate process on a real
pseudo-terminal: the board holds the master side, vkpy opens the slave path as it opens a USB
serial port. Killing the board hangs the line up, as pulling the cable does."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import tty
import typing
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import structlog
from vkpy_micropython.testing import fake_board

from vkpy import DeviceHealth

# By path, not with -m: the board then imports nothing of vkpy and is up in a few milliseconds.
PROGRAM = fake_board.__file__

T = TypeVar("T")


class FakeBoard:
    def __init__(self, directory: Path, *args: str) -> None:
        self.directory = directory
        self.args = args
        self.log_path = directory / "board.log"
        self.process: subprocess.Popen[bytes] | None = None
        self._slave: int | None = None
        self.path = ""

    def start(self) -> FakeBoard:
        self.directory.mkdir(parents=True, exist_ok=True)
        master, slave = os.openpty()
        tty.setraw(slave)  # before the board's first byte: a cooked pty would echo it back
        self.process = subprocess.Popen(
            [
                sys.executable,
                PROGRAM,
                "--fd",
                str(master),
                "--log",
                str(self.log_path),
                *self.args,
            ],
            pass_fds=(master,),
            stdin=subprocess.DEVNULL,
        )
        os.close(master)
        # Our slave descriptor keeps the pty from vanishing while vkpy reopens it.
        self._slave = slave
        self.path = os.ttyname(slave)
        return self

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill(self) -> None:
        """Pull the plug: the board dies, the line hangs up."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.kill()
        if self._slave is not None:
            with contextlib.suppress(OSError):
                os.close(self._slave)
            self._slave = None

    def log_text(self) -> str:
        try:
            return self.log_path.read_text()
        except FileNotFoundError:
            return ""


StartBoard = Callable[..., FakeBoard]
"""``start_board(*args)``: a fake board process with those options (the fixture of that name)."""


class RecordingNode:
    """The smallest NodeHandle: records health pushes, and calls ``on_report`` for each
    ``report_status`` (the core would ask ``get_pod_status`` then)."""

    def __init__(self, name: str = "mpy-test") -> None:
        self.name = name
        self.transport: Any = None
        self.log = structlog.get_logger("tests.micropython").bind(node=name)
        self.healths: list[DeviceHealth] = [DeviceHealth(True)]
        self.on_report: Callable[[str], None] | None = None

    def report_status(self, pod_uid: str) -> None:
        if self.on_report is not None:
            self.on_report(pod_uid)

    def set_health(self, health: DeviceHealth) -> None:
        self.healths.append(health)


async def eventually(
    probe: Callable[[], Awaitable[T]], check: Callable[[T], bool], timeout: float = 15.0
) -> T:
    """Ask ``probe`` until ``check`` accepts the answer."""
    last: Any = None
    try:
        async with asyncio.timeout(timeout):
            while True:
                last = await probe()
                if check(last):
                    return typing.cast(T, last)
                await asyncio.sleep(0.05)
    except TimeoutError:
        raise AssertionError(f"condition not met in {timeout}s; last answer: {last!r}") from None
