"""The harness's side of the API: its own client, bulk pod creation, and watches that timestamp what
the contenders do (a pod Running, a pod gone, a node Ready, a lease renewed)."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import math
import time
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any

from vkpy.kube import JSON, KubeClient, KubeError, parse_time
from vkpy.watching import Watcher

HARNESS_USER_AGENT = "vkpy-bench-harness/1"
CREATE_CONCURRENCY = 100


async def open_client(kubeconfig: Path) -> KubeClient:
    client = await KubeClient.from_kubeconfig(kubeconfig)
    # Not "vkpy/...": the harness's own requests must not count as vkpy's.
    client.api.user_agent = HARNESS_USER_AGENT
    return client


async def create_all(
    client: KubeClient, path: str, bodies: Iterable[JSON], concurrency: int = CREATE_CONCURRENCY
) -> dict[str, float]:
    """POST every body (at most ``concurrency`` in flight); return name → monotonic time created."""
    limiter = asyncio.Semaphore(concurrency)
    created: dict[str, float] = {}

    async def one(body: JSON) -> None:
        async with limiter:
            await client.create(path, body)
            created[body["metadata"]["name"]] = time.monotonic()

    await asyncio.gather(*(one(b) for b in bodies))
    return created


async def ignore_missing(call: Awaitable[Any]) -> None:
    try:
        await call
    except KubeError as exc:
        if not exc.not_found:
            raise


class Tracked:
    """A list-then-watch of one collection through vkpy's own Watcher (relist on 410, reconnects),
    calling ``seen(type, obj, monotonic_time)`` for every object and change."""

    def __init__(
        self, client: KubeClient, path: str, query: dict[str, Any], seen: Callable[[str, JSON, float], None]
    ) -> None:
        self._seen = seen
        self.changed = asyncio.Event()
        self.synced = asyncio.Event()
        self._watcher = Watcher(
            client=client,
            path=path,
            query=query,
            on_event=self._on_event,
            on_synced=self._on_synced,
            name=f"bench:{path}",
            server_timeout=120,
        )
        self._task: asyncio.Task[None] | None = None

    def _on_event(self, kind: str, obj: JSON) -> None:
        self._seen(kind, obj, time.monotonic())
        self.changed.set()

    def _on_synced(self, items: list[JSON]) -> None:
        now = time.monotonic()
        for obj in items:
            self._seen("ADDED", obj, now)
        self.synced.set()
        self.changed.set()

    async def __aenter__(self) -> Tracked:
        self._task = asyncio.create_task(self._watcher.run())
        async with asyncio.timeout(60):
            await self.synced.wait()
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._watcher.stop()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def until(self, done: Callable[[], bool], timeout: float) -> bool:
        """Wait until ``done()`` holds (re-checked on every change); False on timeout."""
        deadline = time.monotonic() + timeout
        while not done():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            self.changed.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(min(remaining, 1.0)):
                    await self.changed.wait()
        return True


class PodTimes:
    """When each pod of a namespace was first seen, first seen bound to a node, first seen Running,
    and seen deleted."""

    def __init__(self) -> None:
        self.first_seen: dict[str, float] = {}
        self.bound: dict[str, float] = {}
        self.running: dict[str, float] = {}
        self.finished: dict[str, float] = {}
        self.deleted: dict[str, float] = {}
        self.present: set[str] = set()

    def seen(self, kind: str, obj: JSON, at: float) -> None:
        name = obj["metadata"]["name"]
        if kind == "DELETED":
            self.present.discard(name)
            self.deleted.setdefault(name, at)
            return
        self.present.add(name)
        self.first_seen.setdefault(name, at)
        if (obj.get("spec") or {}).get("nodeName"):
            self.bound.setdefault(name, at)
        phase = (obj.get("status") or {}).get("phase")
        if phase == "Running":
            self.running.setdefault(name, at)
        elif phase in {"Succeeded", "Failed"}:
            self.finished.setdefault(name, at)


def _ready(node: JSON) -> bool:
    for condition in (node.get("status") or {}).get("conditions") or []:
        if condition.get("type") == "Ready":
            return bool(condition.get("status") == "True")
    return False


class NodeTimes:
    """When each of the given nodes was first seen Ready."""

    def __init__(self, names: Iterable[str]) -> None:
        self.names = set(names)
        self.ready: dict[str, float] = {}

    def seen(self, kind: str, obj: JSON, at: float) -> None:
        name = obj["metadata"]["name"]
        if name in self.names and kind != "DELETED" and _ready(obj):
            self.ready.setdefault(name, at)

    def all_ready(self) -> bool:
        return len(self.ready) == len(self.names)


class LeaseAges:
    """The renewals of the given nodes' Leases: the longest time a Lease went without renewal."""

    def __init__(self, names: Iterable[str]) -> None:
        self.names = set(names)
        # A Lease renewed before the tracking started belongs to an earlier agent: not counted.
        self.since = datetime.datetime.now(datetime.UTC)
        self.last: dict[str, datetime.datetime] = {}
        self.worst_gap = 0.0
        self.renewals = 0

    def seen(self, kind: str, obj: JSON, at: float) -> None:
        name = obj["metadata"]["name"]
        if name not in self.names or kind == "DELETED":
            return
        renewed = parse_time((obj.get("spec") or {}).get("renewTime"))
        if renewed is None or renewed < self.since:
            return
        previous = self.last.get(name)
        if previous is not None and renewed > previous:
            self.worst_gap = max(self.worst_gap, (renewed - previous).total_seconds())
            self.renewals += 1
        if previous is None or renewed > previous:
            self.last[name] = renewed

    def worst_age(self) -> float:
        """The worst gap seen, or a Lease's current age if that is worse (or one never seen: inf)."""
        now = datetime.datetime.now(datetime.UTC)
        if len(self.last) < len(self.names):
            return float("inf")
        ages = [(now - renewed).total_seconds() for renewed in self.last.values()]
        return max([self.worst_gap, *ages])


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100); nan for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, min(len(ordered), math.ceil(q / 100 * len(ordered))))
    return ordered[rank - 1]
