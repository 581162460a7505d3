"""A thin JSON layer over kubernetes-asyncio's ApiClient.

The core works on plain dicts, as the API server sends them: model (de)serialisation is slow and
validates fields we do not read, and a watch over thousands of pods is a hot path. The ApiClient still
does what it is good at: TLS, credentials (certificates, tokens, exec plugins), the connection pool.
"""

from __future__ import annotations

import datetime
import json
import re
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any, TypedDict, Unpack

import aiohttp
import attrs
from kubernetes_asyncio import client as k8s_client
from kubernetes_asyncio import config as k8s_config

JSON = dict[str, Any]

MERGE_PATCH = "application/merge-patch+json"
STRATEGIC_MERGE_PATCH = "application/strategic-merge-patch+json"
USER_AGENT = "vkpy"
POOL_SIZE = 16


class KubeError(Exception):
    """The API server answered with an error status."""

    def __init__(self, status: int, reason: str, message: str, body: JSON | None = None) -> None:
        super().__init__(f"{status} {reason}: {message}")
        self.status = status
        self.reason = reason
        self.message = message
        self.body = body or {}

    @property
    def not_found(self) -> bool:
        return self.status == 404

    @property
    def conflict(self) -> bool:
        return self.status == 409

    @property
    def gone(self) -> bool:
        return self.status == 410


def micro_time(when: datetime.datetime) -> str:
    """A MicroTime with exactly six fractional digits; the API server rejects other forms."""
    return when.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def rfc3339(when: datetime.datetime) -> str:
    """A Time (whole seconds), as the API server stores them."""
    return when.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(value: str | None) -> datetime.datetime | None:
    if not value:
        return None
    return datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))


def now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


class RequestOptions(TypedDict, total=False):
    """What a request may add to its method and path (see :meth:`KubeClient._raw`)."""

    query: Mapping[str, Any] | None
    body: Any
    content_type: str
    timeout: float | None


@attrs.define
class KubeClient:
    """JSON requests against one API server with one identity."""

    api: k8s_client.ApiClient
    identity: str = "shared"

    @classmethod
    async def from_kubeconfig(cls, path: Path | None, identity: str = "shared") -> KubeClient:
        """From a kubeconfig file; without one: $KUBECONFIG, ~/.kube/config, then in-cluster."""
        configuration = k8s_client.Configuration()
        if path is None and _in_cluster():
            load_incluster: Any = k8s_config.load_incluster_config
            load_incluster(client_configuration=configuration)
        else:
            await k8s_config.load_kube_config(
                config_file=str(path) if path else None,
                client_configuration=configuration,
                persist_config=False,
            )
        # No client-side rate limit (the Go virtual-kubelet's first bottleneck), but a small pool:
        # every connection pays a TLS handshake (with an unbounded pool: 15-29 % of vkpy's CPU in a
        # burst; with 64 still 8 %), and 16 kept a 1000-pod burst as fast (benchmarks/README.md).
        # Requests beyond it queue for a connection.
        configuration.connection_pool_maxsize = POOL_SIZE
        api = _PlainApiClient(configuration)
        without_environment_lookups(api.rest_client)
        api.user_agent = f"{USER_AGENT}/{_version()}"
        return cls(api=api, identity=identity)

    @property
    def ca_file(self) -> str | None:
        value = self.api.configuration.ssl_ca_cert
        return str(value) if value else None

    async def close(self) -> None:
        await self.api.close()

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
        headers = {"Accept": "application/json", "Content-Type": content_type}
        params = [(k, _query_value(v)) for k, v in (query or {}).items() if v is not None]
        response: aiohttp.ClientResponse = await self.api.call_api(
            path,
            method,
            query_params=params,
            header_params=headers,
            body=body,
            auth_settings=["BearerToken"],
            _preload_content=False,
            _request_timeout=timeout,
        )
        return response

    async def request_bytes(self, method: str, path: str, **options: Unpack[RequestOptions]) -> bytes:
        """The answer's body, undecoded; an error status raises :class:`KubeError`."""
        response = await self._raw(method, path, **options)
        async with response:
            data = await response.read()
            if response.status >= 400:
                raise _error(response.status, data)
            return data

    async def request(self, method: str, path: str, **options: Unpack[RequestOptions]) -> JSON:
        data = await self.request_bytes(method, path, **options)
        return json.loads(data) if data else {}

    async def send(self, method: str, path: str, **options: Unpack[RequestOptions]) -> None:
        """A request whose answer is not used (an Event created, a final delete): the body is read,
        so the connection goes back to the pool, but decoded only for an error. Decoding the object
        the server sends back was a tenth of vkpy's CPU in a pod burst."""
        await self.request_bytes(method, path, **options)

    async def get(self, path: str, **query: Any) -> JSON:
        return await self.request("GET", path, query=query)

    async def create(self, path: str, body: JSON) -> JSON:
        return await self.request("POST", path, body=body)

    async def patch(self, path: str, body: Any, content_type: str = STRATEGIC_MERGE_PATCH) -> JSON:
        return await self.request("PATCH", path, body=body, content_type=content_type)

    async def put(self, path: str, body: JSON) -> JSON:
        return await self.request("PUT", path, body=body)

    async def delete(self, path: str, body: JSON | None = None) -> JSON:
        return await self.request("DELETE", path, body=body)

    async def watch_lines(self, path: str, query: Mapping[str, Any], timeout: float) -> AsyncIterator[bytes]:
        """Stream a watch: one event per line, undecoded (see :func:`object_head`). Ends when the
        server ends the watch."""
        # The watchdog covers the wait for the response headers too: a link can stall at any point.
        async with _deadline(timeout):
            response = await self._raw("GET", path, query={**query, "watch": "true"}, timeout=None)
        async with response:
            if response.status >= 400:
                raise _error(response.status, await response.read())
            buffer = b""
            while True:
                # A silent stall (no event, no bookmark) past `timeout` raises TimeoutError: the
                # caller's watchdog reconnects.
                async with _deadline(timeout):
                    chunk = await response.content.readany()
                if not chunk:
                    return
                buffer += chunk
                *lines, buffer = buffer.split(b"\n")
                for line in lines:
                    if line.strip():
                        yield line


# How the API server writes an object (Go's field order: kind, apiVersion, then metadata with name,
# generateName, namespace, selfLink?, uid, resourceVersion before any nested field), and a watch
# event around one. Only a fast path: callers decode the JSON when these do not match.
_OBJECT_HEAD = re.compile(
    rb'\{"kind":"[^"]*","apiVersion":"[^"]*","metadata":\{[^{}]*?"uid":"([^"]+)","resourceVersion":"([^"]+)"'
)
_EVENT_HEAD = re.compile(rb'\{"type":"([A-Z]+)","object":')


def object_head(data: bytes) -> tuple[str, str] | None:
    """The UID and resourceVersion of the object in ``data`` (an answer's body), read from its first
    bytes without decoding the rest; None when it is not laid out as the API server writes it."""
    match = _OBJECT_HEAD.match(data)
    return (match[1].decode(), match[2].decode()) if match else None


def event_head(line: bytes) -> tuple[str, str, str] | None:
    """The type, object UID and object resourceVersion of a watch event line, without decoding it;
    None when it is not laid out as the API server writes it."""
    event = _EVENT_HEAD.match(line)
    if event is None:
        return None
    match = _OBJECT_HEAD.match(line, event.end())
    return (event[1].decode(), match[1].decode(), match[2].decode()) if match else None


class _PlainApiClient(k8s_client.ApiClient):
    """Bodies, headers and queries sent here are plain JSON data already: the generated client's
    recursive walk that turns model objects into it was a tenth of vkpy's CPU in a pod burst."""

    def sanitize_for_serialization(self, obj: Any) -> Any:
        return obj


def without_environment_lookups(rest_client: Any) -> Any:
    """kubernetes-asyncio's session trusts the environment, so aiohttp reads ~/.netrc in a thread
    for every request (about a fifth of vkpy's CPU in a burst). The kubeconfig's own proxy setting
    still applies; proxy variables of the environment do not."""
    rest_client.pool_manager._trust_env = False
    return rest_client


def _deadline(seconds: float) -> Any:
    import asyncio

    return asyncio.timeout(seconds)


def _query_value(value: Any) -> Any:
    if isinstance(value, bool):
        return "true" if value else "false"
    return value


def _error(status: int, data: bytes) -> KubeError:
    try:
        body = json.loads(data)
    except ValueError:
        return KubeError(status, "", data.decode(errors="replace")[:500])
    if not isinstance(body, dict):
        return KubeError(status, "", str(body)[:500])
    return KubeError(status, str(body.get("reason", "")), str(body.get("message", "")), body)


def _in_cluster() -> bool:
    import os

    return bool(os.environ.get("KUBERNETES_SERVICE_HOST")) and not (
        os.environ.get("KUBECONFIG") or Path("~/.kube/config").expanduser().exists()
    )


def _version() -> str:
    from vkpy import __version__

    return __version__
