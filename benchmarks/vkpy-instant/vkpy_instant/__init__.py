"""The ``instant`` transport: a device that does no work, so a benchmark measures vkpy alone.

``create_pod`` records every container as Running at once and ``get_pod_status`` answers from
memory; ``delete_pod`` forgets the pod. A pod annotated ``vkpy-instant/exit-after: "<seconds>"``
has its containers end with exit code 0 after that many seconds, pushed to the core with
``report_status`` (a pod lifecycle through Succeeded, with no polling).
"""

from __future__ import annotations

import asyncio
import datetime
from collections.abc import Callable, Collection, Mapping
from typing import Any

import attrs

import vkpy
from vkpy import NodeHandle, Pod, PodStatusReport, Running, Terminated, Transport

EXIT_AFTER_ANNOTATION = "vkpy-instant/exit-after"


@attrs.frozen
class InstantOptions:
    """The node's ``instant:`` section."""

    pods: int = attrs.field(default=110, validator=attrs.validators.gt(0))
    """The pod capacity the device reports."""


@vkpy.hookimpl
def register_transports(register: Callable[[str, type[Any]], None]) -> None:
    register("instant", InstantTransport)


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


class InstantTransport(Transport):
    """One in-memory "device" per node: a dict of pod reports."""

    options_class = InstantOptions

    def __init__(self, node: NodeHandle, options: InstantOptions | None = None) -> None:
        super().__init__(node, options or InstantOptions())
        self.options: InstantOptions
        self._pods: dict[str, PodStatusReport] = {}
        self._timers: dict[str, asyncio.TimerHandle] = {}

    @vkpy.hookimpl
    async def node_capacity(self, node: NodeHandle) -> Mapping[str, str]:
        return {"cpu": "1000", "memory": "1000Gi", "pods": str(self.options.pods)}

    @vkpy.hookimpl
    async def list_pods(self, node: NodeHandle) -> Collection[str]:
        return list(self._pods)

    @vkpy.hookimpl
    async def create_pod(self, node: NodeHandle, pod: Pod) -> None:
        if pod.uid in self._pods:
            return
        started = _now()
        self._pods[pod.uid] = PodStatusReport(
            containers={c.name: Running(started_at=started) for c in pod.containers},
            init_containers={
                c.name: Terminated(exit_code=0, reason="Completed", started_at=started, finished_at=started)
                for c in pod.init_containers
            },
        )
        exit_after = pod.annotations.get(EXIT_AFTER_ANNOTATION)
        if exit_after:
            loop = asyncio.get_running_loop()
            self._timers[pod.uid] = loop.call_later(float(exit_after), self._finish, pod.uid, started)

    def _finish(self, uid: str, started: datetime.datetime) -> None:
        self._timers.pop(uid, None)
        report = self._pods.get(uid)
        if report is None:
            return
        ended = _now()
        self._pods[uid] = attrs.evolve(
            report,
            containers={
                name: Terminated(exit_code=0, reason="Completed", started_at=started, finished_at=ended)
                for name in report.containers
            },
        )
        self.node.report_status(uid)

    @vkpy.hookimpl
    async def update_pod(self, node: NodeHandle, pod: Pod) -> None:
        return None

    @vkpy.hookimpl
    async def delete_pod(self, node: NodeHandle, pod: Pod, grace_period_seconds: int) -> None:
        timer = self._timers.pop(pod.uid, None)
        if timer is not None:
            timer.cancel()
        # Gone at once: the core's next get_pod_status sees no pod and finishes the deletion.
        if self._pods.pop(pod.uid, None) is not None:
            self.node.report_status(pod.uid)

    @vkpy.hookimpl
    async def get_pod_status(self, node: NodeHandle, pod: Pod) -> PodStatusReport | None:
        return self._pods.get(pod.uid)

    @vkpy.hookimpl
    async def restart_container(self, node: NodeHandle, pod: Pod, container_name: str) -> None:
        report = self._pods.get(pod.uid)
        if report is not None:
            containers = {**report.containers, container_name: Running(started_at=_now())}
            self._pods[pod.uid] = attrs.evolve(report, containers=containers)
