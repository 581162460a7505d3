"""The usb transport end to end: ``vkpy run`` as a real process against the real control plane,
its node backed by an emulated USB device (the reference device behind bulk endpoints, below the
real pyusb) that the test plugs, unplugs and power-cycles through a bus file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml
from helpers import TOLERATION, jsonpath, pod_manifest, wait_node_ready, wait_phase
from usb_helpers import node_condition
from vkpy_usb.testing import BusFile

from vkpy.testing import wait_for
from vkpy.testing.cluster import ControlPlane


def usb_node(name: str, serial: str, **usb: Any) -> dict[str, Any]:
    return {
        "name": name,
        "transport": "usb",
        "usb": {
            "vendor_id": "0x1209",
            "product_id": "0x0001",
            "serial_number": serial,
            "backend": "vkpy_usb.testing:EmulatedBackend",  # test only: the bus file's devices
            "read_timeout": "50ms",
            "reconnect_initial": "200ms",
            "reconnect_max": "1s",
            **usb,
        },
        "status_interval": "2s",
        "restart_backoff": {"initial": "1s", "max": "4s"},
    }


def template(node: str, app: str, command: list[str], restart_policy: str) -> dict[str, Any]:
    return {
        "metadata": {"labels": {"app": app}},
        "spec": {
            "nodeSelector": {"kubernetes.io/hostname": node},
            "tolerations": [TOLERATION],
            "restartPolicy": restart_policy,
            "containers": [
                {
                    "name": "main",
                    "image": "reference-device",
                    "command": command,
                    "env": [{"name": "SENSOR_NAME", "value": f"{app}-sensor"}],
                }
            ],
        },
    }


def test_a_job_and_a_deployment_run_on_a_usb_device(
    k8s_controllers: ControlPlane, k8s_namespace: str, start_vkpy: Any, bus_file: BusFile
) -> None:
    cluster = k8s_controllers
    bus_file.add("board", serial_number="J1", port_numbers=[1, 2], reference={"pods": 4})
    bus_file.add("other", serial_number="J2", port_numbers=[1, 3])  # same ids: found by serial
    start_vkpy([], nodes=[usb_node("usb-jobs", "J1")])
    wait_node_ready(cluster, "usb-jobs")
    node = cluster.kubectl_json("get", "node", "usb-jobs")
    assert node["status"]["capacity"]["pods"] == "4"  # what the device announced in its hello

    job = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": "count", "namespace": k8s_namespace},
        "spec": {
            "backoffLimit": 0,
            "template": template("usb-jobs", "count", ["count", "3", "0.2"], "Never"),
        },
    }
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "sensors", "namespace": k8s_namespace},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"app": "sensors"}},
            "template": template("usb-jobs", "sensors", ["sensor", "0", "0.3"], "Always"),
        },
    }
    cluster.apply(yaml.safe_dump(job))
    cluster.apply(yaml.safe_dump(deployment))

    wait_for(
        lambda: jsonpath(cluster, "job", "count", "{.status.succeeded}", k8s_namespace) == "1",
        timeout=90,
        what="the Job to succeed",
    )
    assert cluster.kubectl("logs", "job/count", "-n", k8s_namespace).stdout == "1\n2\n3\n"

    wait_for(
        lambda: jsonpath(cluster, "deployment", "sensors", "{.status.readyReplicas}", k8s_namespace) == "2",
        timeout=90,
        what="2 ready replicas",
    )
    pods = json.loads(
        cluster.kubectl("get", "pods", "-n", k8s_namespace, "-l", "app=sensors", "-o", "json").stdout
    )
    first = pods["items"][0]["metadata"]["name"]
    wait_for(
        lambda: "reading=2" in cluster.kubectl("logs", first, "-n", k8s_namespace).stdout,
        timeout=30,
        what="two sensor readings",
    )
    logs = cluster.kubectl("logs", first, "-n", k8s_namespace, "--tail=1").stdout
    assert logs.startswith("sensors-sensor reading=")
    assert logs.count("\n") == 1

    cluster.kubectl("scale", "deployment", "sensors", "--replicas=0", "-n", k8s_namespace)
    wait_for(
        lambda: (
            not json.loads(
                cluster.kubectl("get", "pods", "-n", k8s_namespace, "-l", "app=sensors", "-o", "json").stdout
            )["items"]
        ),
        timeout=60,
        what="the replicas to be deleted from the device",
    )


def test_unplug_turns_the_node_not_ready_and_replug_reconciles(
    k8s_cluster: ControlPlane, k8s_namespace: str, start_vkpy: Any, bus_file: BusFile, tmp_path: Path
) -> None:
    cluster = k8s_cluster
    bus_file.add("board", serial_number="R1", port_numbers=[1, 4])
    start_vkpy([], nodes=[usb_node("usb-plug", "R1")])
    wait_node_ready(cluster, "usb-plug")
    cluster.apply(pod_manifest("ticker", "usb-plug", ["count", "100000", "0.2"], k8s_namespace))
    cluster.apply(pod_manifest("doomed", "usb-plug", ["sleep", "3600"], k8s_namespace))
    wait_phase(cluster, "ticker", k8s_namespace, "Running")
    wait_phase(cluster, "doomed", k8s_namespace, "Running")
    wait_for(
        lambda: "3\n" in cluster.kubectl("logs", "ticker", "-n", k8s_namespace).stdout,
        timeout=30,
        what="the ticker to count",
    )

    # A self-powered board pulled out: NotReady, and its pods keep running on it.
    bus_file.unplug("board")
    wait_for(
        lambda: node_condition(cluster, "usb-plug").get("status") == "False",
        timeout=30,
        what="the node NotReady",
    )
    condition = node_condition(cluster, "usb-plug")
    assert condition["reason"] == "DeviceDisconnected"
    assert condition["message"].startswith("usb 1209:0001 serial R1: ")

    bus_file.plug("board")
    wait_node_ready(cluster, "usb-plug", timeout=30)
    ticker = cluster.kubectl_json("get", "pod", "ticker", "-n", k8s_namespace)
    assert ticker["status"]["phase"] == "Running"
    assert ticker["status"]["containerStatuses"][0]["restartCount"] == 0
    lines = cluster.kubectl("logs", "ticker", "-n", k8s_namespace).stdout.split()
    assert lines[:3] == ["1", "2", "3"]  # the same run, adopted rather than created again
    wait_for(
        lambda: len(cluster.kubectl("logs", "ticker", "-n", k8s_namespace).stdout.split()) > len(lines),
        timeout=20,
        what="the ticker to go on counting",
    )

    # A bus-powered board: unplugging cost it its pods; the reconnect's list tells vkpy so.
    bus_file.unplug("board", power_loss=True)
    wait_for(
        lambda: node_condition(cluster, "usb-plug").get("status") == "False",
        timeout=30,
        what="the node NotReady",
    )
    bus_file.plug("board")
    wait_node_ready(cluster, "usb-plug", timeout=30)
    wait_phase(cluster, "doomed", k8s_namespace, "Failed", timeout=60)
    doomed = cluster.kubectl_json("get", "pod", "doomed", "-n", k8s_namespace)
    assert doomed["status"]["reason"] == "DeviceLost"

    # Delete still works after all that.
    cluster.kubectl("delete", "pod", "ticker", "-n", k8s_namespace, "--timeout=60s")
    assert cluster.kubectl("get", "pod", "ticker", "-n", k8s_namespace, check=False).returncode != 0
