"""Kubernetes Events for what a user must see in `kubectl describe pod`, sent in the background.

Each Event is an API write. A node's ``events`` setting says which ``Normal`` ones are worth it:
``all`` writes the kubelet's full set (``Created``, ``Started``, ``Killing``...), ``brief`` only what
the worker marks as brief (one ``Started`` per pod), ``warnings`` none. Warnings always go out.

Events give way to the writes pods wait on. While a node's status writes or final deletes are
going on, its Events queue (stamped with the time they happened) and go out once those writes have
paused for a moment, or when the oldest has waited ``MAX_DEFERRAL_SECONDS``. In a burst of 1000 pods
this took the median create→Running from 1.3-2.5 s to under 0.5 s (benchmarks/README.md): each Event
costs the API server about as much as the status write a pod is waiting for.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import uuid
from collections.abc import Iterator, Mapping
from typing import Any, Literal

import attrs
import structlog

from vkpy.kube import JSON, KubeClient, now, rfc3339

log = structlog.get_logger("vkpy.events")

# Events are for people reading `kubectl describe`: a few in flight per node is plenty, and more
# would take API connections from the status writes that pods are waiting on.
EVENTS_IN_FLIGHT = 4
# How long the node's urgent writes must have paused before Events go out.
SETTLE_SECONDS = 0.2
# An Event is sent after this long even when urgent writes never pause (steady churn).
MAX_DEFERRAL_SECONDS = 10.0


@attrs.frozen
class _Queued:
    namespace: str
    reason: str
    body: JSON
    queued_at: float


class EventRecorder:
    """Best effort: an event that cannot be written is logged, never an error for the pod."""

    def __init__(
        self, client: KubeClient, node_name: str, level: Literal["all", "brief", "warnings"] = "brief"
    ) -> None:
        self.client = client
        self.node_name = node_name
        self.level = level
        self._queue: collections.deque[_Queued] = collections.deque()
        self._senders: set[asyncio.Task[None]] = set()
        self._urgent = 0
        self._urgent_ended = 0.0

    def wants(self, kind: str, brief: bool = False) -> bool:
        """Whether an event of ``kind`` is written at this node's level; ``brief`` marks the Normal
        events that ``brief`` keeps."""
        if kind != "Normal" or self.level == "all":
            return True
        return brief and self.level == "brief"

    @contextlib.contextmanager
    def urgent(self) -> Iterator[None]:
        """Around a write that a pod waits on: queued Events hold back while it runs."""
        self._urgent += 1
        try:
            yield
        finally:
            self._urgent -= 1
            self._urgent_ended = asyncio.get_running_loop().time()

    def emit(self, pod: Mapping[str, Any], kind: str, reason: str, message: str, brief: bool = False) -> None:
        if not self.wants(kind, brief):
            return
        meta = pod.get("metadata", {})
        namespace = str(meta.get("namespace", "default"))
        stamp = rfc3339(now())
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
            "firstTimestamp": stamp,
            "lastTimestamp": stamp,
            "count": 1,
        }
        loop = asyncio.get_running_loop()
        self._queue.append(_Queued(namespace, reason, body, loop.time()))
        if len(self._senders) < EVENTS_IN_FLIGHT:
            task = loop.create_task(self._send_queued(), name=f"events:{self.node_name}")
            self._senders.add(task)
            task.add_done_callback(self._senders.discard)

    async def _send_queued(self) -> None:
        while self._queue:
            await self._give_way(self._queue[0].queued_at)
            if not self._queue:
                return
            event = self._queue.popleft()
            try:
                path = f"/api/v1/namespaces/{event.namespace}/events"
                await self.client.send("POST", path, body=event.body)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("event.write_failed", node=self.node_name, reason=event.reason, error=str(exc))

    async def _give_way(self, queued_at: float) -> None:
        """Wait until urgent writes have paused for SETTLE_SECONDS, or the event is old enough."""
        loop = asyncio.get_running_loop()
        while True:
            current = loop.time()
            if current - queued_at >= MAX_DEFERRAL_SECONDS:
                return
            if self._urgent == 0:
                quiet_for = current - self._urgent_ended
                if quiet_for >= SETTLE_SECONDS:
                    return
                pause = SETTLE_SECONDS - quiet_for
            else:
                pause = SETTLE_SECONDS
            await asyncio.sleep(min(pause, MAX_DEFERRAL_SECONDS - (current - queued_at)))

    async def drain(self) -> None:
        """Send what is queued (on shutdown: nothing urgent runs any more)."""
        if self._senders:
            await asyncio.gather(*self._senders, return_exceptions=True)
