"""The output of one run of a script, kept in memory as log lines stamped when they arrived, and read
back for ``kubectl logs`` with ``--follow``, ``--tail`` and ``--since``.

The board's console ends lines with ``\\r\\n``; lines are stored with ``\\n`` as a container's are.
A run keeps at most :data:`LIMIT_BYTES`; older lines are dropped first.
"""

from __future__ import annotations

import asyncio
import collections
import datetime
from collections.abc import AsyncIterator

from vkpy import LogLine, LogOptions

LIMIT_BYTES = 1 << 20
LONGEST_LINE = 16 * 1024
"""A line longer than this is cut into pieces (a script printing without newlines)."""

__all__ = ["LIMIT_BYTES", "RunLog"]


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


class RunLog:
    """The lines of one run; :meth:`feed` while it runs, :meth:`close` when it ended."""

    def __init__(self, limit_bytes: int = LIMIT_BYTES) -> None:
        self._lines: collections.deque[LogLine] = collections.deque()
        self._first = 0  # the number of the oldest line kept: lines dropped before it
        self._size = 0
        self._limit = limit_bytes
        self._partial: dict[str, bytearray] = {"stdout": bytearray(), "stderr": bytearray()}
        self._changed = asyncio.Event()
        self.closed = False

    def feed(self, data: bytes, stream: str = "stdout") -> None:
        """Output as it arrived; complete lines become log lines now."""
        partial = self._partial[stream]
        partial += data
        now = _now()
        while (end := partial.find(b"\n")) >= 0:
            self._add(LogLine(time=now, data=bytes(partial[:end]).rstrip(b"\r") + b"\n", stream=stream))
            del partial[: end + 1]
        while len(partial) > LONGEST_LINE:
            self._add(LogLine(time=now, data=bytes(partial[:LONGEST_LINE]), stream=stream))
            del partial[:LONGEST_LINE]

    def close(self) -> None:
        """The run ended: what is left of a last line without newline becomes a line."""
        for stream, partial in self._partial.items():
            if partial.strip(b"\r"):
                self._add(LogLine(time=_now(), data=bytes(partial).rstrip(b"\r"), stream=stream))
            partial.clear()
        self.closed = True
        self._wake()

    def _add(self, line: LogLine) -> None:
        self._lines.append(line)
        self._size += len(line.data)
        while self._size > self._limit and len(self._lines) > 1:
            self._size -= len(self._lines.popleft().data)
            self._first += 1
        self._wake()

    def _wake(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def read(self, options: LogOptions) -> AsyncIterator[LogLine]:
        """The lines as ``kubectl logs`` asks for them; with ``follow``, until the run ends."""
        since = options.since
        if since is not None and since.tzinfo is None:
            since = since.replace(tzinfo=datetime.UTC)
        end = self._first + len(self._lines)
        number = self._first
        if options.tail_lines is not None:
            number = max(self._first, end - options.tail_lines)
        while True:
            number = max(number, self._first)  # lines dropped meanwhile are gone
            while number < self._first + len(self._lines):
                line = self._lines[number - self._first]
                number += 1
                if since is None or line.time >= since:
                    yield line
            if not options.follow or self.closed:
                return
            await self._changed.wait()
