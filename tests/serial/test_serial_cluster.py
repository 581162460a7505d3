"""The serial transport end to end: ``vkpy run`` as a real process against the real control plane,
its node backed by the reference device running as a separate process on the other side of a
real pty link, driven with kubectl as a user would."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import yaml
from helpers import TOLERATION, jsonpath, pod_manifest, probe_calls, wait_node_ready, wait_phase
from serial_support import DeviceProcess, Faults, SerialLink, StartDevice

from vkpy.testing import wait_for
from vkpy.testing.cluster import ControlPlane
from vkpy.testing.pytest_plugin import missing_part


def serial_node(name: str, port: str | Path, **serial: Any) -> dict[str, Any]:
    return {
        "name": name,
        "transport": "serial",
        "serial": {
            "port": str(port),
            "request_timeout": "300ms",
            "reconnect_initial": "200ms",
            "reconnect_max": "1s",
            **serial,
        },
        "plugins": ["probe"],
        "status_interval": "2s",
        "restart_backoff": {"initial": "1s", "max": "4s"},
    }


def template(node: str, app: str, command: list[str], restart_policy: str, grace: int = 30) -> dict[str, Any]:
    return {
        "metadata": {"labels": {"app": app}},
        "spec": {
            "nodeSelector": {"kubernetes.io/hostname": node},
            "tolerations": [TOLERATION],
            "restartPolicy": restart_policy,
            "terminationGracePeriodSeconds": grace,
            "containers": [{"name": "main", "image": "vkpy/reference-device", "command": command}],
        },
    }


def job(name: str, namespace: str, node: str, command: list[str]) -> str:
    return yaml.safe_dump(
        {
            "apiVersion": "batch/v1",
            "kind": "Job",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"backoffLimit": 0, "template": template(node, name, command, "Never")},
        }
    )


def deployment(name: str, namespace: str, node: str, command: list[str], replicas: int = 1) -> str:
    return yaml.safe_dump(
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {
                "replicas": replicas,
                "selector": {"matchLabels": {"app": name}},
                "template": template(node, name, command, "Always", grace=2),
            },
        }
    )


def pods_of(cluster: ControlPlane, namespace: str, app: str) -> list[dict[str, Any]]:
    listed = cluster.kubectl("get", "pods", "-n", namespace, "-l", f"app={app}", "-o", "json").stdout
    return list(json.loads(listed)["items"])


def ready_condition(cluster: ControlPlane, node: str) -> dict[str, Any]:
    conditions = cluster.kubectl_json("get", "node", node)["status"]["conditions"]
    return next(c for c in conditions if c["type"] == "Ready")


def follow_logs(cluster: ControlPlane, pod: str, namespace: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            str(cluster.bin_dir / "kubectl"),
            f"--kubeconfig={cluster.admin_kubeconfig}",
            "logs",
            "-f",
            pod,
            "-n",
            namespace,
        ],
        stdout=subprocess.PIPE,
        text=True,
    )


def test_a_job_and_a_deployment_run_on_a_serial_device(
    k8s_controllers: ControlPlane,
    k8s_namespace: str,
    start_vkpy: Any,
    link: SerialLink,
    start_device: StartDevice,
) -> None:
    cluster, node, ns = k8s_controllers, "serial-jobs", k8s_namespace
    start_device(link, "--device-id", "board-1", "--pods", "4")
    start_vkpy([], nodes=[serial_node(node, link.host_path, device_id="board-1")])
    wait_node_ready(cluster, node)
    status = cluster.kubectl_json("get", "node", node)["status"]
    assert status["capacity"]["pods"] == "4"  # what the device announced in its hello

    cluster.apply(job("count", ns, node, ["count", "5", "0.2"]))
    cluster.apply(deployment("sensors", ns, node, ["sensor", "0", "0.3"]))
    cluster.apply(pod_manifest("exits", node, ["exit", "3"], ns))

    wait_for(
        lambda: jsonpath(cluster, "job", "count", "{.status.succeeded}", ns) == "1",
        timeout=60,
        what="the Job to succeed",
    )
    assert cluster.kubectl("logs", "job/count", "-n", ns).stdout == "1\n2\n3\n4\n5\n"
    (job_pod,) = pods_of(cluster, ns, "count")
    terminated = job_pod["status"]["containerStatuses"][0]["state"]["terminated"]
    assert (terminated["exitCode"], terminated["reason"]) == (0, "Completed")

    wait_phase(cluster, "exits", ns, "Failed")
    exits = cluster.kubectl_json("get", "pod", "exits", "-n", ns)["status"]["containerStatuses"][0]
    assert exits["state"]["terminated"]["exitCode"] == 3

    wait_for(
        lambda: jsonpath(cluster, "deployment", "sensors", "{.status.readyReplicas}", ns) == "1",
        timeout=60,
        what="the Deployment's replica to be ready",
    )
    (sensor,) = pods_of(cluster, ns, "sensors")
    name = sensor["metadata"]["name"]
    follower = follow_logs(cluster, name, ns)
    try:
        assert follower.stdout is not None
        first = follower.stdout.readline()
        second = follower.stdout.readline()
    finally:
        follower.kill()
        follower.wait()
    assert first.startswith("sensor0 reading=")
    assert second.startswith("sensor0 reading=")
    assert int(second.split()[1].split("=")[1]) == int(first.split()[1].split("=")[1]) + 1
    tail = cluster.kubectl("logs", name, "-n", ns, "--tail=1", "--timestamps").stdout
    assert tail.count("\n") == 1
    assert tail.split(" ", 1)[0].endswith("Z")


def test_delete_mid_run_stops_the_program_on_the_device(
    k8s_cluster: ControlPlane,
    k8s_namespace: str,
    start_vkpy: Any,
    link: SerialLink,
    start_device: StartDevice,
    probe_dir: Path,
) -> None:
    cluster, node, ns = k8s_cluster, "serial-delete", k8s_namespace
    start_device(link)
    start_vkpy([], nodes=[serial_node(node, link.host_path)])
    wait_node_ready(cluster, node)
    cluster.apply(pod_manifest("polite", node, ["sensor", "0", "0.2"], ns, grace=300))
    cluster.apply(pod_manifest("stubborn", node, ["stubborn"], ns, grace=2))
    wait_phase(cluster, "polite", ns, "Running")
    wait_phase(cluster, "stubborn", ns, "Running")

    began = time.monotonic()
    # The program ends at once on the device's TERM: the 300 s grace period is not waited for.
    cluster.kubectl("delete", "pod", "polite", "-n", ns, "--timeout=60s")
    assert time.monotonic() - began < 30
    # This one ignores TERM: the device kills it when its 2 s grace period ends.
    cluster.kubectl("delete", "pod", "stubborn", "-n", ns, "--timeout=60s")
    deletes = {c["pod"].split("/")[1]: c["grace"] for c in probe_calls(probe_dir, node, "delete_pod")}
    assert deletes == {"polite": 300, "stubborn": 2}
    assert cluster.kubectl("get", "pods", "-n", ns, "-o", "name").stdout == ""


def test_a_device_that_goes_away_and_comes_back_rebooted(
    k8s_controllers: ControlPlane,
    k8s_namespace: str,
    start_vkpy: Any,
    link: SerialLink,
    start_device: StartDevice,
) -> None:
    cluster, node, ns = k8s_controllers, "serial-reboot", k8s_namespace
    device = start_device(link)
    start_vkpy([], nodes=[serial_node(node, link.host_path)])
    wait_node_ready(cluster, node)
    cluster.apply(deployment("blinker", ns, node, ["sensor", "0", "0.5"]))
    cluster.apply(pod_manifest("lonely", node, ["sleep", "1000"], ns))
    wait_phase(cluster, "lonely", ns, "Running")
    wait_for(
        lambda: jsonpath(cluster, "deployment", "blinker", "{.status.readyReplicas}", ns) == "1",
        timeout=60,
        what="the Deployment's replica to be ready",
    )
    (first,) = pods_of(cluster, ns, "blinker")

    # Unplugged: the board loses power, the by-id name disappears.
    device.kill()
    link.unplug()
    wait_for(lambda: ready_condition(cluster, node)["status"] == "False", timeout=30, what="node NotReady")
    condition = ready_condition(cluster, node)
    assert condition["reason"] == "DeviceDisconnected"
    assert condition["message"].startswith(str(link.host_path))
    assert jsonpath(cluster, "pod", "lonely", "{.status.phase}", ns) == "Running"  # not lost on a hunch

    # Plugged in again: a fresh boot that holds none of the pods.
    link.plug()
    start_device(link)
    wait_node_ready(cluster, node)
    wait_phase(cluster, "lonely", ns, "Failed")
    lonely = cluster.kubectl_json("get", "pod", "lonely", "-n", ns)
    assert lonely["status"]["reason"] == "DeviceLost"

    def replaced() -> bool:
        pods = [
            p for p in pods_of(cluster, ns, "blinker") if p["metadata"]["uid"] != first["metadata"]["uid"]
        ]
        return any(p.get("status", {}).get("phase") == "Running" for p in pods)

    wait_for(replaced, timeout=90, what="the Deployment's replacement to run")


def test_a_restarted_vkpy_adopts_running_pods(
    k8s_cluster: ControlPlane,
    k8s_namespace: str,
    start_vkpy: Any,
    link: SerialLink,
    start_device: StartDevice,
    probe_dir: Path,
) -> None:
    cluster, node, ns = k8s_cluster, "serial-adopt", k8s_namespace
    start_device(link)
    entry = serial_node(node, link.host_path)
    vkpy = start_vkpy([], nodes=[entry])
    wait_node_ready(cluster, node)
    cluster.apply(pod_manifest("survivor", node, ["count", "15", "0.4"], ns))
    cluster.apply(pod_manifest("orphan", node, ["sleep", "1000"], ns))
    wait_phase(cluster, "survivor", ns, "Running")
    wait_phase(cluster, "orphan", ns, "Running")
    orphan = jsonpath(cluster, "pod", "orphan", "{.metadata.uid}", ns)
    assert vkpy.stop() == 0
    # Deleted while vkpy is away: the device still runs it.
    cluster.kubectl("delete", "pod", "orphan", "-n", ns, "--force", "--grace-period=0")

    again = start_vkpy([], nodes=[serial_node(node, link.host_path)])
    again.wait_logged("pod.adopted")
    wait_phase(cluster, "survivor", ns, "Succeeded", timeout=60)
    assert len(probe_calls(probe_dir, node, "create_pod")) == 2  # survivor and orphan, once each
    wait_for(
        lambda: orphan in {c["uid"] for c in probe_calls(probe_dir, node, "delete_pod")},
        timeout=30,
        what="the orphan to be deleted on the device",
    )
    assert cluster.kubectl("logs", "survivor", "-n", ns).stdout == "".join(f"{i}\n" for i in range(1, 16))


def test_a_noisy_line_still_gives_the_right_results(
    k8s_cluster: ControlPlane,
    k8s_namespace: str,
    start_vkpy: Any,
    link: SerialLink,
    start_device: StartDevice,
) -> None:
    cluster, node, ns = k8s_cluster, "serial-noisy", k8s_namespace
    start_device(link)
    start_vkpy([], nodes=[serial_node(node, link.host_path, attempts=8, log_chunk=128)])
    wait_node_ready(cluster, node)
    link.set_faults(Faults(corrupt=0.0004, drop=0.0003, duplicate=0.0003, seed=11))
    for code in (0, 4):
        cluster.apply(pod_manifest(f"exit-{code}", node, ["exit", str(code)], ns))
    cluster.apply(pod_manifest("counter", node, ["count", "40", "0.02"], ns))
    wait_phase(cluster, "exit-0", ns, "Succeeded")
    wait_phase(cluster, "exit-4", ns, "Failed")
    wait_phase(cluster, "counter", ns, "Succeeded")
    assert cluster.kubectl("logs", "counter", "-n", ns).stdout == "".join(f"{i}\n" for i in range(1, 41))
    assert (
        jsonpath(cluster, "pod", "exit-4", "{.status.containerStatuses[0].state.terminated.exitCode}", ns)
        == "4"
    )


def test_the_documented_socat_example(
    k8s_cluster: ControlPlane, k8s_namespace: str, start_vkpy: Any, tmp_path: Path
) -> None:
    """docs/transports/serial.md: a pty pair from socat, the reference device on one end."""
    if shutil.which("socat") is None:
        missing_part("socat (Debian package socat; .ci/install-system-deps installs it)")
    cluster, node, ns = k8s_cluster, "serial-socat", k8s_namespace
    device_end, vkpy_end = tmp_path / "device-end", tmp_path / "vkpy-end"
    socat = subprocess.Popen(
        ["socat", "-d", "-d", f"pty,raw,echo=0,link={device_end}", f"pty,raw,echo=0,link={vkpy_end}"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    device: DeviceProcess | None = None
    try:
        wait_for(lambda: device_end.exists() and vkpy_end.exists(), timeout=10, what="the socat pty pair")
        device = DeviceProcess(str(device_end), "--device-id", "pty-board").start()
        start_vkpy(
            [],
            nodes=[
                {
                    "name": node,
                    "transport": "serial",
                    "serial": {"port": str(vkpy_end)},
                    "status_interval": "2s",
                }
            ],
        )
        wait_node_ready(cluster, node)
        cluster.apply(pod_manifest("hello", node, ["echo", "hello", "from", "the", "device"], ns))
        wait_phase(cluster, "hello", ns, "Succeeded")
        assert cluster.kubectl("logs", "hello", "-n", ns).stdout == "hello from the device\n"
    finally:
        if device is not None:
            device.stop()
        socat.send_signal(signal.SIGTERM)
        socat.wait(10)
