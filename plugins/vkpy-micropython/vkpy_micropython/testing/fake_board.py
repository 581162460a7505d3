"""A fake MicroPython board on a tty: MicroPython's REPL, raw REPL and raw-paste protocol byte for
byte (as ``shared/runtime/pyexec.c`` writes them), running the submitted code with CPython.

It is a peer for testing the ``micropython`` plugin (and anything else that speaks the raw REPL,
``mpremote`` included) without hardware::

    socat -d -d pty,raw,echo=0,link=/tmp/board pty,raw,echo=0,link=/tmp/host &
    python -m vkpy_micropython.testing.fake_board --port /tmp/board &
    # a node with transport: serial, serial: {port: /tmp/host, mode: raw}, plugins: [micropython]

What is faithful: the console bytes of the friendly REPL's control keys (Ctrl-A/B/C/D), the raw
REPL (banner, ``OK``, the ``\\x04`` framing of output and exception, the ``>`` prompt, Ctrl-D soft
reset with ``MPY: soft reboot``, ``SystemExit`` soft-resetting), raw-paste mode (``R\\x01``, the
window size, ``\\x01`` grants, the early ``\\x04`` of a transfer the board ends), Ctrl-C raising
KeyboardInterrupt in running code (and being no input byte then), ``\\n`` written as ``\\r\\n``,
exceptions printed as MicroPython prints them. Options make it an older or a stricter board:

* ``--raw-paste full`` (default), ``refuse`` (answers ``R\\x00``), ``absent`` (firmware older than
  raw-paste: Ctrl-A resets the raw REPL);
* ``--stdin-buffer N``: raw-paste window is N/2 (MicroPython's default N is 256);
* ``--rx-buffer N``: a UART's receive ring of N bytes that drops what overflows it (0, the
  default: a USB link that never drops); overflows are logged, so a test sees a host that ignored
  flow control;
* ``--max-script N``: a raw-paste transfer beyond N bytes fails as a board out of memory does,
  ending the transfer early;
* ``--main FILE``: a ``main.py`` run at power-up, before the REPL (interruptible with Ctrl-C).

What is not: the friendly REPL runs single lines only (no continuation lines, history, paste
mode), there is no file system, and the code is CPython's, not MicroPython's.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import errno
import json
import os
import select
import signal
import subprocess
import sys
import time
import tty
from collections.abc import Callable
from pathlib import Path
from typing import Any

CTRL_A, CTRL_B, CTRL_C, CTRL_D, CTRL_E = 1, 2, 3, 4, 5
BANNER = (
    b"MicroPython v1.24.1 on 2024-11-29; vkpy fake board with CPython\r\n"
    b'Type "help()" for more information.\r\n'
)
RAW_BANNER = b"raw REPL; CTRL-B to exit\r\n"
SOFT_REBOOT = b"MPY: soft reboot\r\n"
VM_PROGRAM = Path(__file__).with_name("_vm.py")
WRITE_TIMEOUT = 2.0
"""A console nobody reads drops output after this, as a USB CDC console without host does."""


def cooked(data: bytes) -> bytes:
    """MicroPython's ``mp_hal_stdout_tx_strn_cooked``: every ``\\n`` goes out as ``\\r\\n``."""
    return data.replace(b"\n", b"\r\n")


class Log:
    def __init__(self, path: str | None) -> None:
        self._file = open(path, "a", buffering=1) if path else sys.stderr  # noqa: SIM115 - lives as long as the board

    def __call__(self, event: str, **fields: Any) -> None:
        extra = "".join(f" {key}={value!r}" for key, value in fields.items())
        self._file.write(f"fake-board: {event}{extra}\n")


class Console:
    """The board's console on a tty: bytes in through a receive ring (filled eagerly, as an
    interrupt handler would), bytes out with a timeout."""

    def __init__(self, fd: int, rx_buffer: int, log: Log) -> None:
        self.fd = fd
        self.ring = bytearray()
        self.capacity = rx_buffer
        self.log = log
        self.dropped = 0
        self.on_interrupt: Callable[[], None] | None = None
        os.set_blocking(fd, False)

    def fill(self) -> None:
        """Move what the tty holds into the ring."""
        try:
            data = os.read(self.fd, 4096)
        except BlockingIOError:
            return
        except OSError as exc:
            if exc.errno != errno.EIO:
                raise
            time.sleep(0.05)  # nobody has the other end open: a board without its host
            return
        if self.on_interrupt is not None and CTRL_C in data:
            # The interrupt character is consumed by the interrupt handler, not queued.
            for _ in range(data.count(CTRL_C)):
                self.on_interrupt()
            data = data.replace(bytes([CTRL_C]), b"")
        if self.capacity:
            room = self.capacity - len(self.ring)
            if len(data) > room:
                self.dropped += len(data) - max(room, 0)
                self.log("rx_overflow", dropped=len(data) - max(room, 0), total=self.dropped)
                data = data[: max(room, 0)]
        self.ring += data

    def wait(self, extra: list[int], timeout: float | None = None) -> list[int]:
        """Block until the tty or one of ``extra`` is readable; fill the ring from the tty."""
        readable, _, _ = select.select([self.fd, *extra], [], [], timeout)
        if self.fd in readable:
            self.fill()
        return [fd for fd in readable if fd != self.fd]

    def read_byte(self) -> int:
        while not self.ring:
            self.wait([])
        byte = self.ring[0]
        del self.ring[0]
        return byte

    def write(self, data: bytes) -> None:
        view = memoryview(data)
        deadline = time.monotonic() + WRITE_TIMEOUT
        while view:
            try:
                view = view[os.write(self.fd, view) :]
            except BlockingIOError:
                if time.monotonic() > deadline:
                    self.log("tx_dropped", bytes=len(view))
                    return
                select.select([], [self.fd], [], 0.05)
            except OSError as exc:
                if exc.errno != errno.EIO:
                    raise
                return  # no host: the output is lost


class Vm:
    """The CPython process that runs the code (see :mod:`vkpy_micropython.testing._vm`)."""

    def __init__(self) -> None:
        code_read, self.code_fd = os.pipe()
        self.result_fd, result_write = os.pipe()
        self.process = subprocess.Popen(
            # Isolated and by path: a soft reset must be quick, so nothing of vkpy is imported.
            [sys.executable, "-I", "-u", str(VM_PROGRAM), str(code_read), str(result_write)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            pass_fds=(code_read, result_write),
        )
        os.close(code_read)
        os.close(result_write)
        assert self.process.stdout is not None
        self.stdout_fd = self.process.stdout.fileno()
        os.set_blocking(self.stdout_fd, False)

    def submit(self, source: bytes, mode: str) -> None:
        body = json.dumps({"mode": mode, "source": base64.b64encode(source).decode()}).encode()
        os.write(self.code_fd, len(body).to_bytes(4, "big"))
        data = memoryview(body)
        while data:
            data = data[os.write(self.code_fd, data) :]

    def result(self) -> dict[str, Any]:
        header = self._read(4)
        if header is None:
            return {"status": "error", "text": "SystemError: the fake board's VM died\n"}
        body = self._read(int.from_bytes(header, "big"))
        return dict(json.loads(body or b"{}"))

    def _read(self, count: int) -> bytes | None:
        data = b""
        while len(data) < count:
            chunk = os.read(self.result_fd, count - len(data))
            if not chunk:
                return None
            data += chunk
        return data

    def output(self) -> bytes:
        try:
            return os.read(self.stdout_fd, 4096)
        except BlockingIOError:
            return b""

    def interrupt(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            self.process.send_signal(signal.SIGINT)

    def give_input(self, data: bytes) -> None:
        if self.process.stdin is not None:
            with contextlib.suppress(OSError):
                self.process.stdin.write(data)
                self.process.stdin.flush()

    def kill(self) -> None:
        self.process.kill()
        self.process.wait()
        for fd in (self.code_fd, self.result_fd):
            with contextlib.suppress(OSError):
                os.close(fd)
        for pipe in (self.process.stdin, self.process.stdout):
            if pipe is not None:
                with contextlib.suppress(OSError):
                    pipe.close()


class FakeBoard:
    def __init__(self, console: Console, args: argparse.Namespace, log: Log) -> None:
        self.console = console
        self.raw_paste = args.raw_paste
        self.stdin_buffer = args.stdin_buffer
        self.max_script = args.max_script
        self.main_py = Path(args.main).read_bytes() if args.main else None
        self.log = log
        self.raw_mode = False
        self.vm = Vm()

    def write(self, data: bytes) -> None:
        self.console.write(data)

    # -- the main loop, as ports' main.c: boot, REPL, soft reset ----------------------------------

    def run(self) -> None:
        self.log("power_up")
        self.run_main()
        while True:
            forced_exit = self.raw_repl() if self.raw_mode else self.friendly_repl()
            if forced_exit:
                self.soft_reset()

    def soft_reset(self) -> None:
        self.write(SOFT_REBOOT)
        self.log("soft_reboot")
        self.vm.kill()
        self.vm = Vm()
        if not self.raw_mode:
            self.run_main()

    def run_main(self) -> None:
        if self.main_py is not None:
            self.log("main_py")
            self.execute(self.main_py, "exec", raw=False)

    # -- execution ---------------------------------------------------------------------------------

    def execute(self, source: bytes, mode: str, *, raw: bool) -> str:
        """Run ``source`` in the VM; output is copied to the console as it comes. Returns the
        status: ``ok``, ``error`` or ``exit`` (SystemExit)."""
        self.vm.submit(source, mode)
        self.console.on_interrupt = self.vm.interrupt
        try:
            while True:
                ready = self.console.wait([self.vm.stdout_fd, self.vm.result_fd])
                if self.vm.stdout_fd in ready:
                    self.write(cooked(self.vm.output()))
                if self.console.ring:
                    # Input for the running code (input(), sys.stdin.read()).
                    self.vm.give_input(bytes(self.console.ring))
                    self.console.ring.clear()
                if self.vm.result_fd in ready:
                    break
        finally:
            self.console.on_interrupt = None
        result = self.vm.result()
        while output := self.vm.output():  # written before the result: all there now
            self.write(cooked(output))
        status = str(result.get("status", "error"))
        text = cooked(str(result.get("text", "")).encode()) if status == "error" else b""
        self.log("executed", mode=mode, raw=raw, status=status, bytes=len(source))
        if raw:
            self.write(b"\x04" + text + b"\x04")
        else:
            self.write(text)
        return status

    # -- the friendly REPL (pyexec_friendly_repl), single lines only -------------------------------

    def friendly_repl(self) -> bool:
        self.write(BANNER)
        while True:
            self.write(b">>> ")
            line = bytearray()
            while True:
                c = self.console.read_byte()
                if c == CTRL_A:
                    self.write(b"\r\n")
                    self.raw_mode = True
                    return False
                if c == CTRL_B:
                    self.write(b"\r\n" + BANNER)
                    break
                if c == CTRL_C:
                    self.write(b"\r\n")
                    break
                if c == CTRL_D and not line:
                    self.write(b"\r\n")
                    return True
                if c == ord("\r"):
                    self.write(b"\r\n")
                    if line and self.execute(bytes(line), "single", raw=False) == "exit":
                        return True
                    break
                if c in (8, 127):
                    if line:
                        line.pop()
                        self.write(b"\x08 \x08")
                elif c >= 32:
                    line.append(c)
                    self.write(bytes([c]))

    # -- the raw REPL (pyexec_raw_repl) ------------------------------------------------------------

    def raw_repl(self) -> bool:
        self.write(RAW_BANNER)
        line = bytearray()
        self.write(b">")
        while True:
            c = self.console.read_byte()
            if c == CTRL_A:
                if self.raw_paste != "absent" and len(line) == 2 and line[0] == CTRL_E:
                    if self.raw_paste_mode(line[1]):
                        return True
                    line.clear()
                    self.write(b">")
                    continue
                self.write(RAW_BANNER)  # reset the raw REPL
                line.clear()
                self.write(b">")
            elif c == CTRL_B:
                self.write(b"\r\n")
                self.raw_mode = False
                return False
            elif c == CTRL_C:
                line.clear()
            elif c == CTRL_D:
                self.write(b"OK")
                if not line:
                    self.write(b"\r\n")
                    return True  # soft reset
                self.log("raw_submission", bytes=len(line))
                if self.execute(bytes(line), "exec", raw=True) == "exit":
                    return True
                line.clear()
                self.write(b">")
            else:
                line.append(c)

    def raw_paste_mode(self, command: int) -> bool:
        """``do_reader_stdin``: receive code with flow control, then run it."""
        if command != ord("A") or self.raw_paste == "refuse":
            self.write(b"R\x00")
            return False
        self.write(b"R\x01")
        window = self.stdin_buffer // 2
        self.write(bytes([window & 0xFF, window >> 8, 0x01]))
        remaining = window
        data = bytearray()
        while True:
            c = self.console.read_byte()
            if c in (CTRL_C, CTRL_D):
                self.write(b"\x04")  # end of data, acknowledged
                if c == CTRL_C:
                    self.write(b"\x04" + cooked(b"KeyboardInterrupt: \n") + b"\x04")
                    return False
                break
            remaining -= 1
            if remaining == 0:
                self.write(b"\x01")  # another window is free
                remaining = window
            data.append(c)
            if self.max_script and len(data) > self.max_script:
                return self.out_of_memory(len(data))
        self.log("raw_paste_submission", bytes=len(data), window=window)
        return self.execute(bytes(data), "exec", raw=True) == "exit"

    def out_of_memory(self, size: int) -> bool:
        """The compiler ran out of memory mid-transfer: the board ends the transfer itself
        (``mp_reader_stdin_close``) and waits for the host's end of data."""
        self.log("raw_paste_out_of_memory", bytes=size)
        self.write(b"\x04")
        while self.console.read_byte() not in (CTRL_C, CTRL_D):
            pass
        error = f"MemoryError: memory allocation failed, allocating {size} bytes\n".encode()
        self.write(b"\x04" + cooked(error) + b"\x04")
        return False


def _open(args: argparse.Namespace) -> int:
    if args.fd is not None:
        return int(args.fd)
    fd = os.open(args.port, os.O_RDWR | os.O_NOCTTY)
    with contextlib.suppress(OSError):
        tty.setraw(fd)
    return fd


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--port", help="the tty to serve the console on (one end of a pty pair)")
    where.add_argument("--fd", type=int, help="an inherited file descriptor of a tty (a pty master)")
    parser.add_argument("--raw-paste", choices=["full", "refuse", "absent"], default="full")
    parser.add_argument("--stdin-buffer", type=int, default=256, help="raw-paste window is half of it")
    parser.add_argument("--rx-buffer", type=int, default=0, help="receive ring size; 0: never drops")
    parser.add_argument("--max-script", type=int, default=0, help="raw-paste bytes before MemoryError")
    parser.add_argument("--main", help="a main.py to run at power-up")
    parser.add_argument("--log", help="append events here instead of stderr")
    args = parser.parse_args(argv)
    if not 2 <= args.stdin_buffer <= 0x1FFFE:
        parser.error("--stdin-buffer must be between 2 and 131070")
    log = Log(args.log)
    board = FakeBoard(Console(_open(args), args.rx_buffer, log), args, log)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        board.run()
    finally:
        board.vm.kill()


if __name__ == "__main__":
    main()
