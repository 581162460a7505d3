"""vkpy-serial: the ``serial`` transport, a Kubernetes node per serial port whose device speaks the
vkpy device protocol, or (``mode: raw``) whose port a device plugin drives itself. Registered
through the ``vkpy`` entry point group as ``serial``.

Configuration and behaviour: docs/transports/serial.md.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from vkpy import hookimpl

from .raw import LinkLost, RawChannel
from .transport import PARITIES, PortError, SerialOptions, SerialTransport, resolve_port

__all__ = [
    "PARITIES",
    "LinkLost",
    "PortError",
    "RawChannel",
    "SerialOptions",
    "SerialTransport",
    "register_transports",
    "resolve_port",
]


@hookimpl
def register_transports(register: Callable[[str, type[Any]], None]) -> None:
    register("serial", SerialTransport)
