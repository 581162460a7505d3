"""The test ground is a real cluster: identities, authorization, watches, CSRs, scheduling."""

from __future__ import annotations

import base64
import json
import subprocess

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from vkpy.kube import KubeClient, KubeError, micro_time, now
from vkpy.testing import wait_for
from vkpy.testing.binaries import KUBERNETES_VERSION
from vkpy.testing.cluster import ControlPlane


def node_manifest(name: str) -> str:
    return json.dumps(
        {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}},
            "status": {
                "capacity": {"cpu": "4", "memory": "4Gi", "pods": "10"},
                "allocatable": {"cpu": "4", "memory": "4Gi", "pods": "10"},
            },
        }
    )


def test_kubectl_talks_to_the_cluster_as_admin(k8s_cluster: ControlPlane) -> None:
    version = k8s_cluster.kubectl_json("version")
    assert version["serverVersion"]["gitVersion"] == KUBERNETES_VERSION
    namespaces = {n["metadata"]["name"] for n in k8s_cluster.kubectl_json("get", "namespaces")["items"]}
    assert {"default", "kube-system", "kube-node-lease"} <= namespaces


def test_a_node_identity_manages_its_own_node_and_lease_only(k8s_cluster: ControlPlane) -> None:
    me = k8s_cluster.node_identity("smoke-node-a")
    k8s_cluster.kubectl("create", "-f", "-", input=node_manifest("smoke-node-a"), kubeconfig=me.kubeconfig)
    lease = {
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {"name": "smoke-node-a", "namespace": "kube-node-lease"},
        "spec": {
            "holderIdentity": "smoke-node-a",
            "leaseDurationSeconds": 40,
            "renewTime": micro_time(now()),
        },
    }
    k8s_cluster.kubectl("create", "-f", "-", input=json.dumps(lease), kubeconfig=me.kubeconfig)

    other = k8s_cluster.kubectl(
        "create", "-f", "-", input=node_manifest("smoke-node-b"), kubeconfig=me.kubeconfig, check=False
    )
    assert other.returncode != 0
    assert "forbidden" in other.stderr.lower()
    lease["metadata"]["name"] = "smoke-node-b"
    other_lease = k8s_cluster.kubectl(
        "create", "-f", "-", input=json.dumps(lease), kubeconfig=me.kubeconfig, check=False
    )
    assert other_lease.returncode != 0
    assert "forbidden" in other_lease.stderr.lower()


async def test_a_pod_bound_to_a_node_reaches_that_nodes_watch(
    k8s_cluster: ControlPlane, k8s_namespace: str
) -> None:
    me = k8s_cluster.node_identity("smoke-watch-node")
    k8s_cluster.kubectl(
        "create", "-f", "-", input=node_manifest("smoke-watch-node"), kubeconfig=me.kubeconfig
    )
    client = await KubeClient.from_kubeconfig(me.kubeconfig)
    try:
        listing = await client.get("/api/v1/pods", fieldSelector="spec.nodeName=smoke-watch-node")
        assert listing["items"] == []
        with pytest.raises(KubeError) as denied:
            await client.get("/api/v1/pods")
        assert denied.value.status == 403

        k8s_cluster.kubectl(
            "run",
            "bound",
            "-n",
            k8s_namespace,
            "--image=none",
            "--restart=Never",
            "--overrides",
            json.dumps({"spec": {"nodeName": "smoke-watch-node"}}),
        )
        query = {
            "fieldSelector": "spec.nodeName=smoke-watch-node",
            "resourceVersion": listing["metadata"]["resourceVersion"],
        }
        async for line in client.watch_lines("/api/v1/pods", query, timeout=30):
            event = json.loads(line)
            if event["type"] == "ADDED":
                assert event["object"]["metadata"]["name"] == "bound"
                break
    finally:
        await client.close()


def test_a_csr_is_approved_with_kubectl_and_signed(k8s_controllers: ControlPlane) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(
            x509.Name(
                [
                    x509.NameAttribute(NameOID.ORGANIZATION_NAME, "system:nodes"),
                    x509.NameAttribute(NameOID.COMMON_NAME, "system:node:smoke-csr-node"),
                ]
            )
        )
        .sign(key, hashes.SHA256())
    )
    request = base64.b64encode(csr.public_bytes(serialization.Encoding.PEM)).decode()
    k8s_controllers.apply(
        json.dumps(
            {
                "apiVersion": "certificates.k8s.io/v1",
                "kind": "CertificateSigningRequest",
                "metadata": {"name": "smoke-csr"},
                "spec": {
                    "request": request,
                    "signerName": "kubernetes.io/kube-apiserver-client",
                    "expirationSeconds": 3600,
                    "usages": ["client auth"],
                },
            }
        )
    )
    k8s_controllers.kubectl("certificate", "approve", "smoke-csr")

    def signed() -> str:
        return k8s_controllers.kubectl(
            "get", "csr", "smoke-csr", "-o", "jsonpath={.status.certificate}"
        ).stdout

    pem = base64.b64decode(wait_for(signed, timeout=60, what="the CSR to be signed"))
    cert = x509.load_pem_x509_certificate(pem)
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "system:node:smoke-csr-node"


def test_the_scheduler_binds_a_pod(k8s_controllers: ControlPlane, k8s_namespace: str) -> None:
    me = k8s_controllers.node_identity("smoke-sched-node")
    k8s_controllers.kubectl(
        "create", "-f", "-", input=node_manifest("smoke-sched-node"), kubeconfig=me.kubeconfig
    )
    ready = {
        "status": {
            "conditions": [
                {
                    "type": "Ready",
                    "status": "True",
                    "reason": "Smoke",
                    "lastHeartbeatTime": micro_time(now())[:19] + "Z",
                }
            ]
        }
    }
    k8s_controllers.kubectl(
        "patch",
        "node",
        "smoke-sched-node",
        "--subresource=status",
        "--type=strategic",
        "-p",
        json.dumps(ready),
    )
    k8s_controllers.kubectl(
        "run",
        "scheduled",
        "-n",
        k8s_namespace,
        "--image=none",
        "--restart=Never",
        "--overrides",
        json.dumps({"spec": {"nodeSelector": {"kubernetes.io/hostname": "smoke-sched-node"}}}),
    )

    def bound() -> str:
        return k8s_controllers.kubectl(
            "get", "pod", "scheduled", "-n", k8s_namespace, "-o", "jsonpath={.spec.nodeName}"
        ).stdout

    assert wait_for(bound, timeout=60, what="the scheduler to bind the pod") == "smoke-sched-node"


def test_kubectl_errors_are_real(k8s_cluster: ControlPlane) -> None:
    with pytest.raises(subprocess.CalledProcessError):
        k8s_cluster.kubectl("get", "pod", "no-such-pod", "-n", "default")
