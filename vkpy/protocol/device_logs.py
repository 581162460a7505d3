"""A container's log on a protocol device, as Kubernetes log lines: tail, since, follow, previous.

A device keeps each container's output as raw bytes in a bounded buffer, addressed by offset
(docs/protocol.md section 9), without timestamps. This module turns offset reads into
:class:`vkpy.LogLine` values:

* **tail_lines** reads backwards from the end in chunks until it holds enough lines, so a short
  tail of a large buffer costs a few small requests.
* **follow** polls by offset (nothing is lost across a reconnect: the next read starts where the
  last one ended) and wakes early when the device pushes an event for the pod. It ends when the
  device says ``eof``, when the pod or the instance goes away, or when the reader is closed.
* **time**: lines are stamped when vkpy first reads them (remembered per instance in
  :class:`LogMarks`, so a later read of the same bytes gets the same, earlier time) and clamped
  into the container's run (``started_at``..``finished_at``). A line read while the container runs
  is stamped within one poll of being written; output read only after the container ended is
  stamped at most at its end. ``since`` filters on these stamps.
* bytes the device discarded before they were read are shown as one marker line.
"""

from __future__ import annotations

import asyncio
import bisect
import datetime
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import attrs

from vkpy.errors import DeviceUnreachable, LogsNotAvailable
from vkpy.types import LogLine, LogOptions

from .messages import LogsReply

PAST_THE_END = 2**53 - 1
"""An offset beyond any log: the reply carries no data but tells ``earliest`` and ``end``."""
MAX_MARKS = 1024
PARTIAL_FLUSH_SECONDS = 1.0
"""A line without its newline is passed on after this long (a prompt, a progress bar)."""
MAX_LINE = 16 * 1024
"""Longer lines are passed on in pieces of this size, as the kubelet's CRI log does."""
POLL_MIN = 0.1
POLL_MAX = 1.0

Fetch = Callable[[int, int], Awaitable[LogsReply]]
"""``fetch(offset, max_bytes)``: one ``logs`` request. Raises LogsNotAvailable when the pod or
container is gone, DeviceUnreachable when the device cannot be asked."""


def _utc_now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


@attrs.define
class LogMarks:
    """When vkpy first read each stretch of one container instance's log.

    ``offsets[i]`` is the first byte of a stretch first read at ``times[i]``; the stretch ends at
    the next mark (the last one at ``seen_end``). Bounded: beyond :data:`MAX_MARKS` every other mark
    is dropped, which keeps coverage and coarsens the resolution.
    """

    offsets: list[int] = attrs.Factory(list)
    times: list[datetime.datetime] = attrs.Factory(list)
    seen_end: int = 0

    def record(self, start: int, end: int, when: datetime.datetime) -> None:
        if end <= self.seen_end:
            return
        first = max(start, self.seen_end)
        if self.offsets and self.times[-1] == when and first == self.seen_end:
            self.seen_end = end  # the same read continued: one mark is enough
            return
        self.offsets.append(first)
        self.times.append(when)
        self.seen_end = end
        if len(self.offsets) > MAX_MARKS:
            self.offsets = self.offsets[::2]
            self.times = self.times[::2]

    def time_of(self, offset: int) -> datetime.datetime | None:
        """When the byte at ``offset`` was first read, if it was."""
        if offset >= self.seen_end:
            return None
        index = bisect.bisect_right(self.offsets, offset) - 1
        return self.times[index] if index >= 0 else None


def split_lines(data: bytes) -> list[bytes]:
    """``data`` cut after each ``\\n`` (kept); a last piece without newline is kept too. Only
    ``\\n`` ends a line (``bytes.splitlines`` would also cut at ``\\r`` and form feeds)."""
    pieces = data.split(b"\n")
    lines = [piece + b"\n" for piece in pieces[:-1]]
    if pieces[-1]:
        lines.append(pieces[-1])
    return lines


@attrs.define
class LineAssembler:
    """Collects bytes into lines; each line comes with the offset of its last byte."""

    offset: int
    """The offset of the first byte held in ``buffer``."""
    buffer: bytearray = attrs.Factory(bytearray)
    pending_since: float | None = None

    def feed(self, data: bytes) -> list[tuple[bytes, int]]:
        if not data:
            return []
        if not self.buffer:
            self.pending_since = time.monotonic()
        self.buffer += data
        out: list[tuple[bytes, int]] = []
        while True:
            cut = self.buffer.find(b"\n")
            if cut < 0:
                if len(self.buffer) >= MAX_LINE:
                    cut = MAX_LINE - 1
                else:
                    break
            line = bytes(self.buffer[: cut + 1])
            del self.buffer[: cut + 1]
            out.append((line, self.offset + cut))
            self.offset += cut + 1
        self.pending_since = time.monotonic() if self.buffer else None
        return out

    def flush(self) -> tuple[bytes, int] | None:
        """The incomplete line held, if any, as a line of its own."""
        if not self.buffer:
            return None
        line = bytes(self.buffer)
        self.buffer.clear()
        self.pending_since = None
        end = self.offset + len(line) - 1
        self.offset += len(line)
        return line, end

    def skip_to(self, offset: int) -> None:
        """Bytes up to ``offset`` were lost: what is held cannot be continued."""
        self.buffer.clear()
        self.pending_since = None
        self.offset = offset

    def overdue(self) -> bool:
        since = self.pending_since
        return since is not None and time.monotonic() - since >= PARTIAL_FLUSH_SECONDS


@attrs.define
class LogWindow:
    """The run of the container instance: line times are clamped into it."""

    started_at: datetime.datetime | None = None
    finished_at: datetime.datetime | None = None

    def clamp(self, when: datetime.datetime) -> datetime.datetime:
        if self.finished_at is not None and when > self.finished_at:
            when = self.finished_at
        if self.started_at is not None and when < self.started_at:
            when = self.started_at
        return when


def lost_notice(count: int) -> bytes:
    return (
        f"[vkpy: {count} bytes of output lost: the device's log buffer overflowed before they were read]\n"
    ).encode()


class LogReader:
    """Reads one container instance's log; see the module docstring.

    ``marks_for(restarts)`` gives the :class:`LogMarks` of an instance (``restarts`` None for
    devices without instances). ``wait_news(timeout)`` returns when the device pushed something
    about the pod, or after ``timeout``. ``wait_link()`` returns once the device is reachable again.
    """

    def __init__(
        self,
        fetch: Fetch,
        options: LogOptions,
        *,
        marks_for: Callable[[int | None], LogMarks],
        wait_news: Callable[[float], Awaitable[None]],
        wait_link: Callable[[], Awaitable[None]],
        window: LogWindow | None = None,
        chunk: int = 512,
        bulk_chunk: int = 2048,
    ) -> None:
        self.fetch = fetch
        self.options = options
        self.marks_for = marks_for
        self.wait_news = wait_news
        self.wait_link = wait_link
        self.window = window or LogWindow()
        self.chunk = chunk
        self.bulk_chunk = bulk_chunk
        self._instance: int | None = None
        self._marks: LogMarks | None = None
        self._offset = 0
        self._done = False
        self._assembler = LineAssembler(0)

    async def lines(self) -> AsyncIterator[LogLine]:
        since = self.options.since
        for line in await self._tail():
            if since is None or line.time >= since:
                yield line
        if self._done:
            return
        async for line in self._forward():
            if since is None or line.time >= since:
                yield line

    async def _read(self, offset: int, max_bytes: int) -> tuple[LogsReply, datetime.datetime]:
        reply = await self.fetch(offset, max_bytes)
        when = _utc_now()
        if self._marks is None:
            self._instance = reply.restarts
            self._marks = self.marks_for(reply.restarts)
        return reply, when

    def _line(self, data: bytes, last_byte: int, default: datetime.datetime) -> LogLine:
        seen = self._marks.time_of(last_byte) if self._marks is not None else None
        return LogLine(time=self.window.clamp(seen or default), data=data)

    async def _tail(self) -> list[LogLine]:
        """The last ``tail_lines`` lines (nothing without ``tail_lines``: reading starts at 0)."""
        tail = self.options.tail_lines
        if tail is None:
            return []
        probe, when = await self._read(PAST_THE_END, 1)
        start, data = await self._backwards(probe.earliest, probe.end, tail)
        assert self._marks is not None
        self._marks.record(start, probe.end, when)
        self._offset = probe.end
        self._assembler = LineAssembler(probe.end)
        pieces = split_lines(data)[-tail:] if tail > 0 else []
        position = probe.end - sum(len(piece) for piece in pieces)
        out: list[LogLine] = []
        for index, piece in enumerate(pieces):
            last_piece = index == len(pieces) - 1
            if last_piece and not piece.endswith(b"\n") and self.options.follow and not probe.eof:
                # The last line is still being written: the rest of it joins it when it comes.
                self._assembler = LineAssembler(position)
                self._assembler.feed(piece)
                break
            out.append(self._line(piece, position + len(piece) - 1, when))
            position += len(piece)
        self._done = not self.options.follow or probe.eof
        return out

    async def _backwards(self, earliest: int, end: int, count: int) -> tuple[int, bytes]:
        """Bytes ``[start, end)`` holding more than ``count`` newlines, or all the device holds."""
        position = end
        data = b""
        while count > 0 and position > earliest and data.count(b"\n") <= count:
            start = max(earliest, position - self.bulk_chunk)
            got_start, got = await self._range(start, position)
            data = got + data
            if got_start > start:  # discarded meanwhile: nothing older is left
                return got_start, data
            position = start
        return position, data

    async def _range(self, start: int, stop: int) -> tuple[int, bytes]:
        """The bytes ``[start, stop)`` (a device may answer a request with fewer bytes than asked)."""
        first: int | None = None
        data = bytearray()
        offset = start
        while offset < stop:
            reply, _ = await self._read(offset, min(self.bulk_chunk, stop - offset))
            if first is None:
                first = reply.offset
            elif reply.offset > offset:  # lost in the middle: keep only the newest run
                first = reply.offset
                data.clear()
            data += reply.data[: max(0, stop - reply.offset)]
            if not reply.data:
                break
            offset = reply.next_offset
        return (first if first is not None else start), bytes(data)

    async def _forward(self) -> AsyncIterator[LogLine]:
        assembler = self._assembler
        follow = self.options.follow
        chunk = self.chunk if follow else self.bulk_chunk
        idle = POLL_MIN
        first = self._marks is None
        while True:
            try:
                reply, when = await self._read(self._offset, chunk)
            except LogsNotAvailable:
                if first:
                    raise
                break  # the pod or the container went away: its log ends here
            except DeviceUnreachable:
                if not follow:
                    raise
                await self.wait_link()
                continue
            first = False
            if self._instance is not None and reply.restarts is not None and reply.restarts != self._instance:
                break  # restarted: the instance followed so far is over
            if reply.offset > self._offset:
                pending = assembler.flush()
                if pending is not None:
                    yield self._line(*pending, when)
                assembler.skip_to(reply.offset)
                yield LogLine(time=self.window.clamp(when), data=lost_notice(reply.offset - self._offset))
            assert self._marks is not None
            self._marks.record(reply.offset, reply.next_offset, when)
            for data, last in assembler.feed(reply.data):
                yield self._line(data, last, when)
            self._offset = reply.next_offset
            if reply.eof:
                break
            if reply.next_offset < reply.end:
                idle = POLL_MIN
                continue
            if not follow:
                break
            if assembler.overdue():
                pending = assembler.flush()
                if pending is not None:
                    yield self._line(*pending, when)
            idle = POLL_MIN if reply.data else min(POLL_MAX, idle * 2)
            await self.wait_news(idle)
        pending = assembler.flush()
        if pending is not None:
            yield self._line(*pending, _utc_now())


async def wait_or_timeout(event: asyncio.Event, timeout: float) -> None:
    """Wait for ``event`` at most ``timeout`` seconds, then clear it."""
    try:
        async with asyncio.timeout(timeout):
            await event.wait()
    except TimeoutError:
        pass
    event.clear()
