"""vkpy-micropython: run a pod's script on a MicroPython board over a serial line.

A device plugin (entry point ``micropython`` in the group ``vkpy``) for nodes whose transport is
``serial`` in ``mode: raw``::

    nodes:
      - name: pico-1
        transport: serial
        serial: {port: /dev/serial/by-id/usb-MicroPython_Board_in_FS_mode_e6614c311b7e6f35-if00, mode: raw}
        plugins: [micropython]

It speaks MicroPython's raw REPL (raw-paste mode where the firmware has it), as ``mpremote`` does:
no firmware of our own on the board. Pods, logs, deletion and the one-script-at-a-time rule:
docs/transports/micropython.md.
"""

from __future__ import annotations

from .plugin import (
    create_pod,
    delete_pod,
    get_container_logs,
    get_pod_status,
    list_pods,
    node_health,
    node_start,
    node_stop,
    restart_container,
    update_pod,
)

__all__ = [
    "create_pod",
    "delete_pod",
    "get_container_logs",
    "get_pod_status",
    "list_pods",
    "node_health",
    "node_start",
    "node_stop",
    "restart_container",
    "update_pod",
]
