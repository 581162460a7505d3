"""CPU time and resident memory of processes, read from /proc (Linux only, no dependency)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Callable, Iterable

import attrs

_TICKS = os.sysconf("SC_CLK_TCK")
_PAGE = os.sysconf("SC_PAGE_SIZE")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time the process has used so far (0 once it is gone)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
    except OSError:
        return 0.0
    # After the command name: state is field 3, utime and stime are fields 14 and 15.
    return (int(fields[11]) + int(fields[12])) / _TICKS


def rss_bytes(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/statm", "rb") as f:
            return int(f.read().split()[1]) * _PAGE
    except (OSError, IndexError, ValueError):
        return 0


def load_average() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f}, {five:.2f}, {fifteen:.2f}"


@attrs.define
class Usage:
    """What a group of processes used over a window."""

    seconds: float = 0.0
    cpu_seconds: float = 0.0
    rss_peak: int = 0
    rss_last: int = 0
    samples: int = 0

    @property
    def cores(self) -> float:
        return self.cpu_seconds / self.seconds if self.seconds > 0 else 0.0


class Sampler:
    """Samples the summed RSS of ``pids()`` every ``interval`` seconds while running, and their CPU
    time at start and stop. Use as ``async with Sampler(...) as s: ...; s.usage``."""

    def __init__(self, pids: Callable[[], Iterable[int]], interval: float = 1.0) -> None:
        self._pids = pids
        self.interval = interval
        self.usage = Usage()
        self._task: asyncio.Task[None] | None = None
        self._start_cpu = 0.0
        self._start = 0.0

    def _cpu(self) -> float:
        return sum(cpu_seconds(p) for p in self._pids())

    def _rss(self) -> int:
        return sum(rss_bytes(p) for p in self._pids())

    def _sample(self) -> None:
        rss = self._rss()
        self.usage.rss_last = rss
        self.usage.rss_peak = max(self.usage.rss_peak, rss)
        self.usage.samples += 1

    async def _loop(self) -> None:
        while True:
            self._sample()
            await asyncio.sleep(self.interval)

    async def __aenter__(self) -> Sampler:
        self._start = time.monotonic()
        self._start_cpu = self._cpu()
        self._task = asyncio.create_task(self._loop())
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._sample()
        self.usage.seconds = time.monotonic() - self._start
        self.usage.cpu_seconds = self._cpu() - self._start_cpu
