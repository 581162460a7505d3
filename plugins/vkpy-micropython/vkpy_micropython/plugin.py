"""The hook implementations: the pods of a node whose transport is ``serial`` in ``mode: raw`` run
as scripts on the MicroPython board behind it; on any other node every pod hook defers."""

from __future__ import annotations

import weakref
from collections.abc import AsyncIterator, Collection

from vkpy_serial import SerialTransport

import vkpy
from vkpy import DEFER, DeviceHealth, LogLine, LogOptions, NodeHandle, Pod

from .board import Board
from .script import script_for

_boards: weakref.WeakKeyDictionary[SerialTransport, Board] = weakref.WeakKeyDictionary()


def board_of(node: NodeHandle) -> Board | None:
    """The node's board, or None when the node's transport is not serial in raw mode."""
    transport = node.transport
    if not isinstance(transport, SerialTransport) or not transport.raw:
        return None
    board = _boards.get(transport)
    if board is None:
        board = _boards[transport] = Board(node, transport)
    return board


@vkpy.hookimpl
async def node_start(node: NodeHandle) -> None:
    if board_of(node) is None:
        node.log.warning(
            "micropython.not_raw_serial",
            why="the micropython plugin needs transport: serial with serial: {mode: raw}; "
            "it leaves this node's pods to its transport",
        )


@vkpy.hookimpl
async def node_stop(node: NodeHandle) -> None:
    board = _boards.pop(node.transport, None) if isinstance(node.transport, SerialTransport) else None
    if board is not None:
        await board.stop()


@vkpy.hookimpl
async def node_health(node: NodeHandle) -> DeviceHealth | None:
    board = board_of(node)
    return None if board is None else await board.health()


@vkpy.hookimpl
async def list_pods(node: NodeHandle) -> Collection[str] | object:
    board = board_of(node)
    return DEFER if board is None else list(board.runs)


@vkpy.hookimpl
async def create_pod(node: NodeHandle, pod: Pod) -> object:
    board = board_of(node)
    if board is None:
        return DEFER
    board.create(pod, script_for(pod))
    return None


@vkpy.hookimpl
async def update_pod(node: NodeHandle, pod: Pod) -> object:
    # A running script cannot change; the image means nothing on a board.
    return DEFER if board_of(node) is None else None


@vkpy.hookimpl
async def delete_pod(node: NodeHandle, pod: Pod, grace_period_seconds: int) -> object:
    board = board_of(node)
    if board is None:
        return DEFER
    board.delete(pod.uid, grace_period_seconds)
    return None


@vkpy.hookimpl
async def restart_container(node: NodeHandle, pod: Pod, container_name: str) -> object:
    board = board_of(node)
    if board is None:
        return DEFER
    board.restart(pod.uid)
    return None


@vkpy.hookimpl
async def get_pod_status(node: NodeHandle, pod: Pod) -> object:
    board = board_of(node)
    return DEFER if board is None else board.status(pod.uid)


@vkpy.hookimpl
async def get_container_logs(
    node: NodeHandle, pod: Pod, container_name: str, options: LogOptions
) -> AsyncIterator[LogLine] | object:
    board = board_of(node)
    return DEFER if board is None else board.logs(pod, container_name, options)
