"""The Node object vkpy registers, and its status: pure functions of the node's config and state."""

from __future__ import annotations

import datetime
import platform
from collections.abc import Mapping
from typing import Any

import attrs

from vkpy.kube import JSON, rfc3339

DEFAULT_TAINT = {"key": "virtual-kubelet.io/provider", "value": "vkpy", "effect": "NoSchedule"}
DEFAULT_CAPACITY = {"cpu": "1", "memory": "1Gi", "pods": "10"}
TRANSPORT_LABEL = "vkpy.io/transport"

_GO_ARCH = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "armv6l": "arm", "i686": "386"}


def host_arch() -> str:
    machine = platform.machine().lower()
    return _GO_ARCH.get(machine, machine or "amd64")


@attrs.frozen
class NodeFacts:
    """Everything the Node object is built from."""

    name: str
    transport: str
    address: str
    kubelet_port: int
    capacity: Mapping[str, str]
    allocatable: Mapping[str, str]
    labels: Mapping[str, str]
    taints: tuple[Mapping[str, str], ...]
    os: str
    arch: str
    kubelet_version: str
    device_info: Mapping[str, str] = attrs.field(factory=dict)


@attrs.frozen
class Readiness:
    ready: bool
    reason: str
    message: str


def labels(facts: NodeFacts) -> dict[str, str]:
    return {
        "type": "virtual-kubelet",
        "kubernetes.io/os": facts.os,
        "kubernetes.io/arch": facts.arch,
        "kubernetes.io/hostname": facts.name,
        TRANSPORT_LABEL: facts.transport,
        **facts.labels,
    }


def node_object(facts: NodeFacts, readiness: Readiness, now: datetime.datetime) -> JSON:
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": facts.name, "labels": labels(facts)},
        "spec": {"taints": [dict(t) for t in facts.taints]},
        "status": node_status(facts, readiness, now, previous_conditions=[]),
    }


def _condition(
    kind: str, status: bool, reason: str, message: str, now: str, previous: Mapping[str, Any] | None
) -> JSON:
    value = "True" if status else "False"
    transition = previous.get("lastTransitionTime") if previous and previous.get("status") == value else None
    return {
        "type": kind,
        "status": value,
        "reason": reason,
        "message": message,
        "lastHeartbeatTime": now,
        "lastTransitionTime": transition or now,
    }


def conditions(readiness: Readiness, now: datetime.datetime, previous_conditions: list[JSON]) -> list[JSON]:
    """vkpy's own conditions; a strategic merge patch keyed by type leaves other actors' alone."""
    stamp = rfc3339(now)
    previous = {c.get("type"): c for c in previous_conditions}
    return [
        _condition(
            "Ready", readiness.ready, readiness.reason, readiness.message, stamp, previous.get("Ready")
        ),
        _condition(
            "MemoryPressure",
            False,
            "DeviceHasSufficientMemory",
            "not reported by the device",
            stamp,
            previous.get("MemoryPressure"),
        ),
        _condition(
            "DiskPressure",
            False,
            "DeviceHasNoDiskPressure",
            "not reported by the device",
            stamp,
            previous.get("DiskPressure"),
        ),
        _condition(
            "PIDPressure",
            False,
            "DeviceHasSufficientPID",
            "not reported by the device",
            stamp,
            previous.get("PIDPressure"),
        ),
    ]


def node_status(
    facts: NodeFacts, readiness: Readiness, now: datetime.datetime, previous_conditions: list[JSON]
) -> JSON:
    return {
        "capacity": dict(facts.capacity),
        "allocatable": dict(facts.allocatable),
        "conditions": conditions(readiness, now, previous_conditions),
        # No Hostname entry: apiservers prefer Hostname by default and would dial the node's name.
        "addresses": [{"type": "InternalIP", "address": facts.address}],
        "daemonEndpoints": {"kubeletEndpoint": {"Port": facts.kubelet_port}},
        "nodeInfo": {
            "machineID": facts.device_info.get("machineID", ""),
            "systemUUID": facts.device_info.get("systemUUID", ""),
            "bootID": facts.device_info.get("bootID", ""),
            "kernelVersion": facts.device_info.get("kernelVersion", ""),
            "osImage": facts.device_info.get("osImage", f"vkpy {facts.transport} device"),
            "containerRuntimeVersion": f"vkpy-{facts.transport}://{facts.kubelet_version}",
            "kubeletVersion": facts.kubelet_version,
            "kubeProxyVersion": "",
            "operatingSystem": facts.os,
            "architecture": facts.arch,
        },
    }
