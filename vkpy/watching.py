"""List-then-watch with everything a long-lived watch needs: bookmarks, relist on ``410 Gone``,
reconnect with capped backoff, and a watchdog against watches that stall silently."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import aiohttp
import attrs
import structlog

from vkpy.kube import JSON, KubeClient, KubeError

log = structlog.get_logger("vkpy.watch")


@attrs.frozen
class Backoff:
    """Capped exponential backoff with full jitter (pure: the caller sleeps)."""

    initial: float = 0.5
    maximum: float = 30.0
    factor: float = 2.0

    def delay(self, attempt: int, jitter: float | None = None) -> float:
        ceiling = min(self.maximum, self.initial * self.factor ** max(0, attempt))
        share = random.random() if jitter is None else jitter  # noqa: S311 - jitter, not crypto
        return ceiling * (0.5 + share / 2)


OnEvent = Callable[[str, JSON], Awaitable[None] | None]
OnSynced = Callable[[list[JSON]], Awaitable[None] | None]


@attrs.define
class Watcher:
    """Keeps a local view of a collection in step with the API server.

    ``on_synced(items)`` is called after every (re)list with the full list; ``on_event(type, obj)``
    for every ADDED/MODIFIED/DELETED event after that.
    """

    client: KubeClient
    path: str
    query: Mapping[str, Any]
    on_event: OnEvent
    on_synced: OnSynced
    name: str = "watch"
    server_timeout: int = 300
    backoff: Backoff = Backoff()
    resource_version: str | None = None
    relists: int = 0
    _stop: bool = False

    async def run(self) -> None:
        attempt = 0
        while not self._stop:
            try:
                if self.resource_version is None:
                    await self._relist()
                await self._watch()
                attempt = 0
            except KubeError as exc:
                if exc.gone:
                    log.info("watch.expired", watch=self.name)
                    self.resource_version = None
                    continue
                log.warning("watch.error", watch=self.name, status=exc.status, error=exc.message)
                await asyncio.sleep(self.backoff.delay(attempt))
                attempt += 1
            except (aiohttp.ClientError, TimeoutError, OSError, ValueError) as exc:
                log.warning("watch.disconnected", watch=self.name, error=repr(exc))
                await asyncio.sleep(self.backoff.delay(attempt))
                attempt += 1

    def stop(self) -> None:
        self._stop = True

    async def _relist(self) -> None:
        listing = await self.client.request("GET", self.path, query=self.query, timeout=120)
        self.resource_version = str(listing.get("metadata", {}).get("resourceVersion") or "") or None
        self.relists += 1
        result = self.on_synced(list(listing.get("items") or []))
        if result is not None:
            await result

    async def _watch(self) -> None:
        # Spread reconnections of many watches; the watchdog allows the server's own timeout plus margin.
        timeout = self.server_timeout - random.randint(0, self.server_timeout // 5)  # noqa: S311
        query = {
            **self.query,
            "resourceVersion": self.resource_version,
            "allowWatchBookmarks": True,
            "timeoutSeconds": timeout,
        }
        async for event in self.client.watch_lines(self.path, query, timeout=timeout + 30):
            kind = event.get("type")
            obj = event.get("object") or {}
            if kind == "ERROR":
                raise KubeError(
                    int(obj.get("code") or 500), str(obj.get("reason", "")), str(obj.get("message", ""))
                )
            version = obj.get("metadata", {}).get("resourceVersion")
            if version:
                self.resource_version = str(version)
            if kind == "BOOKMARK":
                continue
            if kind in {"ADDED", "MODIFIED", "DELETED"}:
                result = self.on_event(kind, obj)
                if result is not None:
                    await result
