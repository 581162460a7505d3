"""The Node a vkpy process registers, as `kubectl` shows it."""

from __future__ import annotations

import json
from pathlib import Path

from helpers import StartVkpy, jsonpath, node_entry, wait_node_ready

from vkpy.testing import wait_for
from vkpy.testing.cluster import ControlPlane


def test_a_node_registers_like_a_kubelet(k8s_cluster: ControlPlane, start_vkpy: StartVkpy) -> None:
    start_vkpy(["node-reg"])
    wait_node_ready(k8s_cluster, "node-reg")

    node = k8s_cluster.kubectl_json("get", "node", "node-reg")
    labels = node["metadata"]["labels"]
    assert labels["type"] == "virtual-kubelet"
    assert labels["kubernetes.io/os"] == "linux"
    assert labels["kubernetes.io/hostname"] == "node-reg"
    assert labels["vkpy.io/transport"] == "local"
    assert "kubernetes.io/arch" in labels
    # (The apiserver adds node.kubernetes.io/not-ready at creation; the node controller lifts it.)
    assert {"key": "virtual-kubelet.io/provider", "value": "vkpy", "effect": "NoSchedule"} in node["spec"][
        "taints"
    ]
    status = node["status"]
    assert status["capacity"] == {"cpu": "4", "memory": "4Gi", "pods": "20"}
    assert status["allocatable"] == status["capacity"]
    assert {"type": "InternalIP", "address": "127.0.0.1"} in status["addresses"]
    assert status["daemonEndpoints"]["kubeletEndpoint"]["Port"] > 0
    assert status["nodeInfo"]["kubeletVersion"].startswith("v1.")
    assert status["nodeInfo"]["operatingSystem"] == "linux"

    lease = k8s_cluster.kubectl_json("get", "lease", "node-reg", "-n", "kube-node-lease")
    assert lease["spec"]["leaseDurationSeconds"] == 40
    assert lease["spec"]["holderIdentity"] == "node-reg"
    assert lease["metadata"]["ownerReferences"][0]["uid"] == node["metadata"]["uid"]
    first = lease["spec"]["renewTime"]
    wait_for(
        lambda: jsonpath(k8s_cluster, "lease", "node-reg", "{.spec.renewTime}", "kube-node-lease") != first,
        timeout=25,
        what="the lease to be renewed",
    )


def test_configured_labels_and_taints(
    k8s_cluster: ControlPlane, start_vkpy: StartVkpy, tmp_path: Path
) -> None:
    entry = node_entry(
        "node-cfg",
        tmp_path / "state",
        labels={"lab": "bench-3"},
        taints=[{"key": "lab/only", "value": "yes", "effect": "NoExecute"}],
    )
    start_vkpy([], nodes=[entry])
    wait_node_ready(k8s_cluster, "node-cfg")
    node = k8s_cluster.kubectl_json("get", "node", "node-cfg")
    assert node["metadata"]["labels"]["lab"] == "bench-3"
    taints = [t for t in node["spec"]["taints"] if not t["key"].startswith("node.kubernetes.io/")]
    assert taints == [{"key": "lab/only", "value": "yes", "effect": "NoExecute"}]


def test_unreachable_device_makes_the_node_not_ready_and_back(
    k8s_cluster: ControlPlane, start_vkpy: StartVkpy, probe_dir: Path
) -> None:
    start_vkpy(["node-health"])
    wait_node_ready(k8s_cluster, "node-health")
    (probe_dir / "node-health.unreachable").write_text("serial cable unplugged")

    ready = "{.status.conditions[?(@.type=='Ready')]}"
    wait_for(
        lambda: '"status":"False"' in jsonpath(k8s_cluster, "node", "node-health", ready),
        timeout=30,
        what="node NotReady",
    )
    condition = jsonpath(k8s_cluster, "node", "node-health", ready)
    assert "ProbeUnreachable" in condition
    assert "serial cable unplugged" in condition

    (probe_dir / "node-health.unreachable").unlink()
    wait_node_ready(k8s_cluster, "node-health", timeout=30)


def test_a_deleted_node_is_registered_again(k8s_cluster: ControlPlane, start_vkpy: StartVkpy) -> None:
    start_vkpy(["node-again"])
    wait_node_ready(k8s_cluster, "node-again")
    old_uid = jsonpath(k8s_cluster, "node", "node-again", "{.metadata.uid}")
    k8s_cluster.kubectl("delete", "node", "node-again")

    def new_uid() -> str:
        uid = jsonpath(k8s_cluster, "node", "node-again", "{.metadata.uid}")
        return uid if uid and uid != old_uid else ""

    uid = wait_for(new_uid, timeout=30, what="the node to be registered again")
    wait_for(
        lambda: (
            jsonpath(
                k8s_cluster, "lease", "node-again", "{.metadata.ownerReferences[0].uid}", "kube-node-lease"
            )
            == uid
        ),
        timeout=30,
        what="the lease to be re-owned",
    )
    wait_node_ready(k8s_cluster, "node-again")


def test_many_nodes_share_one_identity(
    k8s_cluster: ControlPlane, start_vkpy: StartVkpy, shared_identity: Path
) -> None:
    """A ServiceAccount bound to deploy/rbac.yaml runs several nodes in one process."""
    start_vkpy(["shared-a", "shared-b", "shared-c"], identity=shared_identity)
    for name in ("shared-a", "shared-b", "shared-c"):
        wait_node_ready(k8s_cluster, name)


def test_a_device_that_comes_back_reports_its_capacity_again(
    k8s_cluster: ControlPlane, start_vkpy: StartVkpy, probe_dir: Path, tmp_path: Path
) -> None:
    (probe_dir / "node-cap.unreachable").write_text("not plugged in yet")
    entry = node_entry("node-cap", tmp_path / "state")
    del entry["capacity"]  # the device's report decides
    start_vkpy([], nodes=[entry])
    # Plugged in only once vkpy has seen it missing: otherwise there is nothing to come back from.
    ready = "{.status.conditions[?(@.type=='Ready')].status}"
    wait_for(
        lambda: jsonpath(k8s_cluster, "node", "node-cap", ready) == "False",
        timeout=30,
        what="the node NotReady",
    )

    (probe_dir / "node-cap.capacity").write_text(json.dumps({"cpu": "3", "memory": "3Gi", "pods": "7"}))
    (probe_dir / "node-cap.unreachable").unlink()
    wait_node_ready(k8s_cluster, "node-cap", timeout=30)
    wait_for(
        lambda: jsonpath(k8s_cluster, "node", "node-cap", "{.status.capacity.pods}") == "7",
        timeout=30,
        what="the device's capacity",
    )
