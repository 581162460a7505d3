"""The micropython plugin end to end: ``vkpy run`` as a real process against the real control plane,
its node a serial port in raw mode with ``plugins: [micropython]``, the fake board as a separate
process on the other side of a real pty, and kubectl as a user drives it."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import yaml
from board_support import FakeBoard, StartBoard
from helpers import StartVkpy, jsonpath, pod_manifest, wait_node_ready, wait_phase

from vkpy.testing import wait_for
from vkpy.testing.cluster import ControlPlane
from vkpy.testing.runner import VkpyProcess

WAITING_REASON = "{.status.containerStatuses[0].state.waiting.reason}"


def board_node(name: str, board: FakeBoard, plugins: tuple[str, ...] = ("micropython",)) -> dict[str, Any]:
    return {
        "name": name,
        "transport": "serial",
        "serial": {"port": board.path, "mode": "raw", "reconnect_initial": "200ms", "reconnect_max": "1s"},
        "plugins": list(plugins),
        "status_interval": "2s",
    }


def script_pod(name: str, node: str, namespace: str, source: str, **spec: Any) -> str:
    return pod_manifest(name, node, ["python", "-c", source], namespace, **spec)


def terminated(cluster: ControlPlane, pod: str, namespace: str) -> dict[str, Any]:
    state = jsonpath(cluster, "pod", pod, "{.status.containerStatuses[0].state.terminated}", namespace)
    return dict(json.loads(state)) if state else {}


def start(start_vkpy: StartVkpy, cluster: ControlPlane, board: FakeBoard, node: str) -> VkpyProcess:
    process = start_vkpy([], nodes=[board_node(node, board)])
    wait_node_ready(cluster, node)
    return process


def test_a_script_prints_its_lines_to_kubectl_logs_and_env_arrives(
    k8s_cluster: ControlPlane, k8s_namespace: str, start_vkpy: StartVkpy, start_board: StartBoard
) -> None:
    ns, node = k8s_namespace, "mpy-hello"
    start(start_vkpy, k8s_cluster, start_board(), node)
    k8s_cluster.kubectl("create", "configmap", "settings", "-n", ns, "--from-literal=colour=green")
    source = (
        "import os, time\n"
        "for i in range(3):\n"
        "    print('tick', i)\n"
        "    time.sleep(0.2)\n"
        "print('greeting', ENV['GREETING'], os.environ['GREETING'])\n"
        "print('colour', ENV['COLOUR'])\n"
    )
    env = [
        {"name": "GREETING", "value": "hello from kubernetes"},
        {"name": "COLOUR", "valueFrom": {"configMapKeyRef": {"name": "settings", "key": "colour"}}},
    ]
    k8s_cluster.apply(script_pod("hello", node, ns, source, env=env))
    wait_phase(k8s_cluster, "hello", ns, "Succeeded")

    logs = k8s_cluster.kubectl("logs", "hello", "-n", ns).stdout
    assert logs == (
        "tick 0\ntick 1\ntick 2\ngreeting hello from kubernetes hello from kubernetes\ncolour green\n"
    )
    assert k8s_cluster.kubectl("logs", "hello", "-n", ns, "--tail=1").stdout == "colour green\n"
    stamped = k8s_cluster.kubectl("logs", "hello", "-n", ns, "--timestamps").stdout.splitlines()
    assert [line.split(" ", 1)[1] for line in stamped][:3] == ["tick 0", "tick 1", "tick 2"]
    assert terminated(k8s_cluster, "hello", ns)["exitCode"] == 0


def test_a_script_from_a_configmap_volume(
    k8s_cluster: ControlPlane, k8s_namespace: str, start_vkpy: StartVkpy, start_board: StartBoard
) -> None:
    ns, node = k8s_namespace, "mpy-volume"
    start(start_vkpy, k8s_cluster, start_board(), node)
    k8s_cluster.apply(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {"name": "app", "namespace": ns},
                "data": {"main.py": "print('main.py got', ARGV)\n"},
            }
        )
    )
    manifest = json.loads(pod_manifest("app", node, ["python", "/app/main.py", "--fast"], ns))
    manifest["spec"]["volumes"] = [{"name": "code", "configMap": {"name": "app"}}]
    manifest["spec"]["containers"][0]["volumeMounts"] = [{"name": "code", "mountPath": "/app"}]
    k8s_cluster.apply(json.dumps(manifest))
    wait_phase(k8s_cluster, "app", ns, "Succeeded")
    assert k8s_cluster.kubectl("logs", "app", "-n", ns).stdout == "main.py got ['/app/main.py', '--fast']\n"


def test_a_raising_script_fails_with_exit_code_1_and_the_exception_as_message(
    k8s_cluster: ControlPlane, k8s_namespace: str, start_vkpy: StartVkpy, start_board: StartBoard
) -> None:
    ns, node = k8s_namespace, "mpy-boom"
    start(start_vkpy, k8s_cluster, start_board(), node)
    k8s_cluster.apply(script_pod("boom", node, ns, "print('about to fail')\nraise ValueError('boom')\n"))
    wait_phase(k8s_cluster, "boom", ns, "Failed")
    state = terminated(k8s_cluster, "boom", ns)
    assert (state["exitCode"], state["reason"], state["message"]) == (1, "Error", "ValueError: boom")
    assert k8s_cluster.kubectl("logs", "boom", "-n", ns).stdout == (
        "about to fail\n"
        "Traceback (most recent call last):\n"
        '  File "<stdin>", line 2, in <module>\n'
        "ValueError: boom\n"
    )


def test_kubectl_delete_interrupts_a_long_running_script_and_the_next_pod_gets_the_board(
    k8s_cluster: ControlPlane, k8s_namespace: str, start_vkpy: StartVkpy, start_board: StartBoard
) -> None:
    ns, node = k8s_namespace, "mpy-delete"
    board = start_board()
    vkpy = start(start_vkpy, k8s_cluster, board, node)
    forever = "import time\nwhile True:\n    print('working')\n    time.sleep(0.2)\n"
    k8s_cluster.apply(script_pod("forever", node, ns, forever))
    wait_phase(k8s_cluster, "forever", ns, "Running")
    k8s_cluster.apply(script_pod("next", node, ns, "print('my turn')\n"))
    wait_for(
        lambda: jsonpath(k8s_cluster, "pod", "next", WAITING_REASON, ns) == "BoardBusy",
        timeout=30,
        what="the second pod to wait for the board",
    )
    wait_for(
        lambda: "working" in k8s_cluster.kubectl("logs", "forever", "-n", ns).stdout,
        timeout=30,
        what="the long script's output",
    )

    began = time.monotonic()
    # Ctrl-C ends the script at once: the 30 s grace period is not waited for.
    k8s_cluster.kubectl("delete", "pod", "forever", "-n", ns, "--timeout=60s")
    assert time.monotonic() - began < 20
    wait_phase(k8s_cluster, "next", ns, "Succeeded")
    assert k8s_cluster.kubectl("logs", "next", "-n", ns).stdout == "my turn\n"
    # The script ended with KeyboardInterrupt, reported as exit code 130.
    ended = [json.loads(line) for line in vkpy.log_text().splitlines() if "micropython.script_ended" in line]
    assert [(e["pod"], e["exit_code"], e["reason"]) for e in ended] == [
        (f"{ns}/forever", 130, "Interrupted"),
        (f"{ns}/next", 0, "Completed"),
    ]
    assert board.log_text().count("status='error'") == 1  # the interrupted script, nothing else


def test_a_raw_serial_node_without_the_plugin_rejects_pods_with_a_clear_reason(
    k8s_cluster: ControlPlane,
    k8s_namespace: str,
    start_vkpy: StartVkpy,
    start_board: StartBoard,
    tmp_path: Path,
) -> None:
    ns, node = k8s_namespace, "mpy-no-plugin"
    start_vkpy([], nodes=[board_node(node, start_board(), plugins=())])
    wait_node_ready(k8s_cluster, node)
    k8s_cluster.apply(script_pod("lost", node, ns, "print(1)"))
    wait_phase(k8s_cluster, "lost", ns, "Failed")
    assert jsonpath(k8s_cluster, "pod", "lost", "{.status.reason}", ns) == "NoDevicePlugin"
    message = jsonpath(k8s_cluster, "pod", "lost", "{.status.message}", ns)
    assert "transport serial in raw mode needs a device plugin such as micropython" in message
