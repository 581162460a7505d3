"""The contract between the vkpy core and its plugins.

Every pod hook is ``async``. For each pod hook, one implementation answers: the plugin registered
last on the node (a device plugin named in the node's ``plugins:``) is asked first; it answers by
returning anything other than :data:`vkpy.DEFER`, and returning ``DEFER`` (or not implementing the
hook at all) hands the call to the next plugin, down to the node's transport.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Collection, Mapping
from typing import Any

import pluggy

from vkpy.types import DeviceHealth, LogLine, LogOptions, NodeHandle, Pod, PodStatusReport

hookspec = pluggy.HookspecMarker("vkpy")


@hookspec
def register_transports(register: Callable[[str, type[Any]], None]) -> None:
    """At start-up: call ``register(name, TransportClass)`` for each transport this plugin provides."""


@hookspec
async def node_start(node: NodeHandle) -> None:
    """When the node starts, before it is registered: connect to the device."""


@hookspec
async def node_stop(node: NodeHandle) -> None:
    """When vkpy shuts down: close connections, leave work on the device running."""


@hookspec
async def node_capacity(node: NodeHandle) -> Mapping[str, str] | None:
    """The node's capacity as the device reports it (``{"cpu": "4", "pods": "8"}``), or None."""


@hookspec
async def node_health(node: NodeHandle) -> DeviceHealth | None:
    """Polled at every node heartbeat: is the device reachable? None means no opinion."""


@hookspec
async def list_pods(node: NodeHandle) -> Collection[str] | None:
    """Once, when the node's pods are first listed: the UIDs of every pod the device holds, so that
    pods deleted while vkpy was away are deleted there too; None when the device cannot list. (A
    transport that reconnects later reconciles by itself.)"""


@hookspec
async def create_pod(node: NodeHandle, pod: Pod) -> None:
    """Start the pod on the device. Must be idempotent per ``pod.uid``."""


@hookspec
async def update_pod(node: NodeHandle, pod: Pod) -> None:
    """A mutable field of the pod's spec changed (image, activeDeadlineSeconds, ...)."""


@hookspec
async def delete_pod(node: NodeHandle, pod: Pod, grace_period_seconds: int) -> None:
    """Stop the pod: TERM now, KILL after the grace period, then clean up. Return once the request
    is delivered; the core learns the end from ``get_pod_status``. A pod the device does not hold
    is already deleted (no error)."""


@hookspec
async def restart_container(node: NodeHandle, pod: Pod, container_name: str) -> None:
    """Start a terminated container again (the core applies restartPolicy and its backoff)."""


@hookspec
async def get_pod_status(node: NodeHandle, pod: Pod) -> PodStatusReport | None:
    """The pod's container states on the device; None when the device holds no such pod; raise
    DeviceUnreachable when the device cannot be asked."""


@hookspec
async def get_container_logs(
    node: NodeHandle, pod: Pod, container_name: str, options: LogOptions
) -> AsyncIterator[LogLine]:
    """A container's output as log lines, honouring options.follow, previous, tail_lines, since.
    May also be an async generator function."""
    raise NotImplementedError
