"""List-then-watch with everything a long-lived watch needs: bookmarks, relist on ``410 Gone``,
reconnect with capped backoff, and a watchdog against watches that stall silently."""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import aiohttp
import attrs
import structlog

from vkpy.kube import JSON, KubeClient, KubeError, event_head

log = structlog.get_logger("vkpy.watch")

SETTLED_AFTER = 3.0


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
    idle_timeout: float | None = None
    """The watchdog: silence (no event, no bookmark) this long ends the watch and reconnects.
    Default: the server-side timeout plus 30 s."""
    # For /metrics and /readyz: reconnections by reason, the last time the server spoke (monotonic),
    # and the error the watch is retrying after (None while it works).
    already_held: Callable[[str, str], bool] | None = None
    """``(uid, resourceVersion)``: whether the consumer holds that version of that object already
    (the echo of its own write). Such a MODIFIED event is passed over without being decoded."""
    restarts: dict[str, int] = attrs.field(factory=dict)
    last_contact: float | None = None
    last_error: str | None = None
    _stop: bool = False

    async def run(self) -> None:
        attempt = 0
        while not self._stop:
            try:
                if self.resource_version is None:
                    await self._relist()
                # A quiet collection sends nothing after a reconnection: a watch still open after a
                # few seconds was accepted (refusals and errors come at once).
                settled = asyncio.get_running_loop().call_later(SETTLED_AFTER, self._contact)
                try:
                    await self._watch()
                finally:
                    settled.cancel()
                attempt = 0
            except KubeError as exc:
                if exc.gone:
                    log.info("watch.expired", watch=self.name)
                    self._restarted("expired", None)
                    self.resource_version = None
                    continue
                log.warning("watch.error", watch=self.name, status=exc.status, error=exc.message)
                self._restarted("error", f"{exc.status} {exc.message}")
                await asyncio.sleep(self.backoff.delay(attempt))
                attempt += 1
            except (aiohttp.ClientError, TimeoutError, OSError, ValueError) as exc:
                log.warning("watch.disconnected", watch=self.name, error=repr(exc))
                self._restarted("disconnected", repr(exc))
                await asyncio.sleep(self.backoff.delay(attempt))
                attempt += 1

    def stop(self) -> None:
        self._stop = True

    def _restarted(self, reason: str, error: str | None) -> None:
        self.restarts[reason] = self.restarts.get(reason, 0) + 1
        self.last_error = error

    def _contact(self) -> None:
        self.last_contact = time.monotonic()
        self.last_error = None

    async def _relist(self) -> None:
        listing = await self.client.request("GET", self.path, query=self.query, timeout=120)
        self.resource_version = str(listing.get("metadata", {}).get("resourceVersion") or "") or None
        self.relists += 1
        self._contact()
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
        idle_limit = self.idle_timeout or timeout + 30
        async for line in self.client.watch_lines(self.path, query, timeout=idle_limit):
            if self.already_held is not None:
                head = event_head(line)
                if head is not None and head[0] == "MODIFIED" and self.already_held(head[1], head[2]):
                    self._contact()
                    self.resource_version = head[2]
                    continue
            event = json.loads(line)
            kind = event.get("type")
            obj = event.get("object") or {}
            if kind == "ERROR":
                raise KubeError(
                    int(obj.get("code") or 500), str(obj.get("reason", "")), str(obj.get("message", ""))
                )
            self._contact()
            version = obj.get("metadata", {}).get("resourceVersion")
            if version:
                self.resource_version = str(version)
            if kind == "BOOKMARK":
                continue
            if kind in {"ADDED", "MODIFIED", "DELETED"}:
                result = self.on_event(kind, obj)
                if result is not None:
                    await result
