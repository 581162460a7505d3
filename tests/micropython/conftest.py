"""Fixtures of the micropython plugin's tests: fake boards on real ptys, and SerialTransport
instances in raw mode driven in-process."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from board_support import FakeBoard, RecordingNode, StartBoard
from vkpy_serial import SerialOptions, SerialTransport


@pytest.fixture
def start_board(tmp_path: Path) -> Iterator[StartBoard]:
    boards: list[FakeBoard] = []

    def start(*args: str) -> FakeBoard:
        board = FakeBoard(tmp_path / f"board-{len(boards)}", *args).start()
        boards.append(board)
        return board

    yield start
    for board in boards:
        board.stop()


MakeTransport = Callable[..., Awaitable[tuple[SerialTransport, RecordingNode]]]


@pytest.fixture
async def raw_transport() -> AsyncIterator[MakeTransport]:
    """``await raw_transport(path, **options)``: a started SerialTransport in raw mode."""
    started: list[tuple[SerialTransport, RecordingNode]] = []

    async def make(
        path: str, name: str = "mpy-test", **options: Any
    ) -> tuple[SerialTransport, RecordingNode]:
        options.setdefault("reconnect_initial", 0.1)
        options.setdefault("reconnect_max", 0.5)
        node = RecordingNode(name)
        transport = SerialTransport(node, SerialOptions(port=path, mode="raw", **options))
        node.transport = transport
        await transport.node_start(node)
        started.append((transport, node))
        return transport, node

    yield make
    for transport, node in started:
        await transport.node_stop(node)
