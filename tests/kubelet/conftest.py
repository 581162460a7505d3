"""Fixtures of the kubelet API tests: a real PKI on disk, servers on loopback, TLS clients."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from kubelet_support import FakeBackend, Pki, StartServer, client_context, https_client

from vkpy.kubelet import KubeletServer
from vkpy.testing.pki import CertificateAuthority


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    directory = tmp_path_factory.mktemp("kubelet-pki")
    ca = CertificateAuthority.create(directory / "ca", "cluster-ca")
    other = CertificateAuthority.create(directory / "other", "other-ca")
    names, ips = ["localhost"], ["127.0.0.1"]
    return Pki(
        ca=ca,
        server=ca.issue(directory, "kubelet", "vkpy-kubelet", server=True, dns_names=names, ip_addresses=ips),
        rotated=ca.issue(
            directory, "rotated", "vkpy-kubelet-rotated", server=True, dns_names=names, ip_addresses=ips
        ),
        client=ca.issue(
            directory, "apiserver-client", "kube-apiserver-kubelet-client", ["system:masters"], client=True
        ),
        server_only=ca.issue(directory, "server-only", "not-a-client", server=True),
        foreign_client=other.issue(directory, "foreign", "kube-apiserver-kubelet-client", client=True),
    )


@pytest.fixture
def backend() -> FakeBackend:
    return FakeBackend()


@pytest.fixture
async def start_server(pki: Pki) -> AsyncIterator[StartServer]:
    """Start a KubeletServer on loopback (any free port) with the test PKI unless told otherwise."""
    servers: list[KubeletServer] = []

    async def start(backend: Any, **kwargs: Any) -> KubeletServer:
        settings: dict[str, Any] = {
            "tls_cert": pki.server.cert,
            "tls_key": pki.server.key,
            "client_ca": pki.ca.files.cert,
        }
        settings.update(kwargs)
        server = KubeletServer(backend, "127.0.0.1", 0, **settings)
        await server.start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        await server.stop()


@pytest.fixture
async def server(start_server: StartServer, backend: FakeBackend) -> KubeletServer:
    return await start_server(backend)


@pytest.fixture
async def client(pki: Pki) -> AsyncIterator[aiohttp.ClientSession]:
    """A client presenting the apiserver's kubelet-client certificate."""
    async with https_client(client_context(pki, pki.client)) as session:
        yield session
