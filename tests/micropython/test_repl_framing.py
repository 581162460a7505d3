"""MicroPython's raw REPL at the byte level: the fake board (a separate process on a real pty) as
the peer, the serial transport's raw channel as the link, and the plugin's REPL client. The exact
byte sequences asserted here are those of MicroPython's docs (reference/repl.rst) and of
shared/runtime/pyexec.c."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
import tty
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from board_support import StartBoard
from conftest import MakeTransport
from vkpy_micropython.repl import RAW_BANNER, BoardNotResponding, RawRepl
from vkpy_serial import RawChannel

# A script whose output proves every byte arrived: the sum of what it carries.
BIG = (
    b"data = [\n"
    + b"".join(b"    %d,  # padding to make the script long enough for many windows\n" % i for i in range(60))
    + b"]\nprint('sum', sum(data), len(data))\n"
)


async def read_exactly(channel: RawChannel, count: int, timeout: float = 5) -> bytes:
    data = b""
    async with asyncio.timeout(timeout):
        while len(data) < count:
            data += await channel.read(count - len(data))
    return data


async def read_until(channel: RawChannel, marker: bytes, timeout: float = 5) -> bytes:
    data = b""
    async with asyncio.timeout(timeout):
        while marker not in data:
            data += await channel.read(1)
    return data


@pytest.fixture
async def channel(start_board: StartBoard, raw_transport: MakeTransport) -> AsyncIterator[RawChannel]:
    board = start_board()
    transport, _ = await raw_transport(board.path)
    async with transport.channel() as held:
        yield held


@contextlib.asynccontextmanager
async def open_channel(raw_transport: MakeTransport, path: str) -> AsyncIterator[RawChannel]:
    transport, _ = await raw_transport(path)
    async with transport.channel() as held:
        yield held


async def settle(channel: RawChannel, end: bytes, quiet: float = 0.3) -> bytes:
    """Everything the board says until it has said ``end`` and then stays quiet for ``quiet`` s."""
    data = b""
    async with asyncio.timeout(10):
        while True:
            try:
                async with asyncio.timeout(quiet):
                    data += await channel.read()
            except TimeoutError:
                if data.endswith(end):
                    return data


async def test_entering_the_raw_repl_and_soft_reset_byte_for_byte(channel: RawChannel) -> None:
    await channel.write(b"\r\x03\x03")
    await settle(channel, b">>> ")  # the board may still be printing its power-up banner
    # From the friendly REPL: a newline, then the raw REPL's banner and prompt.
    await channel.write(b"\x01")
    assert await read_exactly(channel, len(b"\r\n" + RAW_BANNER)) == b"\r\n" + RAW_BANNER
    # Ctrl-A in the raw REPL resets it: the banner again, without the newline.
    await channel.write(b"\x01")
    assert await read_exactly(channel, len(RAW_BANNER)) == RAW_BANNER
    # Ctrl-D on an empty line: a soft reset, back to the raw REPL.
    await channel.write(b"\x04")
    expected = b"OK\r\nMPY: soft reboot\r\n" + RAW_BANNER
    assert await read_exactly(channel, len(expected)) == expected
    # Ctrl-B leaves for the friendly REPL.
    await channel.write(b"\x02")
    assert (await read_until(channel, b">>> ")).startswith(b"\r\nMicroPython v1.")


async def test_the_raw_paste_example_of_micropythons_docs(channel: RawChannel) -> None:
    await RawRepl(channel).enter(soft_reset=False)
    await channel.write(b"\x05A\x01print(123)\x04")
    # Window 128 (MicroPython's default 256-byte buffer), the second window's grant, the end of
    # data acknowledged, the output, the two end markers, the prompt.
    expected = b"R\x01\x80\x00\x01\x04123\r\n\x04\x04>"
    assert await read_exactly(channel, len(expected)) == expected


async def test_the_client_follows_the_raw_paste_window_on_a_board_that_drops_overflow(
    start_board: StartBoard, raw_transport: MakeTransport
) -> None:
    # A 16-byte window and a receive ring that holds two windows and a few bytes: a host that
    # sends ahead of its grants loses bytes.
    board = start_board("--stdin-buffer", "32", "--rx-buffer", "40")
    async with open_channel(raw_transport, board.path) as channel:
        repl = RawRepl(channel)
        await repl.enter()
        output: list[bytes] = []
        outcome = await repl.execute(BIG, output.append)
        assert outcome.error == b""
        assert b"".join(output) == b"sum 1770 60\r\n"
        assert repl.raw_paste is True
        assert f"raw_paste_submission bytes={len(BIG)} window=16" in board.log_text()
        assert "rx_overflow" not in board.log_text()

        # The same bytes sent without waiting for grants overflow the board: the peer is strict.
        await channel.write(b"\x05A\x01")
        assert await read_exactly(channel, 5) == b"R\x01\x10\x00\x01"
        await channel.write(BIG + b"\x04")
        await asyncio.sleep(0.5)
        assert "rx_overflow" in board.log_text()


@pytest.mark.parametrize(
    ("firmware", "answer"),
    [("refuse", "R\\x00, then the prompt"), ("absent", "its banner again: ra + w REPL...")],
)
async def test_boards_without_raw_paste_get_the_code_in_plain_raw_mode(
    start_board: StartBoard, raw_transport: MakeTransport, firmware: str, answer: str
) -> None:
    board = start_board("--raw-paste", firmware)
    async with open_channel(raw_transport, board.path) as channel:
        repl = RawRepl(channel)
        await repl.enter()
        output: list[bytes] = []
        outcome = await repl.execute(BIG, output.append)
        assert (outcome.error, b"".join(output)) == (b"", b"sum 1770 60\r\n"), answer
        assert repl.raw_paste is False  # remembered: the next script goes plain at once
        assert await repl.execute(b"print('again')", output.append) == outcome
        assert board.log_text().count("raw_submission") == 2
        assert "raw_paste_submission" not in board.log_text()


async def test_plain_raw_mode_byte_for_byte(channel: RawChannel) -> None:
    await RawRepl(channel).enter(soft_reset=False)
    await channel.write(b"print('a')\nprint(1/0)\x04")
    expected = (
        b"OKa\r\n\x04Traceback (most recent call last):\r\n"
        b'  File "<stdin>", line 2, in <module>\r\n'
        b"ZeroDivisionError: division by zero\r\n\x04>"
    )
    assert await read_exactly(channel, len(expected)) == expected


async def test_output_streams_while_the_script_runs(channel: RawChannel) -> None:
    repl = RawRepl(channel)
    await repl.enter()
    arrivals: list[tuple[float, bytes]] = []
    started = time.monotonic()
    script = b"import time\nprint('first')\ntime.sleep(1.0)\nprint('second')\n"
    outcome = await repl.execute(script, lambda data: arrivals.append((time.monotonic() - started, data)))
    ended = time.monotonic() - started
    assert outcome.error == b""
    assert b"".join(data for _, data in arrivals) == b"first\r\nsecond\r\n"
    first = next(at for at, data in arrivals if b"first" in data)
    assert first < ended - 0.8  # seen while the script slept, not at its end


async def test_exceptions_come_between_the_end_markers_as_micropython_prints_them(
    channel: RawChannel,
) -> None:
    repl = RawRepl(channel)
    await repl.enter()
    outcome = await repl.execute(b"def check(x):\n    raise ValueError('bad value', x)\n\ncheck(3)\n")
    assert outcome.error == (
        b"Traceback (most recent call last):\r\n"
        b'  File "<stdin>", line 4, in <module>\r\n'
        b'  File "<stdin>", line 2, in check\r\n'
        b"ValueError: ('bad value', 3)\r\n"
    )
    assert outcome.exception == "ValueError: ('bad value', 3)"
    syntax = await repl.execute(b"print('fine')\nprint(\n")
    assert syntax.error == (
        b'Traceback (most recent call last):\r\n  File "<stdin>", line 2\r\nSyntaxError: invalid syntax\r\n'
    )
    # The REPL is usable after both.
    output: list[bytes] = []
    assert (await repl.execute(b"print(6 * 7)", output.append)).error == b""
    assert b"".join(output) == b"42\r\n"


async def test_ctrl_c_raises_keyboard_interrupt_in_the_running_script(channel: RawChannel) -> None:
    repl = RawRepl(channel)
    await repl.enter()
    started = asyncio.Event()

    def seen(data: bytes) -> None:
        if b"tick" in data:
            started.set()

    script = b"import time\nwhile True:\n    print('tick')\n    time.sleep(0.1)\n"
    execution = asyncio.ensure_future(repl.execute(script, seen))
    async with asyncio.timeout(5):
        await started.wait()
    await repl.interrupt()
    async with asyncio.timeout(5):
        outcome = await execution
    assert outcome.error.endswith(b"\r\nKeyboardInterrupt: \r\n")
    assert outcome.exception == "KeyboardInterrupt:"


async def test_entering_interrupts_a_main_py_running_since_power_up(
    start_board: StartBoard, raw_transport: MakeTransport, tmp_path: Path
) -> None:
    main = tmp_path / "main.py"
    main.write_text("import time\nwhile True:\n    print('main.py runs')\n    time.sleep(0.2)\n")
    board = start_board("--main", str(main))
    async with open_channel(raw_transport, board.path) as channel:
        repl = RawRepl(channel)
        await repl.enter()
        output: list[bytes] = []
        await repl.execute(b"print('ours')", output.append)
        assert b"".join(output) == b"ours\r\n"


async def test_a_board_that_ends_the_transfer_early_reports_its_error(
    start_board: StartBoard, raw_transport: MakeTransport
) -> None:
    board = start_board("--max-script", "200")
    async with open_channel(raw_transport, board.path) as channel:
        repl = RawRepl(channel)
        await repl.enter()
        outcome = await repl.execute(BIG)
        assert outcome.exception.startswith("MemoryError: memory allocation failed")
        assert "raw_paste_out_of_memory" in board.log_text()
        output: list[bytes] = []
        assert (await repl.execute(b"print('still here')", output.append)).error == b""
        assert b"".join(output) == b"still here\r\n"


async def test_globals_live_until_a_soft_reset_and_sys_exit_soft_resets(channel: RawChannel) -> None:
    repl = RawRepl(channel)
    await repl.enter()
    output: list[bytes] = []
    await repl.execute(b"kept = 'yes'")
    await repl.execute(b"print(kept)", output.append)
    assert b"".join(output) == b"yes\r\n"
    exited = await repl.execute(b"import sys\nprint('bye')\nsys.exit(3)", output.append)
    assert (exited.error, exited.soft_reset) == (b"", True)
    gone = await repl.execute(b"print(kept)")
    assert gone.exception == "NameError: name 'kept' is not defined"


async def test_a_port_where_no_micropython_answers(raw_transport: MakeTransport) -> None:
    master, slave = os.openpty()  # nobody on the other side of this line
    tty.setraw(slave)
    try:
        async with open_channel(raw_transport, os.ttyname(slave)) as channel:
            with pytest.raises(BoardNotResponding, match="no raw REPL prompt after 2 attempts"):
                await RawRepl(channel, timeout=0.3).enter(attempts=2)
            # What the host sent: Ctrl-C twice and Ctrl-A, per attempt.
            assert os.read(master, 100) == b"\r\x03\x03\r\x01" * 2
    finally:
        os.close(master)
        os.close(slave)
