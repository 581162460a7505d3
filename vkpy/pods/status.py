"""Kubernetes pod status bookkeeping: from the device's simple container states to phase,
conditions, container statuses and restart counts, as the kubelet computes them. Pure functions."""

from __future__ import annotations

import datetime
from collections.abc import Mapping, Sequence
from typing import Any

import attrs

from vkpy.kube import JSON, rfc3339
from vkpy.types import ContainerState, PodStatusReport, Running, Terminated, Waiting

TERMINAL_PHASES = frozenset({"Succeeded", "Failed"})


@attrs.define
class ContainerRecord:
    """What the core remembers about one container across device reports."""

    restart_count: int = 0
    last_terminated: Terminated | None = None
    backoff_seconds: float = 0.0
    backoff_until: float | None = None
    """Loop time at which a pending restart is due; set while in CrashLoopBackOff."""
    restarting: bool = False


@attrs.frozen
class PodFailure:
    """The pod failed as a whole (lost by the device, rejected...): a terminal state of its own."""

    reason: str
    message: str


@attrs.frozen
class Observation:
    """Everything the status is computed from."""

    manifest: Mapping[str, Any]
    report: PodStatusReport | None
    records: Mapping[str, ContainerRecord]
    host_ip: str
    now: datetime.datetime
    created: bool
    waiting_override: Mapping[str, Waiting] = attrs.field(factory=dict)
    failure: PodFailure | None = None


def _time(value: datetime.datetime | None, fallback: datetime.datetime) -> str:
    return rfc3339(value or fallback)


def _state_json(state: ContainerState, now: datetime.datetime, container_id: str) -> JSON:
    if isinstance(state, Running):
        return {"running": {"startedAt": _time(state.started_at, now)}}
    if isinstance(state, Terminated):
        return {
            "terminated": {
                "exitCode": state.exit_code,
                "reason": state.reason or ("Completed" if state.exit_code == 0 else "Error"),
                **({"message": state.message} if state.message else {}),
                "startedAt": _time(state.started_at, now),
                "finishedAt": _time(state.finished_at, now),
                "containerID": container_id,
            }
        }
    waiting: JSON = {"reason": state.reason}
    if state.message:
        waiting["message"] = state.message
    return {"waiting": waiting}


def _container_status(
    uid: str,
    spec: Mapping[str, Any],
    state: ContainerState,
    record: ContainerRecord,
    now: datetime.datetime,
    previous: Mapping[str, Any] | None,
) -> JSON:
    name = str(spec.get("name", ""))
    container_id = f"vkpy://{uid}/{name}"
    running = isinstance(state, Running)
    status: JSON = {
        "name": name,
        "image": spec.get("image", ""),
        "imageID": "",
        "ready": running,
        "started": running,
        "restartCount": record.restart_count,
        "state": _state_json(state, now, container_id),
        "lastState": {},
    }
    if not isinstance(state, Waiting) or record.last_terminated is not None:
        status["containerID"] = container_id
    if record.last_terminated is not None:
        status["lastState"] = _state_json(record.last_terminated, now, container_id)
    # Keep the timestamps the API already holds for an unchanged state: no spurious writes.
    if previous and previous.get("state", {}).keys() == status["state"].keys():
        old, new = previous["state"], status["state"]
        key = next(iter(new))
        if key == "running" and isinstance(state, Running) and state.started_at is None:
            new[key]["startedAt"] = old[key].get("startedAt", new[key]["startedAt"])
    return status


def _effective_state(name: str, obs: Observation, init: bool) -> ContainerState:
    state = _reported_state(name, obs, init)
    if obs.failure is not None and not isinstance(state, Terminated):
        # A failed pod's containers are over too: `kubectl get pods` then shows the pod's reason.
        return Terminated(exit_code=137, reason=obs.failure.reason, message=obs.failure.message)
    return state


def _reported_state(name: str, obs: Observation, init: bool) -> ContainerState:
    if name in obs.waiting_override:
        return obs.waiting_override[name]
    if obs.report is not None:
        source = obs.report.init_containers if init else obs.report.containers
        if name in source:
            return source[name]
    reason = "PodInitializing" if not init and _has_init(obs.manifest) else "ContainerCreating"
    return Waiting(reason=reason)


def _has_init(manifest: Mapping[str, Any]) -> bool:
    return bool(manifest.get("spec", {}).get("initContainers"))


def _phase(
    restart_policy: str,
    init_states: Sequence[ContainerState],
    states: Sequence[tuple[ContainerState, ContainerRecord]],
) -> str:
    for state in init_states:
        if isinstance(state, Terminated) and state.succeeded:
            continue
        if isinstance(state, Terminated) and restart_policy == "Never":
            return "Failed"
        return "Pending"
    running = waiting = stopped = succeeded = failed = 0
    for state, record in states:
        if isinstance(state, Running):
            running += 1
        elif isinstance(state, Terminated):
            stopped += 1
            succeeded += state.succeeded
            failed += not state.succeeded
        elif record.last_terminated is not None:
            # Waiting to restart: counts as stopped with its last exit, as the kubelet does.
            stopped += 1
            succeeded += record.last_terminated.succeeded
            failed += not record.last_terminated.succeeded
        else:
            waiting += 1
    if waiting:
        return "Pending"
    if running:
        return "Running"
    if stopped:
        if restart_policy == "Always":
            return "Running"
        if restart_policy == "OnFailure":
            return "Succeeded" if failed == 0 else "Running"
        return "Failed" if failed else "Succeeded"
    return "Pending"


def _condition(
    kind: str, ok: bool, now: str, previous: Mapping[str, Any] | None, reason: str = "", message: str = ""
) -> JSON:
    value = "True" if ok else "False"
    same = previous is not None and previous.get("status") == value
    condition: JSON = {
        "type": kind,
        "status": value,
        "lastProbeTime": None,
        "lastTransitionTime": previous.get("lastTransitionTime") if same and previous else now,
    }
    if reason:
        condition["reason"] = reason
    if message:
        condition["message"] = message
    return condition


def compute_status(obs: Observation) -> JSON:
    """The pod's full status as vkpy would write it."""
    manifest = obs.manifest
    meta, spec = manifest.get("metadata", {}), manifest.get("spec", {})
    current = manifest.get("status", {}) or {}
    uid = str(meta.get("uid", ""))
    stamp = rfc3339(obs.now)
    restart_policy = str(spec.get("restartPolicy", "Always"))
    previous_statuses = {
        s.get("name"): s
        for s in (current.get("containerStatuses") or []) + (current.get("initContainerStatuses") or [])
    }

    init_specs = spec.get("initContainers") or []
    specs = spec.get("containers") or []
    init_states = [_effective_state(c["name"], obs, init=True) for c in init_specs]
    states = [
        (_effective_state(c["name"], obs, init=False), obs.records.get(c["name"], ContainerRecord()))
        for c in specs
    ]

    phase = _phase(restart_policy, init_states, states)
    reason = message = ""
    if obs.failure is not None:
        phase, reason, message = "Failed", obs.failure.reason, obs.failure.message
    if current.get("phase") in TERMINAL_PHASES:
        phase = str(current["phase"])  # a terminal phase never moves back
        reason, message = str(current.get("reason", reason) or ""), str(current.get("message", message) or "")

    init_statuses = [
        _container_status(
            uid,
            c,
            s,
            obs.records.get(c["name"], ContainerRecord()),
            obs.now,
            previous_statuses.get(c["name"]),
        )
        for c, s in zip(init_specs, init_states, strict=True)
    ]
    for entry in init_statuses:
        entry["ready"] = "terminated" in entry["state"] and entry["state"]["terminated"]["exitCode"] == 0
    container_statuses = [
        _container_status(uid, c, s, r, obs.now, previous_statuses.get(c["name"]))
        for c, (s, r) in zip(specs, states, strict=True)
    ]
    if phase in TERMINAL_PHASES:
        for entry in container_statuses:
            entry["ready"] = False

    initialized = all(isinstance(s, Terminated) and s.succeeded for s in init_states)
    unready = [s["name"] for s in container_statuses if not s["ready"]]
    previous_conditions = {c.get("type"): c for c in current.get("conditions") or []}
    gates = [g.get("conditionType") for g in spec.get("readinessGates") or []]
    gates_ok = all(previous_conditions.get(g, {}).get("status") == "True" for g in gates)
    ours = {
        "PodReadyToStartContainers": _condition(
            "PodReadyToStartContainers",
            obs.created,
            stamp,
            previous_conditions.get("PodReadyToStartContainers"),
        ),
        "Initialized": _condition(
            "Initialized",
            initialized,
            stamp,
            previous_conditions.get("Initialized"),
            "" if initialized else "ContainersNotInitialized",
            ""
            if initialized
            else "containers with incomplete status: ["
            + " ".join(
                c["name"]
                for c, s in zip(init_specs, init_states, strict=True)
                if not (isinstance(s, Terminated) and s.succeeded)
            )
            + "]",
        ),
        "ContainersReady": _condition(
            "ContainersReady",
            not unready,
            stamp,
            previous_conditions.get("ContainersReady"),
            "PodCompleted" if phase in TERMINAL_PHASES else ("" if not unready else "ContainersNotReady"),
            ""
            if not unready or phase in TERMINAL_PHASES
            else f"containers with unready status: [{' '.join(unready)}]",
        ),
        "Ready": _condition(
            "Ready",
            not unready and gates_ok,
            stamp,
            previous_conditions.get("Ready"),
            "PodCompleted"
            if phase in TERMINAL_PHASES
            else (
                ""
                if not unready and gates_ok
                else "ContainersNotReady"
                if unready
                else "ReadinessGatesNotReady"
            ),
            ""
            if not unready or phase in TERMINAL_PHASES
            else f"containers with unready status: [{' '.join(unready)}]",
        ),
    }
    if "PodScheduled" not in previous_conditions:
        ours["PodScheduled"] = _condition("PodScheduled", True, stamp, None)
    conditions = [ours.pop(c["type"], c) for c in current.get("conditions") or []] + list(ours.values())

    pod_ip = (
        (obs.report.pod_ip if obs.report and obs.report.pod_ip else None)
        or current.get("podIP")
        or obs.host_ip
    )
    status: JSON = {
        "phase": phase,
        "conditions": conditions,
        "hostIP": obs.host_ip,
        "hostIPs": [{"ip": obs.host_ip}],
        "podIP": pod_ip,
        "podIPs": [{"ip": pod_ip}],
        "startTime": current.get("startTime") or stamp,
        "containerStatuses": container_statuses,
        "qosClass": current.get("qosClass", "BestEffort"),
    }
    if init_statuses:
        status["initContainerStatuses"] = init_statuses
    if reason:
        status["reason"] = reason
    if message:
        status["message"] = message
    return status


_COMPARED = (
    "phase",
    "conditions",
    "hostIP",
    "podIP",
    "startTime",
    "containerStatuses",
    "initContainerStatuses",
    "reason",
    "message",
)


def _without_times(value: Any) -> Any:
    if isinstance(value, dict):
        return {
            k: _without_times(v) for k, v in value.items() if k not in {"lastProbeTime", "lastTransitionTime"}
        }
    if isinstance(value, list):
        return [_without_times(v) for v in value]
    return value


def status_changed(current: Mapping[str, Any], desired: Mapping[str, Any]) -> bool:
    """True when a write would change what the user sees (condition timestamps alone do not count)."""
    return any(_without_times(current.get(key)) != _without_times(desired.get(key)) for key in _COMPARED)
