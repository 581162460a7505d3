"""Small helpers for end-to-end tests: manifests and kubectl one-liners."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from vkpy.testing import wait_for
from vkpy.testing.cluster import ControlPlane
from vkpy.testing.runner import VkpyProcess

ROOT = Path(__file__).resolve().parent.parent

TOLERATION = {"key": "virtual-kubelet.io/provider", "operator": "Exists", "effect": "NoSchedule"}


def pod_manifest(
    name: str,
    node: str,
    command: list[str],
    namespace: str,
    restart_policy: str = "Never",
    grace: int | None = None,
    env: list[dict[str, Any]] | None = None,
    **spec: Any,
) -> str:
    container: dict[str, Any] = {"name": "main", "image": "busybox:1", "command": command}
    if env:
        container["env"] = env
    body: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "nodeName": node,
            "tolerations": [TOLERATION],
            "restartPolicy": restart_policy,
            "containers": [container],
            **spec,
        },
    }
    if grace is not None:
        body["spec"]["terminationGracePeriodSeconds"] = grace
    return json.dumps(body)


def jsonpath(cluster: ControlPlane, kind: str, name: str, path: str, namespace: str | None = None) -> str:
    args = ["get", kind, name, "-o", f"jsonpath={path}"]
    if namespace:
        args += ["-n", namespace]
    return cluster.kubectl(*args, check=False).stdout


def wait_node_ready(cluster: ControlPlane, node: str, timeout: float = 60) -> None:
    wait_for(
        lambda: jsonpath(cluster, "node", node, "{.status.conditions[?(@.type=='Ready')].status}") == "True",
        timeout=timeout,
        what=f"node {node} Ready",
    )


def wait_phase(cluster: ControlPlane, pod: str, namespace: str, phase: str, timeout: float = 60) -> None:
    wait_for(
        lambda: jsonpath(cluster, "pod", pod, "{.status.phase}", namespace) == phase,
        timeout=timeout,
        what=f"pod {namespace}/{pod} phase {phase}",
    )


def probe_calls(probe_dir: Path, node: str, hook: str | None = None) -> list[dict[str, Any]]:
    path = probe_dir / f"{node}.calls"
    if not path.exists():
        return []
    calls = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [c for c in calls if hook is None or c["hook"] == hook]


def node_entry(name: str, state_root: Path, **overrides: Any) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "name": name,
        "transport": "local",
        "local": {"state_dir": str(state_root / name)},
        "capacity": {"cpu": "4", "memory": "4Gi", "pods": "20"},
        "plugins": ["probe"],
        "status_interval": "2s",
        "restart_backoff": {"initial": "1s", "max": "4s"},
    }
    entry.update(overrides)
    return entry


StartVkpy = Callable[..., VkpyProcess]
