"""Shared parts of the kubelet API tests: a real PKI, a backend serving a fixed pod, TLS clients."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any

import aiohttp
import attrs

from vkpy import Container, LogLine, LogOptions, Pod
from vkpy.kubelet import KubeletServer
from vkpy.testing.pki import CertificateAuthority, CertPair

T0 = datetime.datetime(2026, 11, 28, 8, 0, 0, 123456, tzinfo=datetime.UTC)


@attrs.frozen
class Pki:
    ca: CertificateAuthority
    server: CertPair
    rotated: CertPair
    client: CertPair
    server_only: CertPair
    foreign_client: CertPair


def make_pod(namespace: str = "default", name: str = "web") -> Pod:
    return Pod(
        uid=f"uid-{name}",
        namespace=namespace,
        name=name,
        node_name="node-a",
        containers=(Container("app", image="busybox"),),
        init_containers=(Container("setup"),),
        manifest={"apiVersion": "v1", "kind": "Pod", "metadata": {"namespace": namespace, "name": name}},
    )


def line(text: str, seconds: float = 0, stream: str = "stdout") -> LogLine:
    return LogLine(time=T0 + datetime.timedelta(seconds=seconds), data=text.encode(), stream=stream)


@attrs.define
class FakeBackend:
    """Serves fixed pods and a scripted async generator of lines; records what it was asked."""

    pods: list[Pod] = attrs.field(factory=lambda: [make_pod()])
    lines: list[LogLine] = attrs.field(factory=lambda: [line("hello\n"), line("world\n", 1)])
    late_lines: list[LogLine] = attrs.field(factory=list)
    follow_forever: bool = True
    fail_on_call: Exception | None = None
    fail: Exception | None = None
    fail_delay: float = 0.0
    is_healthy: bool = True
    calls: list[tuple[str, str, LogOptions]] = attrs.field(factory=list)
    generators: list[AsyncIterator[LogLine]] = attrs.field(factory=list)
    gate: asyncio.Event = attrs.field(factory=asyncio.Event)
    closed: asyncio.Event = attrs.field(factory=asyncio.Event)

    def find_pod(self, namespace: str, name: str) -> Pod | None:
        for pod in self.pods:
            if (pod.namespace, pod.name) == (namespace, name):
                return pod
        return None

    def container_logs(self, pod: Pod, container: str, options: LogOptions) -> AsyncIterator[LogLine]:
        if self.fail_on_call is not None:
            raise self.fail_on_call
        self.calls.append((pod.key, container, options))
        generator = self._generate(options)
        # Held so that garbage collection cannot close it: only the server's aclose() may.
        self.generators.append(generator)
        return generator

    async def _generate(self, options: LogOptions) -> AsyncIterator[LogLine]:
        try:
            for item in self.lines:
                yield item
            if self.fail is not None:
                await asyncio.sleep(self.fail_delay)
                raise self.fail
            if options.follow:
                await self.gate.wait()
                for item in self.late_lines:
                    yield item
                if self.follow_forever:
                    await asyncio.Event().wait()
        finally:
            self.closed.set()

    def pods_manifests(self) -> list[Mapping[str, Any]]:
        return [pod.manifest for pod in self.pods]

    def healthy(self) -> bool:
        return self.is_healthy


def client_context(pki: Pki, cert: CertPair | None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(pki.ca.files.cert))
    if cert is not None:
        context.load_cert_chain(cert.cert, cert.key)
    return context


@contextlib.asynccontextmanager
async def https_client(context: ssl.SSLContext) -> AsyncIterator[aiohttp.ClientSession]:
    # force_close: every request on a new connection, so certificate changes are seen at once.
    connector = aiohttp.TCPConnector(ssl=context, force_close=True)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=20)) as session:
        yield session


StartServer = Callable[..., Awaitable[KubeletServer]]


def url(server: KubeletServer, path: str) -> str:
    return f"https://127.0.0.1:{server.port}{path}"


def logs_url(server: KubeletServer, query: str = "", pod: str = "default/web", container: str = "app") -> str:
    return url(server, f"/containerLogs/{pod}/{container}" + (f"?{query}" if query else ""))
