"""Container log files in the CRI format, and what ``kubectl logs`` prints from them.

A CRI log file holds one record per line::

    2026-11-28T08:00:00.123456789Z stdout F hello

``F`` marks a record that ends a line of output, ``P`` a partial one (a long line split in pieces,
or output that ended without a newline). Any transport that stores container output on disk can
write it with :func:`format_cri_line` and serve ``kubectl logs`` with :func:`read_log_file`.
"""

from __future__ import annotations

import asyncio
import datetime
import os
import re
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import BinaryIO

from vkpy.errors import LogsNotAvailable
from vkpy.types import LogLine, LogOptions

__all__ = [
    "apply_limit_bytes",
    "format_cri_line",
    "format_log_line",
    "format_rfc3339_nano",
    "parse_cri_line",
    "read_log_file",
]

STREAMS = frozenset({"stdout", "stderr"})
_STREAM_NAMES = {name.encode("ascii"): name for name in STREAMS}
FOLLOW_POLL_SECONDS = 0.2
_BLOCK = 64 * 1024

_TIMESTAMP = re.compile(
    rb"(\d{4})-(\d{2})-(\d{2})[Tt](\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?([Zz]|[+-]\d{2}:\d{2})"
)
# What vkpy (see _cri_timestamp) and containerd write: fixed width, nine digits, UTC. Hours stop at 23
# so that no Python version's fromisoformat can read 24:00 as the next midnight.
_FIXED_WIDTH = re.compile(rb"\d{4}-\d\d-\d\dT(?:[01]\d|2[0-3]):\d\d:\d\d\.\d{9}Z")
# The records of one read of a container's output share their timestamp: runs of equal ones are
# the rule, so the last one parsed is kept.
_last_timestamp: tuple[bytes, datetime.datetime | None] = (b"", None)


def _utc(time: datetime.datetime) -> datetime.datetime:
    # A naive datetime is taken as UTC: that is what every vkpy component produces.
    if time.tzinfo is None:
        return time.replace(tzinfo=datetime.UTC)
    return time.astimezone(datetime.UTC)


def _cri_timestamp(time: datetime.datetime) -> bytes:
    # Fixed width (nine fraction digits, as containerd writes) keeps files sortable and greppable.
    t = _utc(time)
    return f"{t:%Y-%m-%dT%H:%M:%S}.{t.microsecond:06d}000Z".encode("ascii")


def format_rfc3339_nano(time: datetime.datetime) -> str:
    """Go's ``time.RFC3339Nano`` in UTC, as the kubelet prints it: trailing fraction zeros dropped."""
    t = _utc(time)
    fraction = f"{t.microsecond:06d}".rstrip("0")
    return f"{t:%Y-%m-%dT%H:%M:%S}{'.' + fraction if fraction else ''}Z"


def format_cri_line(time: datetime.datetime, stream: str, data: bytes) -> bytes:
    """Encode output read at ``time`` as CRI records: one ``F`` record per complete line in
    ``data`` and a ``P`` record for a trailing piece without newline."""
    if stream not in STREAMS:
        raise ValueError(f"stream must be stdout or stderr, not {stream!r}")
    prefix = _cri_timestamp(time) + b" " + stream.encode("ascii")
    pieces = data.split(b"\n")
    records = [prefix + b" F " + piece + b"\n" for piece in pieces[:-1]]
    if pieces[-1]:
        records.append(prefix + b" P " + pieces[-1] + b"\n")
    return b"".join(records)


def _parse_timestamp_general(raw: bytes) -> datetime.datetime | None:
    match = _TIMESTAMP.fullmatch(raw)
    if match is None:
        return None
    year, month, day, hour, minute, second, fraction, zone = match.groups()
    # datetime holds microseconds: further digits are truncated, never rounded up into the next
    # second, so lines keep their order.
    micro = int((fraction or b"0")[:6].ljust(6, b"0"))
    if zone in (b"Z", b"z"):
        tz = datetime.UTC
    else:
        sign = -1 if zone[:1] == b"-" else 1
        offset = datetime.timedelta(hours=int(zone[1:3]), minutes=int(zone[4:6]))
        tz = datetime.timezone(sign * offset)
    try:
        parsed = datetime.datetime(
            int(year), int(month), int(day), int(hour), int(minute), int(second), micro, tzinfo=tz
        )
    except ValueError:
        return None
    return parsed.astimezone(datetime.UTC)


def _parse_timestamp(raw: bytes) -> datetime.datetime | None:
    # Replaced whole, never changed in place: a thread reading it never sees half of an entry.
    global _last_timestamp
    last = _last_timestamp
    if raw == last[0]:
        return last[1]
    if _FIXED_WIDTH.fullmatch(raw) is not None:
        # Less than half the general parse's cost. The pattern is strict, so fromisoformat (lenient
        # about other forms in some Python versions) only ever sees what the general parse accepts;
        # the nanosecond digits are dropped (truncated, as in the general parse).
        try:
            parsed: datetime.datetime | None = datetime.datetime.fromisoformat(
                raw[:26].decode("ascii") + "+00:00"
            )
        except ValueError:
            parsed = None  # a day or month out of range
    else:
        parsed = _parse_timestamp_general(raw)
    _last_timestamp = (raw, parsed)
    return parsed


def parse_cri_line(raw: bytes) -> LogLine | None:
    """Decode one CRI record (with or without its newline); None when it is malformed."""
    if raw.endswith(b"\n"):
        raw = raw[:-1]
    fields = raw.split(b" ", 3)
    if len(fields) < 3:
        return None
    stream = _STREAM_NAMES.get(fields[1])
    tag = fields[2]
    if tag != b"F" and tag != b"P":
        # The tag may carry more ":"-separated flags after F/P in later CRI versions.
        tag = tag.split(b":", 1)[0]
        if tag != b"F" and tag != b"P":
            return None
    if stream is None:
        return None
    time = _parse_timestamp(fields[0])
    if time is None:
        return None
    content = fields[3] if len(fields) == 4 else b""
    return LogLine(time=time, data=content + b"\n" if tag == b"F" else content, stream=stream)


def format_log_line(line: LogLine, timestamps: bool) -> bytes:
    """What ``kubectl logs`` prints for a line: its content, prefixed with the RFC3339Nano time and
    a space when ``timestamps`` is asked."""
    if not timestamps:
        return line.data
    return format_rfc3339_nano(line.time).encode("ascii") + b" " + line.data


async def apply_limit_bytes(lines: AsyncIterator[bytes], limit: int | None) -> AsyncIterator[bytes]:
    """Pass ``lines`` through, cut at exactly ``limit`` bytes in total (None: no limit)."""
    try:
        if limit is None:
            async for chunk in lines:
                yield chunk
            return
        remaining = limit
        if remaining <= 0:
            return
        async for chunk in lines:
            if len(chunk) >= remaining:
                yield chunk[:remaining]
                return
            remaining -= len(chunk)
            yield chunk
    finally:
        # Close the source now: a follow reader would otherwise keep polling its file.
        aclose = getattr(lines, "aclose", None)
        if aclose is not None:
            await aclose()


def _tail_offset(file: BinaryIO, count: int) -> int:
    """The offset of the first of the last ``count`` complete records, reading backwards in blocks
    so that a small tail of a huge file costs a few reads."""
    end = file.seek(0, os.SEEK_END)
    if count <= 0:
        return end
    # Records end with a newline; bytes after the last one are a record still being written and
    # are not counted. The start is just after the (count+1)-th newline from the end.
    newlines_needed = count + 1
    position = end
    while position > 0:
        size = min(_BLOCK, position)
        position -= size
        file.seek(position)
        block = file.read(size)
        index = len(block)
        while True:
            index = block.rfind(b"\n", 0, index)
            if index < 0:
                break
            newlines_needed -= 1
            if newlines_needed == 0:
                return position + index + 1
    return 0


def _read_chunk(file: BinaryIO) -> bytes:
    return file.read(_BLOCK)


def _poll(file: BinaryIO, path: Path) -> tuple[bytes, bool]:
    """New data, and whether ``path`` no longer names the file being read (rotated or removed)."""
    chunk = file.read(_BLOCK)
    if chunk:
        return chunk, False
    try:
        current = os.stat(path)
    except FileNotFoundError:
        return b"", True
    opened = os.fstat(file.fileno())
    return b"", (current.st_ino, current.st_dev) != (opened.st_ino, opened.st_dev)


def _take_records(buffer: bytearray) -> list[bytes]:
    """Remove and return the complete records at the start of ``buffer``; a trailing piece without
    newline (a write in progress) stays for the next read."""
    end = buffer.rfind(b"\n")
    if end < 0:
        return []
    records = bytes(buffer[: end + 1]).split(b"\n")[:-1]
    del buffer[: end + 1]
    return records


async def read_log_file(
    path: Path, options: LogOptions, *, finished: Callable[[], bool]
) -> AsyncIterator[LogLine]:
    """The records of a CRI log file as :class:`LogLine`, honouring ``options.tail_lines`` (counted
    in records, as the kubelet does), ``options.since`` and ``options.follow``.

    Following ends once ``finished()`` is true and the file is read to its end, or when ``path``
    stops naming the file (rotated by a container restart, or deleted with its pod): that file's
    writer is gone. Malformed records are skipped. Raises :class:`LogsNotAvailable` when the file
    does not exist.
    """
    try:
        file = await asyncio.to_thread(open, path, "rb")
    except FileNotFoundError:
        raise LogsNotAvailable(f"log file {path} does not exist") from None
    since = _utc(options.since) if options.since is not None else None
    try:
        if options.tail_lines is not None:
            start = await asyncio.to_thread(_tail_offset, file, options.tail_lines)
            await asyncio.to_thread(file.seek, start)
        buffer = bytearray()
        while True:
            chunk = await asyncio.to_thread(_read_chunk, file)
            if not chunk:
                if not options.follow:
                    return
                # Ask before the last read: output written before the writer finished is then
                # certain to be in the file when we look once more.
                done = finished()
                chunk, rotated = await asyncio.to_thread(_poll, file, path)
                if not chunk:
                    if done or rotated:
                        return
                    await asyncio.sleep(FOLLOW_POLL_SECONDS)
                    continue
            buffer += chunk
            for raw in _take_records(buffer):
                line = parse_cri_line(raw)
                if line is None or (since is not None and line.time < since):
                    continue
                yield line
    finally:
        file.close()
