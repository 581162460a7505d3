"""Two vkpy replicas for the same nodes: one leads, the other takes over when the leader dies, and
no pod is ever created twice."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from pathlib import Path
from typing import Any

import pytest
from helpers import jsonpath, pod_manifest, probe_calls, wait_node_ready, wait_phase
from ops_support import RunVkpy, base_config, local_node, log_events, wait_until

from vkpy.node.apiclient import ObservedClient
from vkpy.node.leader import ElectionSettings, LeaderElector, LeadershipLost
from vkpy.testing.cluster import ControlPlane

LEASE_DURATION = 6.0
RENEW_INTERVAL = 1.0
NODES = ("ha-a", "ha-b")


def _replica(cluster: ControlPlane, identity: Path, state: Path, lease: str) -> dict[str, Any]:
    config = base_config(cluster, serving=cluster.serving_certificate("vkpy-ha"))
    config["kubeconfig"] = str(identity)
    config["leader_election"] = {
        "enabled": True,
        "namespace": "vkpy-system",
        "name": lease,
        "lease_duration": f"{LEASE_DURATION:g}s",
        "renew_interval": f"{RENEW_INTERVAL:g}s",
    }
    # Both replicas drive the same devices: here, the same local state folder.
    config["nodes"] = [local_node(name, state) for name in NODES]
    return config


def _port_of(cluster: ControlPlane, node: str) -> int:
    value = jsonpath(cluster, "node", node, "{.status.daemonEndpoints.kubeletEndpoint.Port}")
    return int(value or 0)


def _first(text: str, event: str) -> int:
    """The position of the first log line with ``event`` (so that order can be compared)."""
    position = text.find(f'"event": "{event}"')
    return position if position >= 0 else len(text) + 1


def test_the_standby_takes_over_from_a_killed_leader_and_nothing_runs_twice(
    k8s_cluster: ControlPlane,
    k8s_namespace: str,
    shared_identity: Path,
    run_vkpy: RunVkpy,
    probe_dir: Path,
    tmp_path: Path,
) -> None:
    lease = "ha-kill"
    first = run_vkpy(_replica(k8s_cluster, shared_identity, tmp_path / "state", lease), name="replica-1")
    first.wait_logged('"leader.acquired"', timeout=60)
    for node in NODES:
        wait_node_ready(k8s_cluster, node)
    second_config = _replica(k8s_cluster, shared_identity, tmp_path / "state", lease)
    second = run_vkpy(second_config, name="replica-2")
    second.wait_logged('"leader.standby"', timeout=60)

    script = "echo started; i=0; while true; do i=$((i+1)); echo tick $i; sleep 1; done"
    for index, node in enumerate(NODES):
        k8s_cluster.apply(pod_manifest(f"work-{index}", node, ["sh", "-c", script], k8s_namespace))
    for index in range(len(NODES)):
        wait_phase(k8s_cluster, f"work-{index}", k8s_namespace, "Running")
    assert all(_port_of(k8s_cluster, node) == first.config["kubelet"]["port"] for node in NODES)

    # The leader dies without a word.
    killed_at = time.monotonic()
    first.kill()
    second.wait_logged('"leader.acquired"', timeout=LEASE_DURATION + 10)
    took_over_after = time.monotonic() - killed_at
    # Not before the Lease could have expired, and within its duration of the last renewal.
    assert (
        LEASE_DURATION - 2 * RENEW_INTERVAL - 0.5
        <= took_over_after
        <= LEASE_DURATION + 2 * RENEW_INTERVAL + 2
    )

    # The nodes now point the API server at the new leader's kubelet port...
    new_port = second_config["kubelet"]["port"]
    wait_until(
        lambda: all(_port_of(k8s_cluster, node) == new_port for node in NODES),
        timeout=20,
        what="the nodes to advertise the new leader's port",
    )
    for node in NODES:
        wait_node_ready(k8s_cluster, node)
    # ...which adopted the running pods (asking each device first) instead of creating them again.
    wait_until(
        lambda: len(log_events(second.log_text(), "pod.adopted")) >= len(NODES),
        timeout=30,
        what="the pods to be adopted",
    )
    for index in range(len(NODES)):
        assert jsonpath(k8s_cluster, "pod", f"work-{index}", "{.status.phase}", k8s_namespace) == "Running"
    logs = k8s_cluster.kubectl("logs", "work-0", "-n", k8s_namespace).stdout
    assert logs.startswith("started\ntick 1\n")

    # The new leader works: a new pod runs, a deleted one goes.
    k8s_cluster.apply(pod_manifest("after", NODES[0], ["sh", "-c", "echo after"], k8s_namespace))
    wait_phase(k8s_cluster, "after", k8s_namespace, "Succeeded")
    k8s_cluster.kubectl("delete", "pod", "work-1", "-n", k8s_namespace, "--grace-period=1", "--wait=true")

    # Nothing ran twice: one create per pod over both replicas, and the standby touched no node
    # before it led.
    for node in NODES:
        creates = [call["uid"] for call in probe_calls(probe_dir, node, "create_pod")]
        assert len(creates) == len(set(creates)), f"{node}: a pod was created twice: {creates}"
    assert len(probe_calls(probe_dir, NODES[0], "create_pod")) == 2  # work-0 and after
    text = second.log_text()
    assert _first(text, "leader.acquired") < _first(text, "node.adopted")
    assert _first(text, "leader.acquired") < _first(text, "pod.adopted")
    # Stop the endless pod on its device while a leader is there to do it.
    k8s_cluster.kubectl("delete", "pod", "work-0", "-n", k8s_namespace, "--grace-period=1", "--wait=true")


def test_a_leader_stopped_cleanly_hands_over_at_once(
    k8s_cluster: ControlPlane, shared_identity: Path, run_vkpy: RunVkpy, tmp_path: Path
) -> None:
    lease = "ha-term"
    first = run_vkpy(_replica(k8s_cluster, shared_identity, tmp_path / "state", lease), name="replica-1")
    first.wait_logged('"leader.acquired"', timeout=60)
    second = run_vkpy(_replica(k8s_cluster, shared_identity, tmp_path / "state", lease), name="replica-2")
    second.wait_logged('"leader.standby"', timeout=60)

    stopped_at = time.monotonic()
    assert first.stop(signal.SIGTERM) == 0
    assert '"leader.released"' in first.log_text()
    second.wait_logged('"leader.acquired"', timeout=LEASE_DURATION)
    # The released Lease is taken at the next try, long before it would have expired.
    assert time.monotonic() - stopped_at < LEASE_DURATION - RENEW_INTERVAL
    lease_obj = k8s_cluster.kubectl_json("get", "lease", lease, "-n", "vkpy-system")
    assert lease_obj["spec"]["holderIdentity"] != ""
    assert lease_obj["spec"]["leaseTransitions"] >= 1


def _leading(elector: LeaderElector) -> bool:
    # A call, not the attribute: mypy would narrow it and call the later checks unreachable.
    return elector.is_leader


async def test_only_one_elector_leads_and_a_deposed_leader_knows_it(
    k8s_cluster: ControlPlane, shared_identity: Path
) -> None:
    """The election itself, two electors in one process against the real API server."""
    clients = [await ObservedClient.open(shared_identity, identity=f"elector-{i}") for i in range(2)]

    def settings(identity: str) -> ElectionSettings:
        return ElectionSettings(
            namespace="vkpy-system", name="ha-unit", identity=identity, lease_duration=3.0, renew_interval=0.5
        )

    one, two = LeaderElector(clients[0], settings("one")), LeaderElector(clients[1], settings("two"))
    tasks: list[asyncio.Task[None]] = []
    try:
        await one.acquire()
        campaign = asyncio.create_task(two.acquire())
        holding = asyncio.create_task(one.hold())
        tasks += [campaign, holding]
        await asyncio.sleep(4.0)  # longer than the lease: the leader's renewals keep it
        assert not campaign.done()
        assert _leading(one)
        assert not _leading(two)
        assert two.leader == "one"

        # Someone takes the Lease behind the leader's back (an operator, a replica with a stale
        # view): the leader must notice and stop.
        lease = await clients[1].get("/apis/coordination.k8s.io/v1/namespaces/vkpy-system/leases/ha-unit")
        lease["spec"]["holderIdentity"] = "intruder"
        await clients[1].put("/apis/coordination.k8s.io/v1/namespaces/vkpy-system/leases/ha-unit", lease)
        with pytest.raises(LeadershipLost, match="intruder"):
            async with asyncio.timeout(5):
                await holding
        assert not _leading(one)
        # The intruder never renews: "two" gets the Lease once it has expired.
        async with asyncio.timeout(10):
            await campaign
        assert _leading(two)
        await two.release()
        lease = await clients[1].get("/apis/coordination.k8s.io/v1/namespaces/vkpy-system/leases/ha-unit")
        assert lease["spec"]["holderIdentity"] == ""
    finally:
        for task in tasks:
            if not task.done():
                task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        for client in clients:
            await client.close()
