"""Kubernetes Events for what a user must see in `kubectl describe pod`, sent in the background.

Each Event is an API write. A node's ``events`` setting says which ``Normal`` ones are worth it:
``all`` writes the kubelet's full set (``Created``, ``Started``, ``Killing``...), ``brief`` only what
the worker marks as brief (one ``Started`` per pod), ``warnings`` none. Warnings always go out.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Mapping
from typing import Any, Literal

import structlog

from vkpy.kube import KubeClient, now, rfc3339

log = structlog.get_logger("vkpy.events")

# Events are for people reading `kubectl describe`: a few in flight per node is plenty, and more
# would take API connections from the status writes that pods are waiting on.
EVENTS_IN_FLIGHT = 4


class EventRecorder:
    """Best effort: an event that cannot be written is logged, never an error for the pod."""

    def __init__(
        self, client: KubeClient, node_name: str, level: Literal["all", "brief", "warnings"] = "brief"
    ) -> None:
        self.client = client
        self.node_name = node_name
        self.level = level
        self._pending: set[asyncio.Task[None]] = set()
        self._in_flight = asyncio.Semaphore(EVENTS_IN_FLIGHT)

    def wants(self, kind: str, brief: bool = False) -> bool:
        """Whether an event of ``kind`` is written at this node's level; ``brief`` marks the Normal
        events that ``brief`` keeps."""
        if kind != "Normal" or self.level == "all":
            return True
        return brief and self.level == "brief"

    def emit(self, pod: Mapping[str, Any], kind: str, reason: str, message: str, brief: bool = False) -> None:
        if not self.wants(kind, brief):
            return
        task = asyncio.create_task(self._send(pod, kind, reason, message))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _send(self, pod: Mapping[str, Any], kind: str, reason: str, message: str) -> None:
        meta = pod.get("metadata", {})
        namespace = meta.get("namespace", "default")
        stamp = now()
        body = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {
                "name": f"{meta.get('name', 'pod')}.{uuid.uuid4().hex[:16]}",
                "namespace": namespace,
            },
            "involvedObject": {
                "apiVersion": "v1",
                "kind": "Pod",
                "name": meta.get("name"),
                "namespace": namespace,
                "uid": meta.get("uid"),
                "resourceVersion": meta.get("resourceVersion"),
            },
            "type": kind,
            "reason": reason,
            "message": message[:1024],
            "source": {"component": "vkpy", "host": self.node_name},
            "reportingComponent": "vkpy",
            "reportingInstance": self.node_name,
            "firstTimestamp": rfc3339(stamp),
            "lastTimestamp": rfc3339(stamp),
            "count": 1,
        }
        try:
            async with self._in_flight:
                await self.client.send("POST", f"/api/v1/namespaces/{namespace}/events", body=body)
        except Exception as exc:
            log.warning("event.write_failed", node=self.node_name, reason=reason, error=str(exc))

    async def drain(self) -> None:
        if self._pending:
            await asyncio.gather(*self._pending, return_exceptions=True)
