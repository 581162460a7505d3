"""Which Events a node writes for its pods, per its `events` setting (`kubectl get events`)."""

from __future__ import annotations

import asyncio
import datetime
from pathlib import Path
from typing import Any

import pytest
from helpers import StartVkpy, node_entry, pod_manifest, wait_node_ready

from vkpy.testing import wait_for
from vkpy.testing.cluster import ControlPlane


def _events(cluster: ControlPlane, namespace: str, pod: str) -> list[dict[str, Any]]:
    listed = cluster.kubectl_json(
        "get", "events", "-n", namespace, "--field-selector", f"involvedObject.name={pod}"
    )
    return [e for e in listed["items"] if e.get("source", {}).get("component") == "vkpy"]


def _reasons(cluster: ControlPlane, namespace: str, pod: str) -> list[tuple[str, str]]:
    return sorted((e["type"], e["reason"]) for e in _events(cluster, namespace, pod))


@pytest.mark.parametrize(
    ("level", "expected"),
    [
        # brief, the default: the one event saying the device runs the pod, and every warning.
        (None, [("Normal", "Started"), ("Warning", "BackOff")]),
        (
            "all",
            [("Normal", "Created"), ("Normal", "Killing"), ("Normal", "Started"), ("Warning", "BackOff")],
        ),
        ("warnings", [("Warning", "BackOff")]),
    ],
)
def test_events_setting_chooses_the_normal_events_and_keeps_warnings(
    k8s_cluster: ControlPlane,
    k8s_namespace: str,
    start_vkpy: StartVkpy,
    tmp_path: Path,
    level: str | None,
    expected: list[tuple[str, str]],
) -> None:
    node = f"events-{level or 'default'}"
    entry = node_entry(node, tmp_path / "state")
    if level is not None:
        entry["events"] = level
    start_vkpy([], nodes=[entry])
    wait_node_ready(k8s_cluster, node)
    # Fails once (a Warning BackOff), then runs until deleted (Killing).
    mark = tmp_path / "ran-once"
    script = f"if [ -e {mark} ]; then exec sleep 3600; fi; touch {mark}; exit 3"
    k8s_cluster.apply(
        pod_manifest("flaky", node, ["sh", "-c", script], k8s_namespace, restart_policy="Always")
    )
    wait_for(
        lambda: any(
            c.get("restartCount", 0) >= 1 and "running" in c.get("state", {})
            for c in k8s_cluster.kubectl_json("get", "pod", "flaky", "-n", k8s_namespace)["status"].get(
                "containerStatuses", []
            )
        ),
        timeout=60,
        what="flaky restarted once and running",
    )
    k8s_cluster.kubectl("delete", "pod", "flaky", "-n", k8s_namespace, "--wait=true", "--timeout=60s")
    wait_for(
        lambda: sorted(set(_reasons(k8s_cluster, k8s_namespace, "flaky"))) == expected,
        timeout=30,
        what=f"events {expected}",
    )
    started = [e for e in _events(k8s_cluster, k8s_namespace, "flaky") if e["reason"] == "Started"]
    if level is None:
        # One for the pod, not one per (re)start; it names the node and transport.
        assert len(started) == 1
        assert started[0]["message"] == f"Started container main on the device of node {node} via local"
    elif level == "all":
        assert len(started) == 2  # the first run and the restart


async def test_events_give_way_to_urgent_writes_and_keep_their_time(
    k8s_cluster: ControlPlane, k8s_namespace: str
) -> None:
    """An Event emitted while a pod's status write runs waits for it (and a short pause after), then
    goes out stamped with the time it happened, not the time it was sent."""
    from vkpy.kube import KubeClient, parse_time
    from vkpy.pods.events import SETTLE_SECONDS, EventRecorder

    client = await KubeClient.from_kubeconfig(k8s_cluster.admin_kubeconfig)
    recorder = EventRecorder(client, "events-defer", "all")
    pod = {"metadata": {"namespace": k8s_namespace, "name": "deferred", "uid": "u-1", "resourceVersion": "1"}}

    def sent() -> list[dict[str, Any]]:
        return _events(k8s_cluster, k8s_namespace, "deferred")

    try:
        with recorder.urgent():
            recorder.emit(pod, "Normal", "Created", "while a status write runs")
            emitted = datetime.datetime.now(datetime.UTC).replace(microsecond=0)
            # Held while the urgent write lasts (3 s: well under MAX_DEFERRAL_SECONDS, and long
            # enough that a stamp taken at sending would be seconds off).
            await asyncio.sleep(3)
            assert await asyncio.to_thread(sent) == []
        await asyncio.sleep(SETTLE_SECONDS)
        await recorder.drain()
        events = await asyncio.to_thread(sent)
        assert [e["reason"] for e in events] == ["Created"]
        stamp = parse_time(events[0]["firstTimestamp"])
        assert stamp is not None
        assert abs((stamp - emitted).total_seconds()) <= 1
    finally:
        await client.close()
