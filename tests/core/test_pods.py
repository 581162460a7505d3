"""Pods on a vkpy node, driven with kubectl as a user would."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path
from typing import Any

from helpers import StartVkpy, jsonpath, pod_manifest, probe_calls, wait_node_ready, wait_phase

from vkpy.testing import wait_for
from vkpy.testing.cluster import ControlPlane


def test_a_pod_runs_and_its_logs_and_status_reach_kubectl(
    k8s_cluster: ControlPlane, k8s_namespace: str, start_vkpy: StartVkpy
) -> None:
    start_vkpy(["pods-basic"])
    wait_node_ready(k8s_cluster, "pods-basic")
    k8s_cluster.apply(
        pod_manifest(
            "hello", "pods-basic", ["sh", "-c", "echo one; echo two; echo three >&2; exit 0"], k8s_namespace
        )
    )
    wait_phase(k8s_cluster, "hello", k8s_namespace, "Succeeded")

    pod = k8s_cluster.kubectl_json("get", "pod", "hello", "-n", k8s_namespace)
    status = pod["status"]
    assert status["hostIP"] == "127.0.0.1"
    assert status["startTime"]
    (container,) = status["containerStatuses"]
    assert container["state"]["terminated"]["exitCode"] == 0
    assert container["state"]["terminated"]["reason"] == "Completed"
    conditions = {c["type"]: c for c in status["conditions"]}
    assert conditions["Ready"]["status"] == "False"
    assert conditions["Ready"]["reason"] == "PodCompleted"
    assert conditions["Initialized"]["status"] == "True"

    logs = k8s_cluster.kubectl("logs", "hello", "-n", k8s_namespace).stdout
    assert logs.splitlines() == ["one", "two", "three"] or sorted(logs.splitlines()) == [
        "one",
        "three",
        "two",
    ]
    assert k8s_cluster.kubectl("logs", "hello", "-n", k8s_namespace, "--tail=1").stdout.strip() in {
        "two",
        "three",
    }
    stamped = k8s_cluster.kubectl("logs", "hello", "-n", k8s_namespace, "--timestamps").stdout.splitlines()
    assert stamped[0].split(" ", 1)[0].endswith("Z")

    def reasons() -> set[str]:
        events = k8s_cluster.kubectl(
            "get",
            "events",
            "-n",
            k8s_namespace,
            "--field-selector",
            "involvedObject.name=hello",
            "-o",
            "json",
        ).stdout
        return {e["reason"] for e in json.loads(events)["items"]}

    # Events follow the status writes they accompany, once those pause (docs/architecture.md).
    wait_for(lambda: "Started" in reasons(), timeout=30, what="a Started event")


def test_kubectl_logs_follow_streams_live(
    k8s_cluster: ControlPlane, k8s_namespace: str, start_vkpy: StartVkpy
) -> None:
    start_vkpy(["pods-follow"])
    wait_node_ready(k8s_cluster, "pods-follow")
    k8s_cluster.apply(
        pod_manifest(
            "ticker",
            "pods-follow",
            ["sh", "-c", "for i in 1 2 3 4 5; do echo tick $i; sleep 1; done"],
            k8s_namespace,
        )
    )
    wait_phase(k8s_cluster, "ticker", k8s_namespace, "Running")
    follow = subprocess.Popen(
        [
            str(k8s_cluster.bin_dir / "kubectl"),
            f"--kubeconfig={k8s_cluster.admin_kubeconfig}",
            "logs",
            "-f",
            "ticker",
            "-n",
            k8s_namespace,
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert follow.stdout is not None
    first = follow.stdout.readline().strip()
    assert first.startswith("tick")
    rest = follow.stdout.read()  # ends when the container exits
    assert follow.wait(30) == 0
    assert "tick 5" in rest


def test_restart_policy_and_crash_loop_backoff(
    k8s_cluster: ControlPlane, k8s_namespace: str, start_vkpy: StartVkpy
) -> None:
    start_vkpy(["pods-restart"])
    wait_node_ready(k8s_cluster, "pods-restart")
    k8s_cluster.apply(
        pod_manifest(
            "crasher",
            "pods-restart",
            ["sh", "-c", "echo crash; exit 3"],
            k8s_namespace,
            restart_policy="Always",
        )
    )
    k8s_cluster.apply(
        pod_manifest(
            "once", "pods-restart", ["sh", "-c", "exit 0"], k8s_namespace, restart_policy="OnFailure"
        )
    )
    k8s_cluster.apply(
        pod_manifest("fails", "pods-restart", ["sh", "-c", "exit 7"], k8s_namespace, restart_policy="Never")
    )

    wait_for(
        lambda: (
            int(
                jsonpath(
                    k8s_cluster,
                    "pod",
                    "crasher",
                    "{.status.containerStatuses[0].restartCount}",
                    k8s_namespace,
                )
                or 0
            )
            >= 2
        ),
        timeout=60,
        what="two restarts",
    )
    crasher = k8s_cluster.kubectl_json("get", "pod", "crasher", "-n", k8s_namespace)
    assert crasher["status"]["phase"] == "Running"
    last = crasher["status"]["containerStatuses"][0]["lastState"]["terminated"]
    assert last["exitCode"] == 3
    wait_for(
        lambda: (
            "CrashLoopBackOff" in k8s_cluster.kubectl("get", "pod", "crasher", "-n", k8s_namespace).stdout
        ),
        timeout=30,
        what="CrashLoopBackOff in kubectl get pods",
    )
    previous = k8s_cluster.kubectl("logs", "crasher", "-n", k8s_namespace, "--previous").stdout
    assert "crash" in previous

    wait_phase(k8s_cluster, "once", k8s_namespace, "Succeeded")
    wait_phase(k8s_cluster, "fails", k8s_namespace, "Failed")
    fails = k8s_cluster.kubectl_json("get", "pod", "fails", "-n", k8s_namespace)
    assert fails["status"]["containerStatuses"][0]["state"]["terminated"]["exitCode"] == 7
    assert fails["status"]["containerStatuses"][0]["restartCount"] == 0


def test_graceful_delete_ends_when_the_device_is_done_not_at_the_deadline(
    k8s_cluster: ControlPlane, k8s_namespace: str, start_vkpy: StartVkpy
) -> None:
    start_vkpy(["pods-delete"])
    wait_node_ready(k8s_cluster, "pods-delete")
    k8s_cluster.apply(
        pod_manifest(
            "sleeper",
            "pods-delete",
            ["sh", "-c", "trap 'exit 0' TERM; sleep 1000 & wait"],
            k8s_namespace,
            grace=300,
        )
    )
    wait_phase(k8s_cluster, "sleeper", k8s_namespace, "Running")
    # With a 300 s grace period, a delete that returns within the 60 s timeout ended early.
    k8s_cluster.kubectl("delete", "pod", "sleeper", "-n", k8s_namespace, "--timeout=60s")
    assert k8s_cluster.kubectl("get", "pod", "sleeper", "-n", k8s_namespace, check=False).returncode != 0


def test_force_delete_still_reaches_the_device(
    k8s_cluster: ControlPlane, k8s_namespace: str, start_vkpy: StartVkpy, probe_dir: Path, tmp_path: Path
) -> None:
    start_vkpy(["pods-force"])
    wait_node_ready(k8s_cluster, "pods-force")
    k8s_cluster.apply(pod_manifest("stubborn", "pods-force", ["sleep", "1000"], k8s_namespace))
    wait_phase(k8s_cluster, "stubborn", k8s_namespace, "Running")
    uid = jsonpath(k8s_cluster, "pod", "stubborn", "{.metadata.uid}", k8s_namespace)
    k8s_cluster.kubectl("delete", "pod", "stubborn", "-n", k8s_namespace, "--force", "--grace-period=0")
    wait_for(
        lambda: [c for c in probe_calls(probe_dir, "pods-force", "delete_pod") if c["uid"] == uid],
        timeout=30,
        what="delete_pod to reach the device",
    )
    wait_for(
        lambda: not (tmp_path / "state" / "pods-force" / uid).exists(),
        timeout=30,
        what="the pod's state on the device to be cleaned up",
    )


def test_a_pod_is_never_created_twice_across_a_restart(
    k8s_cluster: ControlPlane, k8s_namespace: str, start_vkpy: StartVkpy, probe_dir: Path
) -> None:
    vkpy = start_vkpy(["pods-adopt"])
    wait_node_ready(k8s_cluster, "pods-adopt")
    k8s_cluster.apply(
        pod_manifest(
            "survivor", "pods-adopt", ["sh", "-c", "echo started; sleep 4; echo finished"], k8s_namespace
        )
    )
    wait_phase(k8s_cluster, "survivor", k8s_namespace, "Running")
    assert vkpy.stop() == 0

    again = start_vkpy(["pods-adopt"])
    again.wait_logged("pod.adopted")
    wait_phase(k8s_cluster, "survivor", k8s_namespace, "Succeeded", timeout=30)
    assert len(probe_calls(probe_dir, "pods-adopt", "create_pod")) == 1
    logs = k8s_cluster.kubectl("logs", "survivor", "-n", k8s_namespace).stdout
    assert logs.split() == ["started", "finished"]


def test_updates_reach_update_pod_once_and_status_changes_do_not(
    k8s_cluster: ControlPlane, k8s_namespace: str, start_vkpy: StartVkpy, probe_dir: Path
) -> None:
    start_vkpy(["pods-update"])
    wait_node_ready(k8s_cluster, "pods-update")
    k8s_cluster.apply(pod_manifest("changing", "pods-update", ["sleep", "1000"], k8s_namespace))
    wait_phase(k8s_cluster, "changing", k8s_namespace, "Running")
    time.sleep(3)  # several status polls pass: none of them is an update
    assert probe_calls(probe_dir, "pods-update", "update_pod") == []
    k8s_cluster.kubectl("set", "image", "pod/changing", "main=busybox:2", "-n", k8s_namespace)
    wait_for(lambda: probe_calls(probe_dir, "pods-update", "update_pod"), timeout=30, what="update_pod")
    time.sleep(3)
    (update,) = probe_calls(probe_dir, "pods-update", "update_pod")
    assert update["image"] == "busybox:2"


def test_plugin_errors_become_events_and_are_retried(
    k8s_cluster: ControlPlane, k8s_namespace: str, start_vkpy: StartVkpy, probe_dir: Path
) -> None:
    (probe_dir / "pods-errors.fail-create").write_text("2")
    start_vkpy(["pods-errors"])
    wait_node_ready(k8s_cluster, "pods-errors")
    k8s_cluster.apply(pod_manifest("flaky", "pods-errors", ["sh", "-c", "echo made it"], k8s_namespace))
    wait_phase(k8s_cluster, "flaky", k8s_namespace, "Succeeded", timeout=60)
    assert len(probe_calls(probe_dir, "pods-errors", "create_pod")) == 3

    def warnings() -> list[dict[str, Any]]:
        events = k8s_cluster.kubectl_json("get", "events", "-n", k8s_namespace)["items"]
        return [e for e in events if e["type"] == "Warning" and e["involvedObject"]["name"] == "flaky"]

    wait_for(
        lambda: any("injected create failure" in e["message"] for e in warnings()),
        timeout=30,
        what="a Warning event naming the injected failure",
    )


def test_a_same_name_pod_created_during_deletion_survives(
    k8s_cluster: ControlPlane, k8s_namespace: str, start_vkpy: StartVkpy
) -> None:
    start_vkpy(["pods-uid"])
    wait_node_ready(k8s_cluster, "pods-uid")
    manifest = pod_manifest("twin", "pods-uid", ["sleep", "1000"], k8s_namespace, grace=2)
    k8s_cluster.apply(manifest)
    wait_phase(k8s_cluster, "twin", k8s_namespace, "Running")
    k8s_cluster.kubectl("delete", "pod", "twin", "-n", k8s_namespace, "--timeout=60s")
    k8s_cluster.apply(manifest)
    wait_phase(k8s_cluster, "twin", k8s_namespace, "Running")
    time.sleep(3)
    assert jsonpath(k8s_cluster, "pod", "twin", "{.status.phase}", k8s_namespace) == "Running"


def test_a_flaky_link_never_causes_a_second_create(
    k8s_cluster: ControlPlane, k8s_namespace: str, start_vkpy: StartVkpy, probe_dir: Path
) -> None:
    start_vkpy(["pods-flaky"])
    wait_node_ready(k8s_cluster, "pods-flaky")
    k8s_cluster.apply(pod_manifest("steady", "pods-flaky", ["sleep", "1000"], k8s_namespace))
    wait_phase(k8s_cluster, "steady", k8s_namespace, "Running")

    # The device stops answering: the node goes NotReady, the pod keeps its last known state.
    (probe_dir / "pods-flaky.unreachable").write_text("link flapping")
    ready = "{.status.conditions[?(@.type=='Ready')].status}"
    wait_for(
        lambda: jsonpath(k8s_cluster, "node", "pods-flaky", ready) == "False", timeout=30, what="NotReady"
    )
    time.sleep(5)  # several status polls fail meanwhile
    assert jsonpath(k8s_cluster, "pod", "steady", "{.status.phase}", k8s_namespace) == "Running"

    (probe_dir / "pods-flaky.unreachable").unlink()
    wait_node_ready(k8s_cluster, "pods-flaky", timeout=30)
    time.sleep(3)
    assert jsonpath(k8s_cluster, "pod", "steady", "{.status.phase}", k8s_namespace) == "Running"
    assert len(probe_calls(probe_dir, "pods-flaky", "create_pod")) == 1


def test_a_pod_deleted_while_vkpy_was_away_is_removed_from_the_device(
    k8s_cluster: ControlPlane, k8s_namespace: str, start_vkpy: StartVkpy, probe_dir: Path, tmp_path: Path
) -> None:
    vkpy = start_vkpy(["pods-orphan"])
    wait_node_ready(k8s_cluster, "pods-orphan")
    k8s_cluster.apply(pod_manifest("left-behind", "pods-orphan", ["sleep", "1000"], k8s_namespace))
    wait_phase(k8s_cluster, "left-behind", k8s_namespace, "Running")
    uid = jsonpath(k8s_cluster, "pod", "left-behind", "{.metadata.uid}", k8s_namespace)
    assert vkpy.stop() == 0
    k8s_cluster.kubectl("delete", "pod", "left-behind", "-n", k8s_namespace, "--force", "--grace-period=0")
    assert (tmp_path / "state" / "pods-orphan" / uid).exists()  # still running on the device

    again = start_vkpy(["pods-orphan"])
    again.wait_logged("pod.orphan_deleted")
    wait_for(
        lambda: not (tmp_path / "state" / "pods-orphan" / uid).exists(),
        timeout=30,
        what="the orphan's state on the device to be removed",
    )
