"""vkpy.logs: the CRI format, reading log files (tail, since, follow), kubectl output, limits."""

from __future__ import annotations

import asyncio
import datetime
import os
import random
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

import vkpy.logs as vkpy_logs
from vkpy import LogLine, LogOptions, LogsNotAvailable
from vkpy.logs import (
    apply_limit_bytes,
    format_cri_line,
    format_log_line,
    format_rfc3339_nano,
    parse_cri_line,
    read_log_file,
)

UTC = datetime.UTC
T0 = datetime.datetime(2026, 11, 28, 8, 0, 0, 123456, tzinfo=UTC)


def at(seconds: float) -> datetime.datetime:
    return T0 + datetime.timedelta(seconds=seconds)


def write_lines(path: Path, count: int, start: int = 0) -> None:
    with path.open("ab") as f:
        for i in range(start, start + count):
            f.write(format_cri_line(at(i), "stdout", f"line {i}\n".encode()))


async def collect(lines: AsyncIterator[LogLine]) -> list[bytes]:
    return [line.data async for line in lines]


def never() -> bool:
    return False


def always() -> bool:
    return True


# --- format and parse ---------------------------------------------------------------------------


def test_format_cri_line_full_and_partial() -> None:
    assert format_cri_line(T0, "stdout", b"hello\n") == b"2026-11-28T08:00:00.123456000Z stdout F hello\n"
    assert (
        format_cri_line(T0, "stderr", b"no newline")
        == b"2026-11-28T08:00:00.123456000Z stderr P no newline\n"
    )
    assert format_cri_line(T0, "stdout", b"a\nb\npart") == (
        b"2026-11-28T08:00:00.123456000Z stdout F a\n"
        b"2026-11-28T08:00:00.123456000Z stdout F b\n"
        b"2026-11-28T08:00:00.123456000Z stdout P part\n"
    )
    with pytest.raises(ValueError, match="stream"):
        format_cri_line(T0, "stdin", b"x\n")


def test_format_converts_to_utc() -> None:
    paris = datetime.timezone(datetime.timedelta(hours=1))
    local = datetime.datetime(2026, 11, 28, 9, 0, 0, tzinfo=paris)
    assert format_cri_line(local, "stdout", b"x\n").startswith(b"2026-11-28T08:00:00.000000000Z ")


def test_parse_round_trip() -> None:
    for data in (b"hello\n", b"partial", b"\n", b"with spaces  and\ttabs\n"):
        (record,) = format_cri_line(T0, "stderr", data).splitlines(keepends=True)
        line = parse_cri_line(record)
        assert line == LogLine(time=T0, data=data, stream="stderr")


def test_parse_nanoseconds_and_offsets() -> None:
    line = parse_cri_line(b"2026-11-28T08:00:00.123456789Z stdout F hi\n")
    assert line is not None
    assert line.time == datetime.datetime(2026, 11, 28, 8, 0, 0, 123456, tzinfo=UTC)  # truncated, not rounded
    assert line.data == b"hi\n"
    line = parse_cri_line(b"2026-11-28T09:00:00.5+01:00 stdout F x")
    assert line is not None
    assert line.time == datetime.datetime(2026, 11, 28, 8, 0, 0, 500000, tzinfo=UTC)
    line = parse_cri_line(b"2026-11-28T08:00:00Z stdout F:extra x\n")  # later CRI tags
    assert line is not None
    assert line.data == b"x\n"
    line = parse_cri_line(b"2026-11-28T08:00:00Z stdout F \n")
    assert line is not None
    assert line.data == b"\n"


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"garbage\n",
        b"2026-11-28T08:00:00Z stdout\n",
        b"2026-11-28T08:00:00Z stdin F x\n",
        b"2026-11-28T08:00:00Z stdout X x\n",
        b"2026-13-28T08:00:00Z stdout F x\n",
        b"2026-11-28 08:00:00Z stdout F x\n",
        b"2026-11-28T08:00:00.1234567890Z stdout F x\n",
        b"\xff\xfe stdout F x\n",
    ],
)
def test_parse_malformed_returns_none(raw: bytes) -> None:
    assert parse_cri_line(raw) is None


@pytest.mark.parametrize(
    ("stamp", "expected"),
    [
        # The fixed-width form vkpy and containerd write (the fast path) ...
        (b"2026-11-28T08:00:00.123456789Z", datetime.datetime(2026, 11, 28, 8, 0, 0, 123456, tzinfo=UTC)),
        (b"2024-02-29T23:59:59.999999999Z", datetime.datetime(2024, 2, 29, 23, 59, 59, 999999, tzinfo=UTC)),
        (b"0001-01-01T00:00:00.000000000Z", datetime.datetime(1, 1, 1, tzinfo=UTC)),
        (b"2026-02-29T08:00:00.000000000Z", None),
        (b"2026-11-28T24:00:00.000000000Z", None),
        (b"2026-11-28T23:59:60.000000000Z", None),
        (b"0000-11-28T08:00:00.000000000Z", None),
        # ... and what only the general parse takes.
        (b"2026-11-28t08:00:00.123456789z", datetime.datetime(2026, 11, 28, 8, 0, 0, 123456, tzinfo=UTC)),
        (b"2026-11-28T08:00:00.12Z", datetime.datetime(2026, 11, 28, 8, 0, 0, 120000, tzinfo=UTC)),
        (b"2026-11-28T08:00:00Z", datetime.datetime(2026, 11, 28, 8, 0, 0, tzinfo=UTC)),
        (
            b"2026-11-28T08:00:00.123456789-01:30",
            datetime.datetime(2026, 11, 28, 9, 30, 0, 123456, tzinfo=UTC),
        ),
        (b"2026-W48-6T08:00:00.123456789Z", None),
        (b"2026-11-28T08:00:00,123456789Z", None),
        (b"2026-11-28 08:00:00.123456789Z", None),
        (b"2026-11-28T08:00:00.123456789+00:00Z", None),
        ("2026-11-28T08:00:00.12345678\u0669Z".encode(), None),
    ],
)
def test_parse_timestamps(stamp: bytes, expected: datetime.datetime | None) -> None:
    line = parse_cri_line(stamp + b" stdout F x\n")
    if expected is None:
        assert line is None
    else:
        assert line is not None
        assert line.time == expected
        assert line.time.tzinfo is UTC


def test_parse_fast_path_agrees_with_the_general_parse() -> None:
    # The fixed-width form is read by a faster route: it must accept, refuse and compute exactly what
    # the general one does, also for near misses of that form.
    rng = random.Random(7)
    base = b"2026-11-28T08:00:00.123456789Z"
    alphabet = b"0123456789-T:.Zzt +,W\xff"
    stamps = [base]
    for _ in range(20000):
        mutated = bytearray(base)
        for _ in range(rng.randint(1, 3)):
            mutated[rng.randrange(len(mutated))] = rng.choice(alphabet)
        stamps.append(bytes(mutated))
    for stamp in stamps:
        fast = vkpy_logs._parse_timestamp(stamp)
        general = vkpy_logs._parse_timestamp_general(stamp)
        assert fast == general, stamp
        assert fast is None or general is None or fast.tzinfo is general.tzinfo


def test_parse_records_sharing_or_alternating_stamps() -> None:
    # The last stamp parsed is remembered: records of one output read share theirs.
    records = [
        b"2026-11-28T08:00:00.000000001Z stdout F a\n",
        b"2026-11-28T08:00:00.000000001Z stderr F b\n",
        b"2026-11-28T08:00:01.000000001Z stdout F c\n",
        b"2026-11-28T08:00:00.000000001Z stdout F d\n",
        b"2026-13-28T08:00:00.000000001Z stdout F e\n",
        b"2026-13-28T08:00:00.000000001Z stdout F f\n",
        b"2026-11-28T08:00:00.000000001Z stdout F g\n",
    ]
    times = [None if (line := parse_cri_line(raw)) is None else line.time.second for raw in records]
    assert times == [0, 0, 1, 0, None, None, 0]


def test_format_log_line_like_the_kubelet() -> None:
    line = LogLine(time=T0, data=b"hello\n")
    assert format_log_line(line, timestamps=False) == b"hello\n"
    assert format_log_line(line, timestamps=True) == b"2026-11-28T08:00:00.123456Z hello\n"
    whole = LogLine(time=T0.replace(microsecond=0), data=b"x\n")
    assert format_log_line(whole, timestamps=True) == b"2026-11-28T08:00:00Z x\n"
    assert format_rfc3339_nano(T0.replace(microsecond=120000)) == "2026-11-28T08:00:00.12Z"


async def test_apply_limit_bytes_cuts_exactly() -> None:
    async def source() -> AsyncIterator[bytes]:
        for chunk in (b"hello\n", b"world\n", b"again\n"):
            yield chunk

    async def run(limit: int | None) -> bytes:
        return b"".join([c async for c in apply_limit_bytes(source(), limit)])

    assert await run(None) == b"hello\nworld\nagain\n"
    assert await run(8) == b"hello\nwo"
    assert await run(6) == b"hello\n"
    assert await run(1000) == b"hello\nworld\nagain\n"
    assert await run(0) == b""


async def test_apply_limit_bytes_closes_a_following_source(tmp_path: Path) -> None:
    path = tmp_path / "c.log"
    write_lines(path, 5)
    reader = read_log_file(path, LogOptions(follow=True), finished=never)
    texts = (line.data async for line in reader)
    out = b"".join([c async for c in apply_limit_bytes(texts, 10)])
    assert out == b"line 0\nlin"  # and returned although the file is followed forever


# --- read_log_file ------------------------------------------------------------------------------


async def test_read_whole_file_skips_malformed_lines(tmp_path: Path) -> None:
    path = tmp_path / "c.log"
    path.write_bytes(
        format_cri_line(at(0), "stdout", b"one\n")
        + b"this is not a CRI record\n"
        + b"2026-11-28T08:00:00Z stdout Q bad tag\n"
        + format_cri_line(at(1), "stderr", b"two\n")
        + b"\n"
        + format_cri_line(at(2), "stdout", b"three\n")
    )
    lines = [line async for line in read_log_file(path, LogOptions(), finished=always)]
    assert [(line.data, line.stream) for line in lines] == [
        (b"one\n", "stdout"),
        (b"two\n", "stderr"),
        (b"three\n", "stdout"),
    ]


async def test_missing_file_raises_logs_not_available(tmp_path: Path) -> None:
    with pytest.raises(LogsNotAvailable, match="does not exist"):
        await collect(read_log_file(tmp_path / "nope.log", LogOptions(), finished=always))


async def test_tail_and_since(tmp_path: Path) -> None:
    path = tmp_path / "c.log"
    write_lines(path, 100)
    assert await collect(read_log_file(path, LogOptions(tail_lines=3), finished=always)) == [
        b"line 97\n",
        b"line 98\n",
        b"line 99\n",
    ]
    assert await collect(read_log_file(path, LogOptions(tail_lines=0), finished=always)) == []
    assert len(await collect(read_log_file(path, LogOptions(tail_lines=1000), finished=always))) == 100
    assert await collect(read_log_file(path, LogOptions(since=at(98)), finished=always)) == [
        b"line 98\n",
        b"line 99\n",
    ]
    # tail first, then since (as the kubelet does)
    assert await collect(read_log_file(path, LogOptions(tail_lines=5, since=at(97)), finished=always)) == [
        b"line 97\n",
        b"line 98\n",
        b"line 99\n",
    ]


async def test_tail_ignores_a_record_being_written(tmp_path: Path) -> None:
    path = tmp_path / "c.log"
    write_lines(path, 10)
    with path.open("ab") as f:
        f.write(format_cri_line(at(10), "stdout", b"half written\n")[:30])
    assert await collect(read_log_file(path, LogOptions(tail_lines=2), finished=always)) == [
        b"line 8\n",
        b"line 9\n",
    ]


def _bytes_read_by_this_process() -> int:
    with open("/proc/self/io") as io:
        for line in io:
            if line.startswith("rchar:"):
                return int(line.split()[1])
    raise AssertionError("no rchar in /proc/self/io")


async def test_tail_of_a_large_file_reads_only_its_end(tmp_path: Path) -> None:
    path = tmp_path / "big.log"
    write_lines(path, 1000)
    with path.open("ab") as f:
        # 1 GiB of malformed, newline-free data (a sparse hole) in the middle: reading it would be
        # slow, and rchar (bytes read by this process) would show it.
        f.truncate(f.tell() + 1024**3)
        f.seek(0, os.SEEK_END)
        f.write(b"\n")
    write_lines(path, 20, start=1000)
    before = _bytes_read_by_this_process()
    lines = await collect(read_log_file(path, LogOptions(tail_lines=10), finished=always))
    read = _bytes_read_by_this_process() - before
    assert lines == [f"line {i}\n".encode() for i in range(1010, 1020)]
    assert read < 1024 * 1024, f"read {read} bytes for a tail of 10 lines"


async def test_follow_emits_only_complete_records_and_ends_when_finished(tmp_path: Path) -> None:
    path = tmp_path / "c.log"
    write_lines(path, 2)
    done = False
    received: list[bytes] = []

    async def follow() -> None:
        async for line in read_log_file(path, LogOptions(follow=True), finished=lambda: done):
            received.append(line.data)

    task = asyncio.create_task(follow())
    await asyncio.sleep(0.3)
    assert received == [b"line 0\n", b"line 1\n"]
    record = format_cri_line(at(2), "stdout", b"written in two halves\n")
    with path.open("ab") as f:
        f.write(record[:25])
    await asyncio.sleep(0.5)
    assert received == [b"line 0\n", b"line 1\n"]  # nothing half emitted
    with path.open("ab") as f:
        f.write(record[25:])
    await asyncio.sleep(0.5)
    assert received[-1] == b"written in two halves\n"
    # Output written just before the writer finishes is still delivered, then the follow ends.
    write_lines(path, 1, start=3)
    done = True
    await asyncio.wait_for(task, 2)
    assert received[-1] == b"line 3\n"


async def test_follow_ends_when_the_file_is_rotated_or_removed(tmp_path: Path) -> None:
    path = tmp_path / "c.log"
    write_lines(path, 1)
    received: list[bytes] = []

    async def follow() -> None:
        async for line in read_log_file(path, LogOptions(follow=True), finished=never):
            received.append(line.data)

    task = asyncio.create_task(follow())
    await asyncio.sleep(0.3)
    write_lines(path, 1, start=1)
    path.rename(tmp_path / "c.previous.log")
    write_lines(path, 1, start=2)  # a new file under the old name belongs to a new writer
    await asyncio.wait_for(task, 2)
    assert received == [b"line 0\n", b"line 1\n"]

    task = asyncio.create_task(follow())
    await asyncio.sleep(0.3)
    path.unlink()
    await asyncio.wait_for(task, 2)
