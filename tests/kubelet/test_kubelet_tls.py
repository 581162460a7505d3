"""Who may call the kubelet API, the serving certificate and the server's lifecycle, over real TLS."""

from __future__ import annotations

import asyncio
import socket
import ssl
from pathlib import Path

import aiohttp
import pytest
from cryptography import x509
from kubelet_support import FakeBackend, Pki, StartServer, client_context, https_client, logs_url, url
from structlog.testing import capture_logs

from vkpy import ConfigError
from vkpy.kubelet import ANONYMOUS_REFUSED, KubeletServer


async def served_certificate(server: KubeletServer, pki: Pki) -> x509.Certificate:
    """The certificate a new connection to the server is shown."""
    context = client_context(pki, pki.client)
    _, writer = await asyncio.open_connection("127.0.0.1", server.port, ssl=context)
    try:
        ssl_object = writer.get_extra_info("ssl_object")
        der = ssl_object.getpeercert(binary_form=True)
        return x509.load_der_x509_certificate(der)
    finally:
        writer.close()
        await writer.wait_closed()


def common_name(cert: x509.Certificate) -> str:
    return str(cert.subject.get_attributes_for_oid(x509.oid.NameOID.COMMON_NAME)[0].value)


async def test_anonymous_callers_get_401(server: KubeletServer, backend: FakeBackend, pki: Pki) -> None:
    async with https_client(client_context(pki, None)) as anonymous:
        for path in ("/containerLogs/default/web/app", "/pods", "/metrics", "/exec/default/web/app"):
            async with anonymous.get(url(server, path)) as response:
                assert response.status == 401
                assert await response.text() == ANONYMOUS_REFUSED + "\n"
    assert backend.calls == []


async def test_healthz_needs_no_certificate(server: KubeletServer, pki: Pki) -> None:
    async with (
        https_client(client_context(pki, None)) as anonymous,
        anonymous.get(url(server, "/healthz")) as response,
    ):
        assert response.status == 200


async def test_allow_anonymous_with_a_client_ca(
    start_server: StartServer, backend: FakeBackend, pki: Pki
) -> None:
    server = await start_server(backend, allow_anonymous=True)
    with capture_logs() as logs:
        async with (
            https_client(client_context(pki, None)) as anonymous,
            anonymous.get(logs_url(server)) as response,
        ):
            assert response.status == 200
            assert await response.read() == b"hello\nworld\n"
        async with (
            https_client(client_context(pki, pki.client)) as named,
            named.get(url(server, "/pods")) as response,
        ):
            assert response.status == 200
    peers = [entry["peer_cn"] for entry in logs if entry["event"] == "kubelet.request"]
    assert peers == [None, "kube-apiserver-kubelet-client"]


async def test_allow_anonymous_without_a_client_ca(
    start_server: StartServer, backend: FakeBackend, pki: Pki
) -> None:
    server = await start_server(backend, client_ca=None, allow_anonymous=True)
    async with (
        https_client(client_context(pki, None)) as anonymous,
        anonymous.get(logs_url(server)) as response,
    ):
        assert response.status == 200


async def test_a_certificate_from_another_ca_is_refused(
    server: KubeletServer, backend: FakeBackend, pki: Pki
) -> None:
    async with https_client(client_context(pki, pki.foreign_client)) as stranger:
        with pytest.raises(aiohttp.ClientError):
            async with stranger.get(logs_url(server)) as response:
                await response.read()
    assert backend.calls == []


async def test_a_certificate_not_made_for_clients_is_refused(server: KubeletServer, pki: Pki) -> None:
    async with https_client(client_context(pki, pki.server_only)) as impostor:
        with pytest.raises(aiohttp.ClientError):
            async with impostor.get(url(server, "/pods")) as response:
                await response.read()


async def test_reload_certificate_applies_to_new_connections(
    server: KubeletServer, pki: Pki, client: aiohttp.ClientSession
) -> None:
    assert common_name(await served_certificate(server, pki)) == "vkpy-kubelet"
    server.reload_certificate(pki.rotated.cert, pki.rotated.key)
    assert common_name(await served_certificate(server, pki)) == "vkpy-kubelet-rotated"
    assert (server.tls_cert, server.tls_key) == (pki.rotated.cert, pki.rotated.key)
    async with client.get(url(server, "/healthz")) as response:
        assert response.status == 200


async def test_reload_with_a_mismatched_key_keeps_the_old_certificate(
    server: KubeletServer, pki: Pki
) -> None:
    with pytest.raises(ssl.SSLError):
        server.reload_certificate(pki.rotated.cert, pki.server.key)
    with pytest.raises(FileNotFoundError):
        server.reload_certificate(pki.rotated.cert, Path("/nonexistent/tls.key"))
    assert common_name(await served_certificate(server, pki)) == "vkpy-kubelet"
    assert server.tls_cert == pki.server.cert


async def test_reload_before_start_is_used_at_start(backend: FakeBackend, pki: Pki) -> None:
    server = KubeletServer(
        backend, "127.0.0.1", 0, tls_cert=pki.server.cert, tls_key=pki.server.key, client_ca=pki.ca.files.cert
    )
    server.reload_certificate(pki.rotated.cert, pki.rotated.key)
    await server.start()
    try:
        assert common_name(await served_certificate(server, pki)) == "vkpy-kubelet-rotated"
    finally:
        await server.stop()


async def test_self_signed_certificate_when_none_is_given(
    start_server: StartServer, backend: FakeBackend, pki: Pki
) -> None:
    with capture_logs() as logs:
        server = await start_server(backend, tls_cert=None, tls_key=None)
    warning = next(entry for entry in logs if entry["event"] == "kubelet.self_signed_certificate")
    assert warning["log_level"] == "warning"
    assert warning["hosts"] == ["127.0.0.1", "localhost", socket.gethostname()]

    # A client that verifies the kubelet (the apiserver with --kubelet-certificate-authority) refuses it...
    async with https_client(client_context(pki, pki.client)) as verifying:
        with pytest.raises(aiohttp.ClientConnectorCertificateError):
            await verifying.get(url(server, "/healthz"))
    # ...one that does not verify gets in, still presenting its client certificate.
    trusting = client_context(pki, pki.client)
    trusting.check_hostname = False
    trusting.verify_mode = ssl.CERT_NONE
    async with https_client(trusting) as client, client.get(logs_url(server)) as response:
        assert response.status == 200
    cert = await served_certificate_insecure(server, pki)
    assert cert.issuer == cert.subject
    # Then rotation replaces it with a real one.
    server.reload_certificate(pki.server.cert, pki.server.key)
    async with (
        https_client(client_context(pki, pki.client)) as verifying,
        verifying.get(url(server, "/healthz")) as response,
    ):
        assert response.status == 200


async def served_certificate_insecure(server: KubeletServer, pki: Pki) -> x509.Certificate:
    context = client_context(pki, pki.client)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    _, writer = await asyncio.open_connection("127.0.0.1", server.port, ssl=context)
    try:
        return x509.load_der_x509_certificate(
            writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
        )
    finally:
        writer.close()
        await writer.wait_closed()


def test_tls_cert_and_key_go_together(backend: FakeBackend, pki: Pki) -> None:
    with pytest.raises(ConfigError, match="tls_cert and tls_key go together"):
        KubeletServer(backend, "127.0.0.1", 0, tls_cert=pki.server.cert, client_ca=pki.ca.files.cert)
    with pytest.raises(ConfigError, match="tls_cert and tls_key go together"):
        KubeletServer(backend, "127.0.0.1", 0, tls_key=pki.server.key, client_ca=pki.ca.files.cert)


def test_no_client_ca_needs_allow_anonymous(backend: FakeBackend) -> None:
    with pytest.raises(ConfigError, match=r"kubelet.client_ca is not set and allow_anonymous is false"):
        KubeletServer(backend, "127.0.0.1", 10250)


def test_port_must_be_a_tcp_port(backend: FakeBackend, pki: Pki) -> None:
    with pytest.raises(ConfigError, match=r"kubelet\.port: 70000 is not a TCP port"):
        KubeletServer(backend, "127.0.0.1", 70000, client_ca=pki.ca.files.cert)


def test_paths_may_be_strings(backend: FakeBackend, pki: Pki) -> None:
    server = KubeletServer(
        backend,
        "127.0.0.1",
        10250,
        tls_cert=str(pki.server.cert),
        tls_key=str(pki.server.key),
        client_ca=str(pki.ca.files.cert),
    )
    assert server.tls_cert == pki.server.cert
    assert server.client_ca == pki.ca.files.cert
    assert server.port == 10250


async def test_unreadable_certificate_is_a_config_error(
    backend: FakeBackend, pki: Pki, tmp_path: Path
) -> None:
    missing = tmp_path / "missing.crt"
    server = KubeletServer(
        backend, "127.0.0.1", 0, tls_cert=missing, tls_key=pki.server.key, client_ca=pki.ca.files.cert
    )
    with pytest.raises(ConfigError, match=f"kubelet.tls_cert {missing}"):
        await server.start()
    bad_ca = tmp_path / "ca.crt"
    bad_ca.write_text("not a certificate")
    server = KubeletServer(backend, "127.0.0.1", 0, client_ca=bad_ca)
    with pytest.raises(ConfigError, match=f"kubelet.client_ca {bad_ca}"):
        await server.start()


async def test_a_busy_port_is_a_config_error(server: KubeletServer, backend: FakeBackend, pki: Pki) -> None:
    second = KubeletServer(
        backend,
        "127.0.0.1",
        server.port,
        tls_cert=pki.server.cert,
        tls_key=pki.server.key,
        client_ca=pki.ca.files.cert,
    )
    with pytest.raises(ConfigError, match=f"cannot listen on 127.0.0.1:{server.port}"):
        await second.start()


async def test_lifecycle(backend: FakeBackend, pki: Pki) -> None:
    server = KubeletServer(
        backend, "127.0.0.1", 0, tls_cert=pki.server.cert, tls_key=pki.server.key, client_ca=pki.ca.files.cert
    )
    assert server.port == 0
    await server.start()
    port = server.port
    assert port != 0
    with pytest.raises(RuntimeError, match="already running"):
        await server.start()
    await server.stop()
    await server.stop()  # twice is fine
    with pytest.raises(ConnectionRefusedError):
        await asyncio.open_connection("127.0.0.1", port)
    await server.start()  # and it can start again
    try:
        async with (
            https_client(client_context(pki, pki.client)) as client,
            client.get(url(server, "/healthz")) as response,
        ):
            assert response.status == 200
    finally:
        await server.stop()
