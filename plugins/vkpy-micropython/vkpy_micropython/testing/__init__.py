"""Testing without hardware: :mod:`vkpy_micropython.testing.fake_board`, a fake MicroPython board
that speaks the REPL, raw REPL and raw-paste protocol byte for byte on a tty and runs the code with
CPython (``python -m vkpy_micropython.testing.fake_board --port PATH``)."""
