"""The watch machinery against the real apiserver: relist on 410 Gone, bookmarks, reconnection."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from vkpy.kube import KubeClient
from vkpy.testing.cluster import ControlPlane
from vkpy.testing.pki import CertPair
from vkpy.watching import Backoff, Watcher


async def test_an_expired_resource_version_relists(k8s_cluster: ControlPlane, k8s_namespace: str) -> None:
    await asyncio.to_thread(k8s_cluster.kubectl, "create", "configmap", "before", "-n", k8s_namespace)
    await asyncio.to_thread(k8s_cluster.compact_etcd)
    client = await KubeClient.from_kubeconfig(k8s_cluster.admin_kubeconfig)
    synced: list[list[dict[str, Any]]] = []
    events: list[tuple[str, str]] = []
    seen = asyncio.Event()

    def on_event(kind: str, obj: dict[str, Any]) -> None:
        events.append((kind, obj["metadata"]["name"]))
        if obj["metadata"]["name"] == "after-relist":
            seen.set()

    watcher = Watcher(
        client=client,
        path=f"/api/v1/namespaces/{k8s_namespace}/configmaps",
        query={},
        on_event=on_event,
        on_synced=lambda items: synced.append(items),
        name="test",
        # Older than etcd's compacted history: the server answers 410 Gone.
        resource_version="1",
        backoff=Backoff(initial=0.05, maximum=0.2),
    )
    task = asyncio.create_task(watcher.run())
    try:
        async with asyncio.timeout(30):
            while not synced:
                await asyncio.sleep(0.05)
        assert watcher.relists == 1
        assert "before" in {item["metadata"]["name"] for item in synced[0]}
        await asyncio.to_thread(
            k8s_cluster.kubectl, "create", "configmap", "after-relist", "-n", k8s_namespace
        )
        await asyncio.wait_for(seen.wait(), 30)
        assert ("ADDED", "after-relist") in events
    finally:
        watcher.stop()
        task.cancel()
        await client.close()


def test_backoff_is_capped_and_jittered() -> None:
    backoff = Backoff(initial=1, maximum=30)
    assert backoff.delay(0, jitter=1.0) == 1
    assert backoff.delay(3, jitter=1.0) == 8
    assert backoff.delay(20, jitter=1.0) == 30
    assert backoff.delay(20, jitter=0.0) == 15


async def test_a_silently_stalled_watch_is_restarted(
    k8s_cluster: ControlPlane, k8s_namespace: str, tmp_path: Path
) -> None:
    from vkpy.testing.pki import write_kubeconfig
    from vkpy.testing.sshd import TcpRelay

    port = int(k8s_cluster.server.rsplit(":", 1)[1])
    with TcpRelay(port) as relay:
        kubeconfig = write_kubeconfig(
            tmp_path / "via-relay",
            f"https://127.0.0.1:{relay.port}",
            k8s_cluster.ca.files.cert,
            "admin",
            CertPair(k8s_cluster.workdir / "pki" / "admin.crt", k8s_cluster.workdir / "pki" / "admin.key"),
        )
        client = await KubeClient.from_kubeconfig(kubeconfig)
        synced = asyncio.Event()
        seen = asyncio.Event()

        def on_event(kind: str, obj: dict[str, Any]) -> None:
            if obj["metadata"]["name"] == "during-stall":
                seen.set()

        watcher = Watcher(
            client=client,
            path=f"/api/v1/namespaces/{k8s_namespace}/configmaps",
            query={},
            on_event=on_event,
            on_synced=lambda items: synced.set(),
            name="stall-test",
            idle_timeout=2,
            backoff=Backoff(initial=0.1, maximum=0.5),
        )
        task = asyncio.create_task(watcher.run())
        try:
            await asyncio.wait_for(synced.wait(), 30)
            relay.stall()  # the connection stays open; nothing moves, nothing is closed
            await asyncio.to_thread(
                k8s_cluster.kubectl, "create", "configmap", "during-stall", "-n", k8s_namespace
            )
            async with asyncio.timeout(30):
                while not watcher.restarts.get("disconnected"):
                    await asyncio.sleep(0.1)
            relay.restore()
            await asyncio.wait_for(seen.wait(), 30)
        finally:
            watcher.stop()
            task.cancel()
            await client.close()
