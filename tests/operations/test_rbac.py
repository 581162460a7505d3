"""deploy/: the ClusterRole holds exactly what vkpy needs (it works, and without any one of its rules
something a user can see breaks), and the manifests apply to a real API server."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs
import pytest
import yaml
from helpers import TOLERATION, jsonpath, probe_calls
from ops_support import ROOT, RunVkpy, base_config, local_node, service_account_kubeconfig, wait_until

from vkpy.testing.cluster import ControlPlane
from vkpy.testing.runner import VkpyProcess

RBAC = ROOT / "deploy" / "rbac.yaml"


def _cluster_role() -> dict[str, Any]:
    documents = [d for d in yaml.safe_load_all(RBAC.read_text()) if d]
    (role,) = [d for d in documents if d["kind"] == "ClusterRole" and d["metadata"]["name"] == "vkpy"]
    return dict(role)


def _key(rule: dict[str, Any]) -> str:
    return f"{rule['apiGroups'][0] or 'core'}/{rule['resources'][0]}"


@attrs.define
class Variant:
    """vkpy running as a ServiceAccount bound to the ClusterRole without ``removed`` (None: all)."""

    removed: str | None
    slug: str
    kubeconfig: Path | None = None
    process: VkpyProcess | None = None
    certs: subprocess.Popen[str] | None = None
    certs_result: tuple[int, str] | None = None

    @property
    def node(self) -> str:
        return f"rbac-{self.slug}"

    def log(self) -> str:
        # JSON logs escape the quotes of the API server's messages.
        return self.process.log_text().replace('\\"', '"') if self.process else ""


@attrs.frozen
class World:
    cluster: ControlPlane
    namespace: str
    probe_dir: Path

    def phase(self, variant: Variant, pod: str) -> str:
        return jsonpath(self.cluster, "pod", f"{pod}-{variant.slug}", "{.status.phase}", self.namespace)

    def node_exists(self, variant: Variant) -> bool:
        return self.cluster.kubectl("get", "node", variant.node, check=False).returncode == 0

    def node_ready(self, variant: Variant) -> bool:
        ready = "{.status.conditions[?(@.type=='Ready')].status}"
        return jsonpath(self.cluster, "node", variant.node, ready) == "True"

    def lease_exists(self, variant: Variant) -> bool:
        found = self.cluster.kubectl("get", "lease", variant.node, "-n", "kube-node-lease", check=False)
        return found.returncode == 0

    def created_event(self, variant: Variant) -> bool:
        events = self.cluster.kubectl_json("get", "events", "-n", self.namespace)["items"]
        return any(
            e["involvedObject"]["name"] == f"plain-{variant.slug}" and e["reason"] == "Started"
            for e in events
        )

    def ran_on_device(self, variant: Variant, pod: str) -> bool:
        return any(
            c["pod"].endswith(f"/{pod}-{variant.slug}") for c in probe_calls(self.probe_dir, variant.node)
        )


Check = Callable[[World, Variant], bool]


def _forbidden(variant: Variant, verb: str, resource: str) -> bool:
    return f'cannot {verb} resource "{resource}"' in variant.log()


def _csr_refused(world: World, variant: Variant) -> bool:
    result = variant.certs_result
    return result is not None and result[0] == 1 and "may not create CertificateSigningRequests" in result[1]


# What a user sees when one rule is missing: each check must hold for its variant (and the
# forbidden message in vkpy's log says which right was refused).
SYMPTOMS: dict[str, Check] = {
    # No Node at all: vkpy cannot register and exits.
    "core/nodes": lambda w, v: (
        _forbidden(v, "create", "nodes") and not w.node_exists(v) and not (v.process and v.process.running)
    ),
    # The Node appears but never gets its status: vkpy exits.
    "core/nodes/status": lambda w, v: (
        _forbidden(v, "patch", "nodes/status")
        and not w.node_ready(v)
        and not (v.process and v.process.running)
    ),
    # Neither the leader-election Lease nor the node's: no Node ever appears.
    "coordination.k8s.io/leases": lambda w, v: (
        _forbidden(v, "get", "leases") and not w.node_exists(v) and not w.lease_exists(v)
    ),
    # The pods are never seen: the Node stays NotReady (pods not synced), the pod Pending.
    "core/pods": lambda w, v: (
        _forbidden(v, "list", "pods")
        and w.node_exists(v)
        and not w.node_ready(v)
        and w.phase(v, "plain") == "Pending"
    ),
    # The pod runs on the device, but kubectl never hears of it: Pending for ever.
    "core/pods/status": lambda w, v: (
        _forbidden(v, "patch", "pods/status")
        and w.ran_on_device(v, "plain")
        and w.phase(v, "plain") == "Pending"
    ),
    # The pod runs, but `kubectl describe pod` shows nothing vkpy did.
    "core/events": lambda w, v: (
        _forbidden(v, "create", "events") and w.phase(v, "plain") == "Succeeded" and not w.created_event(v)
    ),
    # A pod whose env comes from a ConfigMap never starts; a plain one does.
    "core/configmaps": lambda w, v: (
        _forbidden(v, "get", "configmaps")
        and w.phase(v, "plain") == "Succeeded"
        and w.phase(v, "configured") == "Pending"
        and not w.ran_on_device(v, "configured")
    ),
    # Certificate bootstrap with this identity cannot even ask.
    "certificates.k8s.io/certificatesigningrequests": _csr_refused,
}


def _works(world: World, variant: Variant) -> bool:
    result = variant.certs_result
    return (
        world.node_ready(variant)
        and world.lease_exists(variant)
        and world.phase(variant, "plain") == "Succeeded"
        and world.phase(variant, "configured") == "Succeeded"
        and world.created_event(variant)
        and '"leader.acquired"' in variant.log()
        and result is not None
        and "was not approved within" in result[1]  # the request was made; nobody approved it
    )


def _pods(variant: Variant, namespace: str) -> list[dict[str, Any]]:
    def pod(name: str, command: list[str], env: list[dict[str, Any]] | None = None) -> dict[str, Any]:
        container: dict[str, Any] = {"name": "main", "image": "busybox:1", "command": command}
        if env:
            container["env"] = env
        return {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": f"{name}-{variant.slug}", "namespace": namespace},
            "spec": {
                "nodeName": variant.node,
                "tolerations": [TOLERATION],
                "restartPolicy": "Never",
                "containers": [container],
            },
        }

    from_config_map = [
        {"name": "MODE", "valueFrom": {"configMapKeyRef": {"name": "settings", "key": "mode"}}}
    ]
    return [
        pod("plain", ["sh", "-c", "echo plain"]),
        pod("configured", ["sh", "-c", "echo $MODE"], from_config_map),
    ]


def test_the_cluster_role_is_sufficient_and_every_rule_is_needed(
    k8s_cluster: ControlPlane,
    k8s_namespace: str,
    shared_identity: Path,  # applies deploy/rbac.yaml (namespace, ServiceAccount, ClusterRole)
    run_vkpy: RunVkpy,
    probe_dir: Path,
    tmp_path: Path,
) -> None:
    role = _cluster_role()
    keys = [_key(rule) for rule in role["rules"]]
    unknown = sorted(set(keys) - set(SYMPTOMS))
    assert not unknown, f"deploy/rbac.yaml has rules this test has no symptom for: {unknown}"
    variants = [Variant(None, "full")] + [Variant(k, k.split("/", 1)[1].replace("/", "-")[:20]) for k in keys]

    # One ClusterRole and ServiceAccount per variant, so that all run at once.
    documents = []
    for variant in variants:
        rules = [rule for rule in role["rules"] if _key(rule) != variant.removed]
        documents.append(
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "ClusterRole",
                "metadata": {"name": f"vkpy-test-{variant.slug}"},
                "rules": rules,
            }
        )
    k8s_cluster.apply(yaml.safe_dump_all(documents))
    for variant in variants:
        variant.kubeconfig = service_account_kubeconfig(
            k8s_cluster,
            tmp_path / "identities",
            "vkpy-system",
            f"rbac-{variant.slug}",
            f"vkpy-test-{variant.slug}",
        )

    serving = k8s_cluster.serving_certificate("vkpy-rbac")
    for variant in variants:
        config = base_config(k8s_cluster, serving=serving)
        config["kubeconfig"] = str(variant.kubeconfig)
        config["leader_election"] = {
            "enabled": True,
            "namespace": "vkpy-system",
            "name": f"rbac-{variant.slug}",
        }
        config["nodes"] = [local_node(variant.node, tmp_path / "state")]
        variant.process = run_vkpy(config, name=variant.slug)

    # Pods are created once every process has started (or failed): a pod bound to a node that does
    # not exist for 40 s is deleted by the controller-manager's pod garbage collector.
    def settled(variant: Variant) -> bool:
        assert variant.process is not None
        return not variant.process.running or '"vkpy.started"' in variant.process.log_text()

    wait_until(lambda: all(settled(v) for v in variants), timeout=120, what="every vkpy to start")
    for variant in variants:
        # The certificate bootstrap path: may this identity ask for a node certificate?
        variant.certs = subprocess.Popen(
            [
                *(sys.executable, "-m", "vkpy", "certs", "request", "--node", variant.node, "--client-only"),
                *("--out", str(tmp_path / "certs" / variant.slug), "--kubeconfig", str(variant.kubeconfig)),
                *("--timeout", "2s"),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )

    k8s_cluster.kubectl("create", "configmap", "settings", "-n", k8s_namespace, "--from-literal=mode=fast")
    k8s_cluster.apply(
        json.dumps(
            {
                "apiVersion": "v1",
                "kind": "List",
                "items": [p for v in variants for p in _pods(v, k8s_namespace)],
            }
        )
    )
    for variant in variants:
        assert variant.certs is not None
        output, _ = variant.certs.communicate(timeout=120)
        variant.certs_result = (variant.certs.returncode, output)

    world = World(k8s_cluster, k8s_namespace, probe_dir)
    pending = {v.slug: v for v in variants}
    deadline = time.monotonic() + 120
    while pending and time.monotonic() < deadline:
        for slug, variant in list(pending.items()):
            check = _works if variant.removed is None else SYMPTOMS[variant.removed]
            if check(world, variant):
                del pending[slug]
        time.sleep(1)
    if pending:
        report = {
            slug: {
                "removed rule": v.removed or "(none: everything must work)",
                "node": v.node,
                "running": bool(v.process and v.process.running),
                "plain": world.phase(v, "plain"),
                "configured": world.phase(v, "configured"),
                "certs": (v.certs_result or (0, ""))[1][-300:],
                "log tail": v.log()[-1500:],
            }
            for slug, v in pending.items()
        }
        pytest.fail("variants not as expected:\n" + json.dumps(report, indent=1))


def test_the_deploy_manifests_apply_and_their_config_is_valid(
    k8s_cluster: ControlPlane, shared_identity: Path, tmp_path: Path
) -> None:
    from vkpy.config import build_config
    from vkpy.plugins.loader import load_plugins

    rendered = k8s_cluster.kubectl("kustomize", str(ROOT / "deploy")).stdout
    kinds = sorted(d["kind"] for d in yaml.safe_load_all(rendered) if d)
    assert kinds == [
        "ClusterRole",
        "ClusterRoleBinding",
        "ConfigMap",
        "Deployment",
        "Namespace",
        "PodDisruptionBudget",
        "Service",
        "ServiceAccount",
    ]
    applied = k8s_cluster.kubectl("apply", "--dry-run=server", "-k", str(ROOT / "deploy")).stdout
    assert "deployment.apps/vkpy created (server dry run)" in applied

    documents = {d["kind"]: d for d in yaml.safe_load_all(rendered) if d}
    deployment = documents["Deployment"]["spec"]
    assert deployment["replicas"] == 2
    pod = deployment["template"]["spec"]
    assert pod["serviceAccountName"] == "vkpy"
    container = pod["containers"][0]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert {v["name"] for v in pod["volumes"]} >= {"config", "ssh", "devices"}
    config_text = documents["ConfigMap"]["data"]["vkpy.yaml"]
    (tmp_path / "vkpy.yaml").write_text(config_text)
    config = build_config(yaml.safe_load(config_text), tmp_path / "vkpy.yaml", load_plugins())
    assert config.leader_election.enabled
    assert config.metrics.port == 9090
    probes = {container["livenessProbe"]["httpGet"]["path"], container["readinessProbe"]["httpGet"]["path"]}
    assert probes == {"/healthz", "/readyz"}
