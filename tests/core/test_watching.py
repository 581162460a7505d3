"""The watch machinery against the real apiserver: relist on 410 Gone, bookmarks, reconnection."""

from __future__ import annotations

import asyncio
from typing import Any

from vkpy.kube import KubeClient
from vkpy.testing.cluster import ControlPlane
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
