"""MicroPython's raw REPL, the host's side, as ``mpremote`` and ``pyboard.py`` speak it.

The board's side is ``shared/runtime/pyexec.c`` in MicroPython; the protocol is documented at
https://docs.micropython.org/en/latest/reference/repl.html#raw-mode-and-raw-paste-mode:

* **Enter**: Ctrl-C twice interrupts whatever runs, Ctrl-A enters the raw REPL, which answers
  ``raw REPL; CTRL-B to exit\\r\\n>``. Ctrl-D at that prompt soft-resets the board (a fresh
  interpreter): ``OK\\r\\nMPY: soft reboot\\r\\n`` (``boot.py`` output), then the banner again.
* **Raw-paste submission** (``\\x05A\\x01``): ``R\\x01`` and a 16-bit little-endian window size;
  the host sends at most that many bytes ahead, each ``\\x01`` from the board grants another
  window, a ``\\x04`` from the board ends the transfer early (the host answers ``\\x04``). The host
  ends its data with ``\\x04``; the board acknowledges with ``\\x04`` and runs the code. A board
  that knows the command but not this mode answers ``R\\x00``; firmware older than raw-paste
  takes the Ctrl-A as "enter raw REPL" and prints its banner again (``ra`` + ``w REPL; ...``).
* **Plain raw submission** (the fall-back): the code, ``\\x04``; the board answers ``OK``.
* **Result**: the output, ``\\x04``, the uncaught exception's text (empty without one), ``\\x04``,
  then the ``>`` prompt, or, after ``SystemExit``, a soft reboot and the banner.

:class:`RawRepl` drives this over any :class:`Channel` (the serial transport's raw channel).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Protocol

import attrs

CTRL_A, CTRL_B, CTRL_C, CTRL_D, CTRL_E = b"\x01", b"\x02", b"\x03", b"\x04", b"\x05"
RAW_BANNER = b"raw REPL; CTRL-B to exit\r\n>"
SOFT_REBOOT = b"soft reboot\r\n"
RAW_PASTE = b"\x05A\x01"
PLAIN_CHUNK = 256
PLAIN_PAUSE = 0.01
"""Plain raw mode has no flow control: pyboard.py's pace, 256 bytes every 10 ms."""

__all__ = ["BoardNotResponding", "Channel", "Outcome", "RawRepl", "ReplError"]


class Channel(Protocol):
    """What the REPL needs from the link: the serial transport's ``RawChannel`` is one."""

    def pending(self) -> int: ...

    async def read(self, max_bytes: int = 4096) -> bytes: ...

    async def write(self, data: bytes) -> None: ...

    def discard_input(self) -> int: ...


class ReplError(Exception):
    """The board did not answer as the raw REPL does; the message says what arrived instead."""


class BoardNotResponding(ReplError):
    """No raw REPL prompt came back: no board, not MicroPython, or a script that ignores Ctrl-C."""


@attrs.frozen
class Outcome:
    """How an execution ended."""

    error: bytes = b""
    """The uncaught exception's text as the board printed it (``\\r\\n`` line ends); empty if none."""
    soft_reset: bool = False
    """The code raised ``SystemExit``: the board soft-reset afterwards (MicroPython ignores the
    exit status)."""

    @property
    def exception(self) -> str:
        """The exception's last line (``ValueError: boom``), or ``""``."""
        lines = [line.strip() for line in self.error.decode("utf-8", "replace").splitlines()]
        lines = [line for line in lines if line]
        return lines[-1] if lines else ""


class RawRepl:
    """One conversation with a board's raw REPL over ``channel``.

    ``raw_paste``: None to try raw-paste mode and fall back when the board lacks it (the attribute
    then says what was found, so the caller can remember it per board), False for plain raw mode.
    """

    def __init__(
        self,
        channel: Channel,
        *,
        timeout: float = 2.0,
        reboot_timeout: float = 15.0,
        raw_paste: bool | None = None,
    ) -> None:
        self._ch = channel
        self._data = bytearray()
        self.timeout = timeout
        self.reboot_timeout = reboot_timeout
        self.raw_paste = raw_paste

    # -- reading ---------------------------------------------------------------------------------

    def _waiting(self) -> bool:
        return bool(self._data) or self._ch.pending() > 0

    async def _more(self) -> None:
        self._data += await self._ch.read()

    async def read_until(self, marker: bytes, timeout: float | None) -> bytes:
        """Everything up to and including ``marker``."""
        try:
            async with asyncio.timeout(timeout):
                while (index := self._data.find(marker)) < 0:
                    await self._more()
        except TimeoutError:
            seen = bytes(self._data[-80:])
            raise ReplError(f"expected {marker!r} within {timeout:g}s, got {seen!r}") from None
        end = index + len(marker)
        found = bytes(self._data[:end])
        del self._data[:end]
        return found

    async def read_exactly(self, count: int, timeout: float | None) -> bytes:
        try:
            async with asyncio.timeout(timeout):
                while len(self._data) < count:
                    await self._more()
        except TimeoutError:
            seen = bytes(self._data)
            raise ReplError(f"expected {count} byte(s) within {timeout:g}s, got {seen!r}") from None
        found = bytes(self._data[:count])
        del self._data[:count]
        return found

    # -- the protocol ----------------------------------------------------------------------------

    async def enter(self, *, soft_reset: bool = True, attempts: int = 3) -> None:
        """Interrupt whatever runs and reach the raw REPL prompt; then, with ``soft_reset``, give
        the code that follows a fresh interpreter."""
        problem = "no attempt made"
        for _ in range(attempts):
            # Ctrl-C twice: a script that catches the first KeyboardInterrupt gets a second one.
            await self._ch.write(b"\r" + CTRL_C + CTRL_C)
            await asyncio.sleep(0.05)
            self._data.clear()
            self._ch.discard_input()
            await self._ch.write(b"\r" + CTRL_A)
            try:
                await self.read_until(RAW_BANNER, self.timeout)
                break
            except ReplError as exc:
                problem = str(exc)
        else:
            raise BoardNotResponding(f"no raw REPL prompt after {attempts} attempts: {problem}")
        if soft_reset:
            await self._ch.write(CTRL_D)
            await self.read_until(SOFT_REBOOT, self.timeout)
            await self.read_until(RAW_BANNER, self.reboot_timeout)  # boot.py runs first

    async def execute(
        self,
        code: bytes,
        on_output: Callable[[bytes], None] | None = None,
        on_started: Callable[[], None] | None = None,
    ) -> Outcome:
        """Run ``code`` at the raw REPL prompt; ``on_output`` gets the output as it arrives,
        ``on_started`` is called once the board has all the code. Returns at the next prompt."""
        submitted = False
        if self.raw_paste is not False:
            submitted = await self._submit_raw_paste(code)
        if not submitted:
            await self._submit_plain(code)
        if on_started is not None:
            on_started()
        return await self._follow(on_output)

    async def interrupt(self) -> None:
        """Ctrl-C: a KeyboardInterrupt in the running code."""
        await self._ch.write(CTRL_C)

    async def _submit_raw_paste(self, code: bytes) -> bool:
        await self._ch.write(RAW_PASTE)
        answer = await self.read_exactly(2, self.timeout)
        if answer == b"R\x00":
            # Understood, not supported: the board prints its prompt again.
            await self.read_until(b">", self.timeout)
            self.raw_paste = False
            return False
        if answer != b"R\x01":
            # Firmware older than raw-paste took our Ctrl-A as "enter raw REPL" again.
            self._data[:0] = answer
            await self.read_until(RAW_BANNER, self.timeout)
            self.raw_paste = False
            return False
        self.raw_paste = True
        window = int.from_bytes(await self.read_exactly(2, self.timeout), "little")
        if window == 0:
            raise ReplError("the board announced a raw-paste window of 0 bytes")
        remaining = window
        sent = 0
        while sent < len(code):
            while remaining == 0 or self._waiting():
                byte = await self.read_exactly(1, self.timeout)
                if byte == b"\x01":
                    remaining += window
                elif byte == CTRL_D:
                    # The board ended the transfer (it failed to compile, or ran out of memory):
                    # acknowledge; its error follows as the result.
                    await self._ch.write(CTRL_D)
                    return True
                else:
                    raise ReplError(f"unexpected {byte!r} from the board during raw-paste transfer")
            chunk = code[sent : sent + remaining]
            await self._ch.write(chunk)
            sent += len(chunk)
            remaining -= len(chunk)
        await self._ch.write(CTRL_D)
        # Window grants may still come before the acknowledgement.
        acknowledged = await self.read_until(CTRL_D, self.timeout)
        if acknowledged.strip(b"\x01") != CTRL_D:
            raise ReplError(f"unexpected {acknowledged!r} from the board ending a raw-paste transfer")
        return True

    async def _submit_plain(self, code: bytes) -> None:
        for start in range(0, len(code), PLAIN_CHUNK):
            await self._ch.write(code[start : start + PLAIN_CHUNK])
            await asyncio.sleep(PLAIN_PAUSE)
        await self._ch.write(CTRL_D)
        answer = await self.read_exactly(2, self.timeout)
        if answer != b"OK":
            raise ReplError(f"the board did not accept the code: {answer!r} instead of b'OK'")

    async def _follow(self, on_output: Callable[[bytes], None] | None) -> Outcome:
        # The output has no time limit: the code runs as long as it likes.
        while (index := self._data.find(CTRL_D)) < 0:
            if self._data and on_output is not None:
                on_output(bytes(self._data))
            self._data.clear()
            await self._more()
        if index and on_output is not None:
            on_output(bytes(self._data[:index]))
        del self._data[: index + 1]
        error = (await self.read_until(CTRL_D, self.reboot_timeout))[:-1]
        if await self.read_exactly(1, self.timeout) == b">":
            return Outcome(error=error)
        # SystemExit: the board soft-reset and is back at the raw REPL after boot.py.
        await self.read_until(RAW_BANNER, self.reboot_timeout)
        return Outcome(error=error, soft_reset=True)
