"""The fake board's virtual machine: a CPython process standing in for MicroPython's VM.

The board process (:mod:`vkpy_micropython.testing.fake_board`) starts one per (soft) boot and
sends it code to run; the VM keeps one global namespace until the next soft reset, as MicroPython
does. A small ``micropython`` module is importable (``const``, and ``kbd_intr(-1)`` to ignore
Ctrl-C until the execution ends, as on a board). The code's output goes to this process's stdout
(a pipe the board copies to its console), and the outcome comes back on a result pipe, the
uncaught exception formatted as MicroPython prints it. SIGINT is the board's Ctrl-C: it raises
KeyboardInterrupt in running code only.

Messages on both pipes: a 4-byte big-endian length, then a JSON object.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import sys
import traceback
from types import FrameType, ModuleType
from typing import Any

_HERE = os.path.abspath(__file__)


class _State:
    running = False
    interrupt_char = 3


def _on_interrupt(signum: int, frame: FrameType | None) -> None:
    # MicroPython enables the interrupt character only while code runs.
    if _State.running and _State.interrupt_char == 3:
        raise KeyboardInterrupt


def _micropython_module() -> ModuleType:
    module = ModuleType("micropython")

    def kbd_intr(char: int) -> None:
        _State.interrupt_char = char

    def const(value: Any) -> Any:
        return value

    module.kbd_intr = kbd_intr  # type: ignore[attr-defined]
    module.const = const  # type: ignore[attr-defined]
    return module


def _read_exactly(fd: int, count: int) -> bytes | None:
    data = b""
    while len(data) < count:
        chunk = os.read(fd, count - len(data))
        if not chunk:
            return None
        data += chunk
    return data


def _receive(fd: int) -> dict[str, Any] | None:
    header = _read_exactly(fd, 4)
    if header is None:
        return None
    body = _read_exactly(fd, int.from_bytes(header, "big"))
    return None if body is None else dict(json.loads(body))


def _send(fd: int, message: dict[str, Any]) -> None:
    body = json.dumps(message).encode()
    data = len(body).to_bytes(4, "big") + body
    while data:
        data = data[os.write(fd, data) :]


def micropython_format(exc: BaseException) -> str:
    """The exception as MicroPython's ``mp_obj_print_exception`` prints it (with ``\\n``)."""
    lines: list[str] = []
    if isinstance(exc, SyntaxError) and exc.filename == "<stdin>":
        # The compiler records the line only; MicroPython names no function for it.
        lines.append(f'  File "<stdin>", line {exc.lineno}\n')
        last = "SyntaxError: invalid syntax"
    else:
        for frame in traceback.extract_tb(exc.__traceback__):
            if os.path.abspath(frame.filename) == _HERE:
                continue
            lines.append(f'  File "{frame.filename}", line {frame.lineno}, in {frame.name}\n')
        name = type(exc).__name__
        if isinstance(exc, KeyboardInterrupt):
            last = "KeyboardInterrupt: "  # MicroPython's preallocated instance prints so
        elif exc.args:
            last = f"{name}: {exc}"
        else:
            last = name
    head = ["Traceback (most recent call last):\n"] if lines else []
    return "".join(head + lines) + last + "\n"


def execute(source: bytes, mode: str, namespace: dict[str, Any]) -> dict[str, Any]:
    try:
        try:
            _State.interrupt_char = 3  # each execution starts with Ctrl-C enabled
            _State.running = True
            code = compile(source, "<stdin>", mode)
            exec(code, namespace)  # noqa: S102 - this process exists to run the submitted code
        finally:
            _State.running = False
            sys.stdout.flush()
    except SystemExit:
        return {"status": "exit"}
    except BaseException as exc:  # the VM reports every uncaught exception, as MicroPython does
        return {"status": "error", "text": micropython_format(exc)}
    return {"status": "ok"}


def main() -> None:
    code_fd, result_fd = int(sys.argv[1]), int(sys.argv[2])
    signal.signal(signal.SIGINT, _on_interrupt)
    sys.modules["micropython"] = _micropython_module()
    namespace: dict[str, Any] = {"__name__": "__main__"}
    while (message := _receive(code_fd)) is not None:
        source = base64.b64decode(message["source"])
        result = execute(source, str(message.get("mode", "exec")), namespace)
        _send(result_fd, result)


if __name__ == "__main__":
    main()
