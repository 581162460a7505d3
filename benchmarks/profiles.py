"""Sampling vkpy with py-spy while a scenario runs, and reading the samples back as hot spots."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import attrs

PY_SPY_RATE = 100


def py_spy() -> str | None:
    beside = Path(sys.executable).parent / "py-spy"
    return str(beside) if beside.exists() else shutil.which("py-spy")


def _spawn_quiet(argv: list[str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL
    )


class Profiler:
    """``async with Profiler(pid, out):`` samples the process into ``out`` (py-spy's raw format:
    one folded stack and its sample count a line). Without a pid or py-spy it does nothing."""

    def __init__(self, pid: int | None, out: Path | None) -> None:
        self.pid = pid
        self.out = out
        self._process: subprocess.Popen[bytes] | None = None

    async def __aenter__(self) -> Profiler:
        binary = py_spy()
        if self.pid is None or self.out is None or binary is None:
            return self
        self.out.parent.mkdir(parents=True, exist_ok=True)
        argv = [
            *(binary, "record", "--pid", str(self.pid), "--rate", str(PY_SPY_RATE)),
            *("--format", "raw", "--output", str(self.out), "--nonblocking"),
        ]
        self._process = await asyncio.to_thread(_spawn_quiet, argv)
        return self

    async def __aexit__(self, *exc: object) -> None:
        process = self._process
        if process is None:
            return
        process.send_signal(signal.SIGINT)  # py-spy writes its file on SIGINT
        try:
            await asyncio.to_thread(process.wait, 30)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await asyncio.to_thread(process.wait)


@attrs.frozen
class HotSpot:
    frame: str
    share: float
    """Fraction of all samples."""


@attrs.frozen
class Profile:
    samples: int
    own: tuple[HotSpot, ...]
    """Functions where the samples were taken (self time)."""
    inclusive: tuple[HotSpot, ...]
    """Functions on the stack (self plus callees), vkpy's own code only."""


def _frames(stack: str) -> list[str]:
    # py-spy raw: "thread (...);outer (file:line);...;inner (file:line) COUNT"; the line numbers
    # are dropped so that one function's samples add up.
    frames = []
    for frame in stack.split(";"):
        function, _, where = frame.partition(" (")
        path = where.rsplit(":", 1)[0] if where else ""
        frames.append(f"{function} ({_short(path)})" if path else function)
    return frames


def _short(path: str) -> str:
    for marker in ("/site-packages/", "/lib/python3"):
        if marker in path:
            return path.split(marker, 1)[1]
    if "/vkpy/" in path:
        return "vkpy/" + path.rsplit("/vkpy/", 1)[1]
    return path


def read_profile(path: Path, top: int = 15) -> Profile | None:
    if not path.exists():
        return None
    own: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    total = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = _frames(stack)
        total += count
        own[frames[-1]] += count
        for frame in set(frames):
            if "(vkpy/" in frame or "vkpy_instant" in frame:
                inclusive[frame] += count
    if total == 0:
        return None
    return Profile(
        samples=total,
        own=tuple(HotSpot(f, n / total) for f, n in own.most_common(top)),
        inclusive=tuple(HotSpot(f, n / total) for f, n in inclusive.most_common(top)),
    )


def render(title: str, profile: Profile) -> str:
    lines = [f"#### Profile: {title} ({profile.samples} samples at {PY_SPY_RATE}/s)", ""]
    lines += ["| self % | function (where the time is spent) |", "|---:|---|"]
    lines += [f"| {h.share * 100:.1f} | `{h.frame}` |" for h in profile.own]
    lines += ["", "| total % | vkpy function (with what it calls) |", "|---:|---|"]
    lines += [f"| {h.share * 100:.1f} | `{h.frame}` |" for h in profile.inclusive]
    return "\n".join(lines) + "\n"
