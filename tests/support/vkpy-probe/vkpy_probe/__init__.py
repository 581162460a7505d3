"""A device plugin for vkpy's own end-to-end tests.

It records every pod hook call (one JSON line per call in ``$VKPY_PROBE_DIR/<node>.calls``) and then
returns ``DEFER``, so the transport does the real work. Files in ``$VKPY_PROBE_DIR`` inject faults:
``<node>.unreachable`` (its text is the message) makes the device unreachable, and
``<node>.fail-create`` holding a number N fails the next N creates, and ``<node>.capacity`` (JSON)
is the capacity the device reports.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import vkpy
from vkpy import DEFER, DeviceHealth, DeviceUnreachable, NodeHandle, Pod


def _dir() -> Path | None:
    value = os.environ.get("VKPY_PROBE_DIR")
    return Path(value) if value else None


def _record(node: NodeHandle, hook: str, pod: Pod | None = None, **extra: Any) -> None:
    directory = _dir()
    if directory is None:
        return
    entry = {"hook": hook, "time": time.time(), **extra}
    if pod is not None:
        entry.update(uid=pod.uid, pod=pod.key)
    with (directory / f"{node.name}.calls").open("a") as f:
        f.write(json.dumps(entry) + "\n")


def _unreachable(node: NodeHandle) -> str | None:
    directory = _dir()
    flag = directory / f"{node.name}.unreachable" if directory else None
    if flag is not None and flag.exists():
        return flag.read_text().strip() or "probe: device unplugged"
    return None


@vkpy.hookimpl
async def node_health(node: NodeHandle) -> DeviceHealth:
    message = _unreachable(node)
    if message:
        return DeviceHealth(False, "ProbeUnreachable", message)
    return DeviceHealth(True)


@vkpy.hookimpl
async def node_capacity(node: NodeHandle) -> dict[str, str] | None:
    directory = _dir()
    path = directory / f"{node.name}.capacity" if directory else None
    if path is None or not path.exists():
        return None
    return dict(json.loads(path.read_text()))


@vkpy.hookimpl
async def create_pod(node: NodeHandle, pod: Pod) -> object:
    _record(
        node,
        "create_pod",
        pod,
        env=dict(pod.containers[0].env) if pod.containers else {},
        argv=list(pod.containers[0].argv) if pod.containers else [],
    )
    directory = _dir()
    counter = directory / f"{node.name}.fail-create" if directory else None
    if counter is not None and counter.exists():
        left = int(counter.read_text() or "0")
        if left > 0:
            counter.write_text(str(left - 1))
            raise RuntimeError(f"probe: injected create failure ({left - 1} more)")
    return DEFER


@vkpy.hookimpl
async def update_pod(node: NodeHandle, pod: Pod) -> object:
    _record(node, "update_pod", pod, image=pod.containers[0].image if pod.containers else "")
    return DEFER


@vkpy.hookimpl
async def delete_pod(node: NodeHandle, pod: Pod, grace_period_seconds: int) -> object:
    _record(node, "delete_pod", pod, grace=grace_period_seconds)
    return DEFER


@vkpy.hookimpl
async def get_pod_status(node: NodeHandle, pod: Pod) -> object:
    if _unreachable(node):
        raise DeviceUnreachable("probe: device unplugged")
    return DEFER
