"""vkpy with an ssh node, driven with kubectl as a user would, against a real control plane and a real
OpenSSH sshd standing in for the device."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path

from helpers import TOLERATION, jsonpath, pod_manifest, probe_calls, wait_node_ready, wait_phase
from ssh_helpers import ssh_node_entry

from vkpy.testing import wait_for
from vkpy.testing.cluster import ControlPlane
from vkpy.testing.runner import VkpyProcess
from vkpy.testing.sshd import SshServer, TcpRelay, generate_key

StartVkpy = Callable[..., VkpyProcess]  # the start_vkpy fixture of tests/conftest.py


def ready_condition(cluster: ControlPlane, node: str) -> dict[str, str]:
    node_obj = cluster.kubectl_json("get", "node", node)
    for condition in node_obj["status"]["conditions"]:
        if condition["type"] == "Ready":
            return dict(condition)
    return {}


def kubectl_popen(cluster: ControlPlane, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [str(cluster.bin_dir / "kubectl"), f"--kubeconfig={cluster.admin_kubeconfig}", *args],
        stdout=subprocess.PIPE,
        text=True,
    )


def device_processes(sshd: SshServer) -> str:
    return sshd.run("ps -eo pid,pgid,args").stdout


def test_a_deployment_and_a_job_run_on_an_ssh_node(
    k8s_controllers: ControlPlane, k8s_namespace: str, start_vkpy: StartVkpy, sshd: SshServer, tmp_path: Path
) -> None:
    cluster, node = k8s_controllers, "ssh-workloads"
    start_vkpy([node], nodes=[ssh_node_entry(node, sshd, tmp_path)])
    wait_node_ready(cluster, node)
    info = cluster.kubectl_json("get", "node", node)
    assert info["status"]["capacity"]["cpu"] == "4"  # the config's capacity wins over the device's
    template = {
        "tolerations": [TOLERATION],
        "nodeSelector": {"kubernetes.io/hostname": node},
        "terminationGracePeriodSeconds": 2,
    }
    job = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": "evaluate", "namespace": k8s_namespace},
        "spec": {
            "backoffLimit": 0,
            "template": {
                "spec": {
                    **template,
                    "restartPolicy": "Never",
                    "containers": [
                        {
                            "name": "eval",
                            "image": "python:3-slim",
                            "command": ["sh", "-c", "echo evaluating model; sleep 1; echo score=0.93"],
                        }
                    ],
                }
            },
        },
    }
    failing = json.loads(json.dumps(job))
    failing["metadata"]["name"] = "evaluate-broken"
    failing["spec"]["template"]["spec"]["containers"][0]["command"] = ["sh", "-c", "echo oops >&2; exit 4"]
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "sensor", "namespace": k8s_namespace},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"app": "sensor"}},
            "template": {
                "metadata": {"labels": {"app": "sensor"}},
                "spec": {
                    **template,
                    "containers": [
                        {
                            "name": "reader",
                            "image": "ignored",
                            "command": [
                                "sh",
                                "-c",
                                'i=0; while :; do i=$((i+1)); echo "reading $i"; sleep 0.5; done',
                            ],
                        }
                    ],
                },
            },
        },
    }
    for manifest in (job, failing, deployment):
        cluster.apply(json.dumps(manifest))

    cluster.kubectl("wait", "--for=condition=complete", "job/evaluate", "-n", k8s_namespace, "--timeout=90s")
    assert cluster.kubectl("logs", "job/evaluate", "-n", k8s_namespace).stdout.split() == [
        "evaluating",
        "model",
        "score=0.93",
    ]
    cluster.kubectl(
        "wait", "--for=condition=failed", "job/evaluate-broken", "-n", k8s_namespace, "--timeout=90s"
    )
    broken = cluster.kubectl_json("get", "pods", "-n", k8s_namespace, "-l", "job-name=evaluate-broken")[
        "items"
    ][0]
    assert broken["status"]["containerStatuses"][0]["state"]["terminated"]["exitCode"] == 4

    cluster.kubectl("rollout", "status", "deployment/sensor", "-n", k8s_namespace, "--timeout=90s")
    pods = cluster.kubectl_json("get", "pods", "-n", k8s_namespace, "-l", "app=sensor")["items"]
    assert len(pods) == 2
    assert all(p["spec"]["nodeName"] == node for p in pods)
    name = pods[0]["metadata"]["name"]
    follow = kubectl_popen(cluster, "logs", "-f", name, "-n", k8s_namespace)
    assert follow.stdout is not None
    seen = [follow.stdout.readline().strip() for _ in range(3)]
    follow.terminate()
    follow.wait(10)
    numbers = [int(line.split()[1]) for line in seen]
    assert all(line.startswith("reading") for line in seen)
    assert numbers == sorted(numbers)
    assert device_processes(sshd).count("while :; do i=") >= 2

    cluster.kubectl("delete", "deployment", "sensor", "-n", k8s_namespace)
    wait_for(
        lambda: not cluster.kubectl_json("get", "pods", "-n", k8s_namespace, "-l", "app=sensor")["items"],
        timeout=60,
        what="the deployment's pods to be gone",
    )
    wait_for(
        lambda: "while :; do i=" not in device_processes(sshd),
        timeout=30,
        what="the deployment's processes to end on the device",
    )


def test_delete_kills_the_process_group_and_secrets_never_reach_the_log(
    k8s_cluster: ControlPlane, k8s_namespace: str, start_vkpy: StartVkpy, sshd: SshServer, tmp_path: Path
) -> None:
    cluster, node = k8s_cluster, "ssh-delete"
    vkpy = start_vkpy([node], nodes=[ssh_node_entry(node, sshd, tmp_path)])
    wait_node_ready(cluster, node)
    secret_value = "hunter2-vkpy-7f3a"
    cluster.kubectl(
        "create", "secret", "generic", "api", f"--from-literal=token={secret_value}", "-n", k8s_namespace
    )
    canary = tmp_path / "pwned"
    nasty = [f"; touch {canary}", f"$(touch {canary})", f"`touch {canary}`", "quote ' \" here", "new\nline"]
    manifest = json.loads(
        pod_manifest(
            "worker",
            node,
            ["sh", "-c", 'echo "token=$TOKEN"; sleep 1071 & sleep 1072 & wait'],
            k8s_namespace,
            grace=2,
            env=[{"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "api", "key": "token"}}}],
        )
    )
    manifest["spec"]["containers"].append(
        {"name": "args", "image": "none", "command": ["printf", "<%s>\\n"], "args": nasty}
    )
    cluster.apply(json.dumps(manifest))
    wait_for(
        lambda: jsonpath(
            cluster,
            "pod",
            "worker",
            "{.status.containerStatuses[?(@.name=='main')].state.running.startedAt}",
            k8s_namespace,
        ),
        timeout=60,
        what="the main container to run",
    )
    wait_for(
        lambda: "token=" in cluster.kubectl("logs", "worker", "-c", "main", "-n", k8s_namespace).stdout,
        timeout=30,
        what="the token in the logs",
    )
    assert (
        cluster.kubectl("logs", "worker", "-c", "main", "-n", k8s_namespace).stdout
        == f"token={secret_value}\n"
    )
    wait_for(
        lambda: (
            jsonpath(
                cluster,
                "pod",
                "worker",
                "{.status.containerStatuses[?(@.name=='args')].state.terminated.exitCode}",
                k8s_namespace,
            )
            == "0"
        ),
        timeout=30,
        what="the args container to finish",
    )
    assert cluster.kubectl("logs", "worker", "-c", "args", "-n", k8s_namespace).stdout == "".join(
        f"<{word}>\n" for word in nasty
    )
    assert not canary.exists()

    before = device_processes(sshd)
    groups = {line.split()[1] for line in before.splitlines() if "sleep 107" in line}
    assert len(groups) == 1  # both sleeps share the container's process group
    cluster.kubectl("delete", "pod", "worker", "-n", k8s_namespace, "--timeout=60s")
    after = device_processes(sshd)
    assert "sleep 1071" not in after
    assert "sleep 1072" not in after
    # The group's last members (exiting shells, not yet reaped) may linger for a moment.
    wait_for(
        lambda: not any(line.split()[1] in groups for line in device_processes(sshd).splitlines()[1:]),
        timeout=15,
        what="the container's process group to be gone",
    )
    pods_dir = tmp_path / f"{node}-device" / "pods" / node
    wait_for(lambda: not list(pods_dir.iterdir()), timeout=30, what="the pod folder to be removed")
    log = vkpy.log_text()
    assert "ssh.pod_created" in log
    assert "TOKEN" in log  # names may be logged...
    assert secret_value not in log  # ...values never


def test_a_cut_link_turns_the_node_not_ready_and_nothing_is_lost(
    k8s_cluster: ControlPlane,
    k8s_namespace: str,
    start_vkpy: StartVkpy,
    sshd: SshServer,
    relay: TcpRelay,
    tmp_path: Path,
) -> None:
    cluster, node = k8s_cluster, "ssh-linkcut"
    start_vkpy([node], nodes=[ssh_node_entry(node, sshd, tmp_path, port=relay.port)])
    wait_node_ready(cluster, node)
    cluster.apply(
        pod_manifest(
            "counter",
            node,
            ["sh", "-c", "for i in $(seq 1 40); do echo count $i; sleep 0.25; done"],
            k8s_namespace,
        )
    )
    wait_phase(cluster, "counter", k8s_namespace, "Running")

    relay.cut()
    wait_for(
        lambda: ready_condition(cluster, node).get("status") == "False", timeout=30, what="node NotReady"
    )
    condition = ready_condition(cluster, node)
    assert condition["reason"] == "SSHDisconnected"
    assert f"127.0.0.1:{relay.port}" in condition["message"]
    assert "count" in device_processes(sshd) or "seq 1 40" in device_processes(sshd)
    assert jsonpath(cluster, "pod", "counter", "{.status.phase}", k8s_namespace) == "Running"

    relay.restore()
    wait_node_ready(cluster, node, timeout=30)
    wait_phase(cluster, "counter", k8s_namespace, "Succeeded", timeout=60)
    logs = cluster.kubectl("logs", "counter", "-n", k8s_namespace).stdout
    assert logs.splitlines() == [f"count {i}" for i in range(1, 41)]


def test_a_killed_vkpy_adopts_its_running_pod_without_starting_it_twice(
    k8s_cluster: ControlPlane,
    k8s_namespace: str,
    start_vkpy: StartVkpy,
    sshd: SshServer,
    tmp_path: Path,
    probe_dir: Path,
) -> None:
    cluster, node = k8s_cluster, "ssh-adopt"
    entry = ssh_node_entry(node, sshd, tmp_path)
    vkpy = start_vkpy([node], nodes=[entry])
    wait_node_ready(cluster, node)
    cluster.apply(
        pod_manifest(
            "survivor",
            node,
            ["sh", "-c", "echo started; sleep 6.25; echo finished"],
            k8s_namespace,
        )
    )
    wait_phase(cluster, "survivor", k8s_namespace, "Running")
    vkpy.kill()

    again = start_vkpy([node], nodes=[json.loads(json.dumps(entry))])
    again.wait_logged("pod.adopted", timeout=60)
    wait_phase(cluster, "survivor", k8s_namespace, "Succeeded", timeout=60)
    assert len([c for c in probe_calls(probe_dir, node, "create_pod") if c["pod"].endswith("/survivor")]) == 1
    assert cluster.kubectl("logs", "survivor", "-n", k8s_namespace).stdout.split() == ["started", "finished"]
    assert "sleep 6.25" not in device_processes(sshd)


def test_a_wrong_host_key_keeps_the_node_not_ready_with_the_reason(
    k8s_cluster: ControlPlane, start_vkpy: StartVkpy, sshd: SshServer, tmp_path: Path
) -> None:
    cluster, node = k8s_cluster, "ssh-hostkey"
    impostor = generate_key(tmp_path / "impostor")
    known = tmp_path / "wrong_known_hosts"
    known.write_text(f"[127.0.0.1]:{sshd.port} {' '.join(Path(f'{impostor}.pub').read_text().split()[:2])}\n")
    vkpy = start_vkpy([node], nodes=[ssh_node_entry(node, sshd, tmp_path, ssh={"known_hosts": str(known)})])
    vkpy.wait_logged("ssh.host_key_refused", timeout=60)
    wait_for(
        lambda: ready_condition(cluster, node).get("reason") == "SSHHostKeyMismatch",
        timeout=60,
        what="the node to say why it is not ready",
    )
    condition = ready_condition(cluster, node)
    assert condition["status"] == "False"
    fingerprint = subprocess.run(
        ["ssh-keygen", "-lf", f"{sshd.host_key}.pub"], capture_output=True, text=True, check=True
    ).stdout.split()[1]
    assert fingerprint in condition["message"]
    assert f"127.0.0.1:{sshd.port}" in condition["message"]
    assert fingerprint in vkpy.log_text()
