"""The JSON fast paths against what the real API server sends: the head of an object (UID and
resourceVersion read without decoding), the watch event around it, and the worker's view of a pod
after its status patch, built without decoding the answer."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from vkpy.kube import MERGE_PATCH, KubeClient, event_head, now, object_head
from vkpy.pods.status import Observation, compute_status
from vkpy.pods.worker import _as_written
from vkpy.testing.cluster import ControlPlane
from vkpy.types import PodStatusReport, Running


def _pod(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        # generateName, labels and annotations: fields before and after the UID in the metadata.
        "metadata": {
            "generateName": f"{name}-",
            "labels": {"uid": "not-this-one"},
            "annotations": {"resourceVersion": "not-this-either"},
        },
        "spec": {
            "containers": [{"name": "main", "image": "busybox:1", "command": ["sleep", "1"]}],
            "automountServiceAccountToken": False,
            # No scheduler touches it, so its resourceVersion changes only by our hand.
            "schedulerName": "vkpy-test-nobody",
        },
    }


def _without_managed_fields(obj: dict[str, Any]) -> dict[str, Any]:
    return {**obj, "metadata": {k: v for k, v in obj["metadata"].items() if k != "managedFields"}}


async def test_heads_match_the_api_servers_objects_and_watch_events(
    k8s_cluster: ControlPlane, k8s_namespace: str
) -> None:
    client = await KubeClient.from_kubeconfig(k8s_cluster.admin_kubeconfig)
    try:
        path = f"/api/v1/namespaces/{k8s_namespace}/pods"
        answer = await client.request_bytes("POST", path, body=_pod("head"))
        created = json.loads(answer)
        meta = created["metadata"]
        assert object_head(answer) == (meta["uid"], meta["resourceVersion"])

        query = {"resourceVersion": "0", "fieldSelector": f"metadata.name={meta['name']}"}
        async with asyncio.timeout(30):
            async for line in client.watch_lines(path, query, timeout=30):
                event = json.loads(line)
                obj = event["object"]["metadata"]
                assert event_head(line) == (event["type"], obj["uid"], obj["resourceVersion"])
                break
    finally:
        await client.close()


async def test_the_view_after_a_status_patch_is_the_servers_object(
    k8s_cluster: ControlPlane, k8s_namespace: str
) -> None:
    client = await KubeClient.from_kubeconfig(k8s_cluster.admin_kubeconfig)
    try:
        manifest = await client.create(f"/api/v1/namespaces/{k8s_namespace}/pods", _pod("view"))
        meta = manifest["metadata"]
        # What the worker writes: the status computed for a pod whose container runs.
        desired = compute_status(
            Observation(
                manifest=manifest,
                report=PodStatusReport(containers={"main": Running(started_at=now())}),
                records={},
                host_ip="127.0.0.1",
                now=now(),
                created=True,
            )
        )
        answer = await client.request_bytes(
            "PATCH",
            f"/api/v1/namespaces/{k8s_namespace}/pods/{meta['name']}/status",
            body={
                "metadata": {"uid": meta["uid"], "resourceVersion": meta["resourceVersion"]},
                "status": desired,
            },
            content_type=MERGE_PATCH,
        )
        view = _as_written(manifest, desired, answer)
        server = json.loads(answer)
        assert view["metadata"]["resourceVersion"] == server["metadata"]["resourceVersion"]
        assert view["metadata"]["resourceVersion"] != meta["resourceVersion"]
        assert _without_managed_fields(view) == _without_managed_fields(server)
        # An answer not laid out as expected is decoded instead.
        assert _as_written(manifest, desired, json.dumps(server, sort_keys=True).encode()) == server
    finally:
        await client.close()
