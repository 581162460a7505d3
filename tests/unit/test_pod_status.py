"""Status bookkeeping is pure logic: phase, conditions and container statuses from device reports."""

from __future__ import annotations

import datetime
from typing import Any

from vkpy.pods.status import ContainerRecord, Observation, PodFailure, compute_status, status_changed
from vkpy.types import PodStatusReport, Running, Terminated, Waiting

NOW = datetime.datetime(2026, 11, 28, 8, 0, tzinfo=datetime.UTC)


def manifest(policy: str = "Always", status: dict[str, Any] | None = None, inits: int = 0) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "restartPolicy": policy,
        "containers": [{"name": "a", "image": "x"}, {"name": "b", "image": "y"}],
    }
    if inits:
        spec["initContainers"] = [{"name": f"i{n}", "image": "z"} for n in range(inits)]
    return {"metadata": {"uid": "u1", "name": "p", "namespace": "ns"}, "spec": spec, "status": status or {}}


def observe(m: dict[str, Any], containers: dict[str, Any], **kw: Any) -> dict[str, Any]:
    report = PodStatusReport(containers=containers, init_containers=kw.pop("inits", {}))
    return compute_status(
        Observation(
            manifest=m,
            report=report,
            records=kw.pop("records", {}),
            host_ip="10.0.0.5",
            now=NOW,
            created=True,
            **kw,
        )
    )


def test_pending_until_every_container_has_started() -> None:
    status = observe(manifest(), {"a": Running(NOW)})
    assert status["phase"] == "Pending"
    assert status["containerStatuses"][1]["state"] == {"waiting": {"reason": "ContainerCreating"}}


def test_running_and_ready_when_all_run() -> None:
    status = observe(manifest(), {"a": Running(NOW), "b": Running(NOW)})
    assert status["phase"] == "Running"
    conditions = {c["type"]: c["status"] for c in status["conditions"]}
    assert conditions == {
        "PodReadyToStartContainers": "True",
        "Initialized": "True",
        "ContainersReady": "True",
        "Ready": "True",
        "PodScheduled": "True",
    }
    assert status["hostIP"] == status["podIP"] == "10.0.0.5"


def test_phases_by_restart_policy() -> None:
    ok, bad = Terminated(0), Terminated(2)
    assert observe(manifest("Never"), {"a": ok, "b": ok})["phase"] == "Succeeded"
    assert observe(manifest("Never"), {"a": ok, "b": bad})["phase"] == "Failed"
    assert observe(manifest("OnFailure"), {"a": ok, "b": ok})["phase"] == "Succeeded"
    assert observe(manifest("OnFailure"), {"a": ok, "b": bad})["phase"] == "Running"
    assert observe(manifest("Always"), {"a": ok, "b": ok})["phase"] == "Running"


def test_crash_loop_back_off_shows_the_last_termination() -> None:
    record = ContainerRecord(restart_count=3, last_terminated=Terminated(1, started_at=NOW, finished_at=NOW))
    status = observe(
        manifest(),
        {"a": Terminated(1), "b": Running(NOW)},
        records={"a": record},
        waiting_override={"a": Waiting("CrashLoopBackOff", "back-off 40s")},
    )
    a = status["containerStatuses"][0]
    assert a["state"]["waiting"]["reason"] == "CrashLoopBackOff"
    assert a["lastState"]["terminated"]["exitCode"] == 1
    assert a["restartCount"] == 3
    assert status["phase"] == "Running"


def test_init_containers_gate_the_pod() -> None:
    m = manifest("Never", inits=2)
    status = observe(m, {}, inits={"i0": Terminated(0), "i1": Running(NOW)})
    assert status["phase"] == "Pending"
    assert status["containerStatuses"][0]["state"]["waiting"]["reason"] == "PodInitializing"
    initialized = next(c for c in status["conditions"] if c["type"] == "Initialized")
    assert initialized["status"] == "False"
    assert observe(m, {}, inits={"i0": Terminated(1)})["phase"] == "Failed"


def test_a_terminal_phase_never_moves_back() -> None:
    m = manifest("Never", status={"phase": "Failed", "reason": "DeviceLost", "message": "gone"})
    status = observe(m, {"a": Running(NOW), "b": Running(NOW)})
    assert status["phase"] == "Failed"
    assert status["reason"] == "DeviceLost"


def test_a_failure_fails_the_pod_with_its_reason() -> None:
    status = observe(manifest(), {}, failure=PodFailure("DeviceLost", "the device rebooted"))
    assert (status["phase"], status["reason"], status["message"]) == (
        "Failed",
        "DeviceLost",
        "the device rebooted",
    )


def test_other_actors_conditions_are_kept_and_timestamps_do_not_cause_writes() -> None:
    foreign = {"type": "example.com/Gate", "status": "True", "lastTransitionTime": "2026-01-01T00:00:00Z"}
    m = manifest(status={"conditions": [foreign]})
    first = observe(m, {"a": Running(NOW), "b": Running(NOW)})
    assert foreign in first["conditions"]
    later = compute_status(
        Observation(
            manifest={**m, "status": first},
            report=PodStatusReport({"a": Running(NOW), "b": Running(NOW)}),
            records={},
            host_ip="10.0.0.5",
            now=NOW + datetime.timedelta(minutes=5),
            created=True,
        )
    )
    assert not status_changed(first, later)
