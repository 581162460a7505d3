"""`kubectl logs` through a real kube-apiserver to the kubelet API: the apiserver finds the server from
the Node's InternalIP and daemonEndpoints port, verifies its certificate against the cluster CA and
presents its kubelet-client certificate."""

from __future__ import annotations

import asyncio
import json
import subprocess
import uuid
from collections.abc import AsyncIterator

import attrs
import pytest
from kubelet_support import FakeBackend, StartServer, line, make_pod

from vkpy import LogsNotAvailable
from vkpy.kubelet import KubeletServer
from vkpy.testing.cluster import ControlPlane

pytestmark = pytest.mark.cluster


@attrs.frozen
class Registered:
    cluster: ControlPlane
    namespace: str
    node: str
    backend: FakeBackend

    async def kubectl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        # kubectl blocks; the kubelet server it reaches runs on this event loop.
        return await asyncio.to_thread(self.cluster.kubectl, *args, check=check)

    async def register(self, server: KubeletServer) -> None:
        node = {"apiVersion": "v1", "kind": "Node", "metadata": {"name": self.node}}
        await asyncio.to_thread(self.cluster.kubectl, "create", "-f", "-", input=json.dumps(node))
        status = {
            "status": {
                "addresses": [{"type": "InternalIP", "address": "127.0.0.1"}],
                "daemonEndpoints": {"kubeletEndpoint": {"Port": server.port}},
            }
        }
        await self.kubectl(
            "patch", "node", self.node, "--subresource=status", "--type=merge", "-p", json.dumps(status)
        )
        pod = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "web", "namespace": self.namespace},
            "spec": {
                "nodeName": self.node,
                "initContainers": [{"name": "setup", "image": "busybox"}],
                "containers": [{"name": "app", "image": "busybox"}],
            },
        }
        await asyncio.to_thread(self.cluster.kubectl, "create", "-f", "-", input=json.dumps(pod))


@pytest.fixture
async def registered(k8s_cluster: ControlPlane, k8s_namespace: str) -> AsyncIterator[Registered]:
    node = f"vkpy-kubelet-{uuid.uuid4().hex[:8]}"
    setup = Registered(k8s_cluster, k8s_namespace, node, FakeBackend(pods=[make_pod(k8s_namespace, "web")]))
    yield setup
    await setup.kubectl("delete", "node", node, "--wait=false", check=False)


async def start_verified(start_server: StartServer, registered: Registered) -> KubeletServer:
    serving = registered.cluster.serving_certificate(registered.node)
    server = await start_server(
        registered.backend,
        tls_cert=serving.cert,
        tls_key=serving.key,
        client_ca=registered.cluster.ca.files.cert,
    )
    await registered.register(server)
    return server


async def test_kubectl_logs(start_server: StartServer, registered: Registered) -> None:
    await start_verified(start_server, registered)
    ns = registered.namespace
    logs = await registered.kubectl("logs", "-n", ns, "web", "-c", "app")
    assert logs.stdout == "hello\nworld\n"

    logs = await registered.kubectl(
        "logs", "-n", ns, "web", "-c", "app", "--timestamps", "--tail=1", "--since=1m", "--limit-bytes=44"
    )
    # The fake backend ignores tail/since; the server applies timestamps and the byte limit.
    assert logs.stdout == "2026-11-28T08:00:00.123456000Z hello\n2026-11"
    options = registered.backend.calls[-1][2]
    assert (options.tail_lines, options.timestamps, options.limit_bytes) == (1, True, 44)
    assert options.since is not None

    await registered.kubectl("logs", "-n", ns, "web", "-c", "setup", "--previous")
    assert registered.backend.calls[-1][:2] == (f"{ns}/web", "setup")
    assert registered.backend.calls[-1][2].previous is True


async def test_kubectl_logs_follow_is_live(start_server: StartServer, registered: Registered) -> None:
    await start_verified(start_server, registered)
    backend = registered.backend
    backend.late_lines = [line("later\n", 9)]
    backend.follow_forever = False
    cluster = registered.cluster
    process = await asyncio.create_subprocess_exec(
        str(cluster.bin_dir / "kubectl"),
        f"--kubeconfig={cluster.admin_kubeconfig}",
        "logs",
        "-f",
        "-n",
        registered.namespace,
        "web",
        "-c",
        "app",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert process.stdout is not None
        assert await asyncio.wait_for(process.stdout.readline(), 30) == b"hello\n"
        assert await asyncio.wait_for(process.stdout.readline(), 10) == b"world\n"
        assert not backend.closed.is_set()
        backend.gate.set()
        assert await asyncio.wait_for(process.stdout.read(), 30) == b"later\n"
        assert await asyncio.wait_for(process.wait(), 30) == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert backend.calls[-1][2].follow is True


async def test_kubectl_logs_stopped_by_the_user_closes_the_generator(
    start_server: StartServer, registered: Registered
) -> None:
    await start_verified(start_server, registered)
    cluster = registered.cluster
    process = await asyncio.create_subprocess_exec(
        str(cluster.bin_dir / "kubectl"),
        f"--kubeconfig={cluster.admin_kubeconfig}",
        "logs",
        "-f",
        "-n",
        registered.namespace,
        "web",
        stdout=asyncio.subprocess.PIPE,
    )
    assert process.stdout is not None
    assert await asyncio.wait_for(process.stdout.readline(), 30) == b"hello\n"
    process.terminate()  # Ctrl-C: kubectl -> apiserver -> kubelet connections close in turn
    await process.wait()
    await asyncio.wait_for(registered.backend.closed.wait(), 30)


async def test_missing_logs_reach_kubectl_with_their_reason(
    start_server: StartServer, registered: Registered
) -> None:
    await start_verified(start_server, registered)
    registered.backend.fail_on_call = LogsNotAvailable(
        'previous terminated container "app" in pod "web" not found'
    )
    result = await registered.kubectl("logs", "-n", registered.namespace, "web", "--previous", check=False)
    assert result.returncode != 0
    # The apiserver forwards the kubelet's text only for 400 and 500: vkpy answers 400, as the
    # kubelet does, so the user reads the reason.
    assert "Error from server (BadRequest)" in result.stderr
    assert 'previous terminated container "app" in pod "web" not found' in result.stderr


async def test_the_apiserver_refuses_a_self_signed_kubelet(
    start_server: StartServer, registered: Registered
) -> None:
    server = await start_server(
        registered.backend, tls_cert=None, tls_key=None, client_ca=registered.cluster.ca.files.cert
    )
    await registered.register(server)
    result = await registered.kubectl("logs", "-n", registered.namespace, "web", check=False)
    assert result.returncode != 0
    assert "x509" in result.stderr or "certificate" in result.stderr
    assert registered.backend.calls == []
