"""Env resolved with kubelet semantics, init containers, and the kubelet API seen through the apiserver."""

from __future__ import annotations

import json
import ssl
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml
from helpers import TOLERATION, StartVkpy, jsonpath, pod_manifest, probe_calls, wait_node_ready, wait_phase

from vkpy.testing import wait_for
from vkpy.testing.cluster import ControlPlane

SECRET_VALUE = "s3cr3t-do-not-log-7f2a"


def test_env_is_resolved_like_the_kubelet_does(
    k8s_cluster: ControlPlane, k8s_namespace: str, start_vkpy: StartVkpy, probe_dir: Path
) -> None:
    vkpy = start_vkpy(["env-node"])
    wait_node_ready(k8s_cluster, "env-node")
    k8s_cluster.kubectl(
        "create",
        "configmap",
        "settings",
        "-n",
        k8s_namespace,
        "--from-literal=mode=fast",
        "--from-literal=level=3",
    )
    k8s_cluster.kubectl(
        "create", "secret", "generic", "creds", "-n", k8s_namespace, f"--from-literal=token={SECRET_VALUE}"
    )
    env = [
        {"name": "GREETING", "value": "hello"},
        {"name": "MESSAGE", "value": "$(GREETING) world, $(UNDEFINED) and $$(ESCAPED)"},
        {"name": "MODE", "valueFrom": {"configMapKeyRef": {"name": "settings", "key": "mode"}}},
        {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "token"}}},
        {
            "name": "MISSING_OK",
            "valueFrom": {"configMapKeyRef": {"name": "nope", "key": "x", "optional": True}},
        },
        {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": "NODE", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
        {"name": "HOST_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.hostIP"}}},
        {"name": "MEM", "valueFrom": {"resourceFieldRef": {"resource": "limits.memory", "divisor": "1Mi"}}},
    ]
    manifest = json.loads(
        pod_manifest("envy", "env-node", ["sh", "-c", "env | sort"], k8s_namespace, env=env)
    )
    container = manifest["spec"]["containers"][0]
    container["envFrom"] = [{"configMapRef": {"name": "settings"}, "prefix": "CFG_"}]
    container["args"] = []
    container["command"] = ["sh", "-c", "env | sort; echo argv $(MODE)"]
    container["resources"] = {"limits": {"memory": "64Mi"}}
    k8s_cluster.apply(json.dumps(manifest))
    wait_phase(k8s_cluster, "envy", k8s_namespace, "Succeeded")

    lines = set(k8s_cluster.kubectl("logs", "envy", "-n", k8s_namespace).stdout.splitlines())
    assert "GREETING=hello" in lines
    assert "MESSAGE=hello world, $(UNDEFINED) and $(ESCAPED)" in lines
    assert "MODE=fast" in lines
    assert f"TOKEN={SECRET_VALUE}" in lines
    assert not any(line.startswith("MISSING_OK=") for line in lines)
    assert "POD_NAME=envy" in lines
    assert "NODE=env-node" in lines
    assert "HOST_IP=127.0.0.1" in lines
    assert "MEM=64" in lines
    assert {"CFG_mode=fast", "CFG_level=3"} <= lines
    assert "argv fast" in lines
    assert not any(line.startswith("KUBECONFIG=") for line in lines), "vkpy's own environment leaked"
    # The secret reached the device, never vkpy's log.
    assert SECRET_VALUE not in vkpy.log_text()


def test_a_missing_configmap_holds_the_pod_until_it_appears(
    k8s_cluster: ControlPlane, k8s_namespace: str, start_vkpy: StartVkpy, probe_dir: Path
) -> None:
    start_vkpy(["env-wait"])
    wait_node_ready(k8s_cluster, "env-wait")
    env = [{"name": "LATE", "valueFrom": {"configMapKeyRef": {"name": "late", "key": "value"}}}]
    k8s_cluster.apply(
        pod_manifest("patient", "env-wait", ["sh", "-c", "echo got $LATE"], k8s_namespace, env=env)
    )

    reason = "{.status.containerStatuses[0].state.waiting.reason}"
    wait_for(
        lambda: (
            jsonpath(k8s_cluster, "pod", "patient", reason, k8s_namespace) == "CreateContainerConfigError"
        ),
        timeout=30,
        what="CreateContainerConfigError",
    )
    message = jsonpath(
        k8s_cluster, "pod", "patient", "{.status.containerStatuses[0].state.waiting.message}", k8s_namespace
    )
    assert "ConfigMap 'late' not found" in message
    assert probe_calls(probe_dir, "env-wait", "create_pod") == []

    k8s_cluster.kubectl("create", "configmap", "late", "-n", k8s_namespace, "--from-literal=value=finally")
    wait_phase(k8s_cluster, "patient", k8s_namespace, "Succeeded", timeout=90)
    assert k8s_cluster.kubectl("logs", "patient", "-n", k8s_namespace).stdout.strip() == "got finally"


def test_init_containers_run_first_in_order(
    k8s_cluster: ControlPlane, k8s_namespace: str, start_vkpy: StartVkpy
) -> None:
    start_vkpy(["init-node"])
    wait_node_ready(k8s_cluster, "init-node")
    manifest = json.loads(pod_manifest("staged", "init-node", ["sh", "-c", "echo main"], k8s_namespace))
    manifest["spec"]["initContainers"] = [
        {"name": "first", "image": "none", "command": ["sh", "-c", "echo first"]},
        {"name": "second", "image": "none", "command": ["sh", "-c", "echo second"]},
    ]
    k8s_cluster.apply(json.dumps(manifest))
    wait_phase(k8s_cluster, "staged", k8s_namespace, "Succeeded")
    pod = k8s_cluster.kubectl_json("get", "pod", "staged", "-n", k8s_namespace)
    inits = pod["status"]["initContainerStatuses"]
    assert [s["state"]["terminated"]["exitCode"] for s in inits] == [0, 0]
    assert inits[0]["state"]["terminated"]["finishedAt"] <= inits[1]["state"]["terminated"]["startedAt"]
    assert (
        k8s_cluster.kubectl("logs", "staged", "-n", k8s_namespace, "-c", "second").stdout.strip() == "second"
    )


def test_pods_on_nodes_that_share_one_identity(
    k8s_cluster: ControlPlane, k8s_namespace: str, start_vkpy: StartVkpy, shared_identity: Path
) -> None:
    start_vkpy(["share-x", "share-y"], identity=shared_identity)
    for node in ("share-x", "share-y"):
        wait_node_ready(k8s_cluster, node)
        k8s_cluster.apply(pod_manifest(f"on-{node}", node, ["sh", "-c", f"echo on {node}"], k8s_namespace))
    for node in ("share-x", "share-y"):
        wait_phase(k8s_cluster, f"on-{node}", k8s_namespace, "Succeeded")
        assert k8s_cluster.kubectl("logs", f"on-{node}", "-n", k8s_namespace).stdout.strip() == f"on {node}"


def test_the_kubelet_api_refuses_strangers_and_bad_queries(
    k8s_cluster: ControlPlane, k8s_namespace: str, start_vkpy: StartVkpy, tmp_path: Path
) -> None:
    vkpy = start_vkpy(["api-node"])
    wait_node_ready(k8s_cluster, "api-node")
    k8s_cluster.apply(pod_manifest("talker", "api-node", ["sh", "-c", "echo said"], k8s_namespace))
    wait_phase(k8s_cluster, "talker", k8s_namespace, "Succeeded")
    port = vkpy.config["kubelet"]["port"]

    anonymous = ssl.create_default_context(cafile=str(k8s_cluster.ca.files.cert))
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(f"https://127.0.0.1:{port}/pods", context=anonymous, timeout=10)
    assert refused.value.code == 401

    # A caller with a certificate from the cluster CA, as the apiserver presents one.
    client = k8s_cluster.ca.issue(tmp_path / "caller", "caller", "kube-apiserver-kubelet-client", client=True)
    trusted = ssl.create_default_context(cafile=str(k8s_cluster.ca.files.cert))
    trusted.load_cert_chain(client.cert, client.key)
    base = f"https://127.0.0.1:{port}"
    logs = f"{base}/containerLogs/{k8s_namespace}/talker/main"
    with urllib.request.urlopen(logs, context=trusted, timeout=10) as response:
        assert response.read().decode().strip() == "said"
    with pytest.raises(urllib.error.HTTPError) as bad:
        urllib.request.urlopen(logs + "?tailLines=abc", context=trusted, timeout=10)
    assert bad.value.code == 400
    assert "tailLines" in bad.value.read().decode()
    with urllib.request.urlopen(f"{base}/pods", context=trusted, timeout=10) as response:
        pods = json.loads(response.read())
    assert "talker" in {p["metadata"]["name"] for p in pods["items"]}


def test_a_deployment_through_the_scheduler(
    k8s_controllers: ControlPlane, k8s_namespace: str, start_vkpy: StartVkpy
) -> None:
    start_vkpy(["deploy-node"])
    wait_node_ready(k8s_controllers, "deploy-node")
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "web", "namespace": k8s_namespace},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {
                    "nodeSelector": {"kubernetes.io/hostname": "deploy-node"},
                    "tolerations": [TOLERATION],
                    "containers": [{"name": "web", "image": "none", "command": ["sleep", "1000"]}],
                },
            },
        },
    }
    k8s_controllers.apply(yaml.safe_dump(deployment))
    wait_for(
        lambda: (
            jsonpath(k8s_controllers, "deployment", "web", "{.status.readyReplicas}", k8s_namespace) == "2"
        ),
        timeout=90,
        what="2 ready replicas",
    )
    k8s_controllers.kubectl("scale", "deployment", "web", "--replicas=0", "-n", k8s_namespace)
    wait_for(
        lambda: (
            not json.loads(k8s_controllers.kubectl("get", "pods", "-n", k8s_namespace, "-o", "json").stdout)[
                "items"
            ]
        ),
        timeout=90,
        what="the replicas to be deleted",
    )
