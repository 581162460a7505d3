"""The API client a node works with: a :class:`~vkpy.kube.KubeClient` that counts its requests (for
``/metrics`` and ``/readyz``) and can take a renewed client certificate without being replaced.

Everything that holds the client (the node, its pod watch, its event recorder, the pod workers)
keeps working across a rotation: new requests go out on a fresh connection pool that presents the
new certificate, and the old pool is closed only once its longest request (a watch, at most
``RETIRE_AFTER`` seconds) has had time to end by itself."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

import aiohttp
import attrs
import structlog
from kubernetes_asyncio.client import rest

from vkpy.kube import KubeClient, without_environment_lookups

log = structlog.get_logger("vkpy.api")

# A watch lasts at most 300 s (vkpy.watching) plus its 30 s watchdog.
RETIRE_AFTER: Final = 340.0


@attrs.define
class ApiStats:
    """What one client's requests did: answers by method and status code, failures without an
    answer by method and error type, and when the API last answered."""

    responses: collections.Counter[tuple[str, int]] = attrs.field(factory=collections.Counter)
    failures: collections.Counter[tuple[str, str]] = attrs.field(factory=collections.Counter)
    last_answer: float | None = None
    last_failure: str | None = None

    def answered(self, method: str, status: int) -> None:
        self.responses[(method, status)] += 1
        self.last_answer = time.monotonic()
        self.last_failure = None

    def failed(self, method: str, exc: BaseException) -> None:
        self.failures[(method, type(exc).__name__)] += 1
        self.last_failure = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


@attrs.define
class ObservedClient(KubeClient):
    """A KubeClient with request statistics and in-place certificate rotation."""

    stats: ApiStats = attrs.field(factory=ApiStats)
    _retiring: set[asyncio.Task[None]] = attrs.field(factory=set)

    async def _raw(
        self,
        method: str,
        path: str,
        *,
        query: Mapping[str, Any] | None = None,
        body: Any = None,
        content_type: str = "application/json",
        timeout: float | None = 30,
    ) -> aiohttp.ClientResponse:
        try:
            response = await super()._raw(
                method, path, query=query, body=body, content_type=content_type, timeout=timeout
            )
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.stats.failed(method, exc)
            raise
        self.stats.answered(method, response.status)
        return response

    @classmethod
    async def open(cls, path: Path | None, identity: str) -> ObservedClient:
        """:meth:`~vkpy.kube.KubeClient.from_kubeconfig`, typed as this class."""
        client = await cls.from_kubeconfig(path, identity=identity)
        assert isinstance(client, ObservedClient)
        return client

    @property
    def cert_file(self) -> Path | None:
        value = self.api.configuration.cert_file
        return Path(value) if value else None

    def use_certificate(self, cert_file: Path, key_file: Path | None = None) -> None:
        """Present ``cert_file`` (and ``key_file``, default: the same file) from the next request on.

        The files are loaded before anything changes: a bad pair raises (``OSError``,
        ``ssl.SSLError``) and the client keeps its current certificate."""
        configuration = self.api.configuration
        previous = (configuration.cert_file, configuration.key_file)
        configuration.cert_file, configuration.key_file = str(cert_file), str(key_file or cert_file)
        try:
            fresh = without_environment_lookups(rest.RESTClientObject(configuration))
        except Exception:
            configuration.cert_file, configuration.key_file = previous
            raise
        old, self.api.rest_client = self.api.rest_client, fresh
        task = asyncio.create_task(self._retire(old), name=f"retire-pool:{self.identity}")
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)
        log.info("api.certificate_rotated", identity=self.identity, cert=str(cert_file))

    @staticmethod
    async def _retire(pool: Any) -> None:
        try:
            await asyncio.sleep(RETIRE_AFTER)
        finally:
            with contextlib.suppress(Exception):
                await pool.close()

    async def close(self) -> None:
        for task in list(self._retiring):
            task.cancel()
        await asyncio.gather(*self._retiring, return_exceptions=True)
        await super().close()
