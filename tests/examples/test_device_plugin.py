"""The example device plugin (examples/01-device-plugin), installed and selected the way a user
does it: a package with an entry point, named in a node's ``plugins:``."""

from __future__ import annotations

import importlib.metadata
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import ROOT, StartVkpy, jsonpath, node_entry, pod_manifest, wait_node_ready, wait_phase

from vkpy.testing.cluster import ControlPlane
from vkpy.testing.pytest_plugin import missing_part

EXAMPLE = ROOT / "examples" / "01-device-plugin"
PLUGIN = "nice-runner"
ANNOTATION = "example.vkpy.io/nice"


def _installed() -> bool:
    return any(ep.name == PLUGIN for ep in importlib.metadata.entry_points(group="vkpy"))


@pytest.fixture(scope="module")
def nice_runner() -> str:
    """The example installed in this interpreter's environment (nox installs it; elsewhere it is
    installed here, once, editable)."""
    if not _installed():
        result = subprocess.run(
            [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "-e", str(EXAMPLE)],
            capture_output=True,
            text=True,
        )
        if result.returncode != 0 or not _installed():
            missing_part(f"the example plugin, which pip could not install: {result.stderr.strip()[-2000:]}")
    return PLUGIN


def manifest(name: str, node: str, namespace: str, nice: str | None) -> str:
    # `nice` without arguments prints the niceness it runs at.
    body = json.loads(pod_manifest(name, node, ["nice"], namespace))
    if nice is not None:
        body["metadata"]["annotations"] = {ANNOTATION: nice}
    return json.dumps(body)


def test_only_annotated_pods_run_niced(
    k8s_cluster: ControlPlane, k8s_namespace: str, start_vkpy: StartVkpy, tmp_path: Path, nice_runner: str
) -> None:
    start_vkpy([], nodes=[node_entry("example-nice", tmp_path / "state", plugins=[nice_runner])])
    wait_node_ready(k8s_cluster, "example-nice")
    k8s_cluster.apply(manifest("plain", "example-nice", k8s_namespace, nice=None))
    k8s_cluster.apply(manifest("niced", "example-nice", k8s_namespace, nice="10"))
    wait_phase(k8s_cluster, "plain", k8s_namespace, "Succeeded")
    wait_phase(k8s_cluster, "niced", k8s_namespace, "Succeeded")

    plain = int(k8s_cluster.kubectl("logs", "plain", "-n", k8s_namespace).stdout)
    niced = int(k8s_cluster.kubectl("logs", "niced", "-n", k8s_namespace).stdout)
    assert niced == min(19, plain + 10)  # relative to whatever niceness vkpy itself runs at
    # The pod in the API is the user's: only what runs on the device changed.
    assert jsonpath(k8s_cluster, "pod", "niced", "{.spec.containers[0].command}", k8s_namespace) == '["nice"]'


def test_a_bad_annotation_fails_the_pod_with_the_plugins_reason(
    k8s_cluster: ControlPlane, k8s_namespace: str, start_vkpy: StartVkpy, tmp_path: Path, nice_runner: str
) -> None:
    start_vkpy([], nodes=[node_entry("example-bad", tmp_path / "state", plugins=[nice_runner])])
    wait_node_ready(k8s_cluster, "example-bad")
    k8s_cluster.apply(manifest("greedy", "example-bad", k8s_namespace, nice="-5"))
    wait_phase(k8s_cluster, "greedy", k8s_namespace, "Failed")

    described = k8s_cluster.kubectl("describe", "pod", "greedy", "-n", k8s_namespace).stdout
    assert re.search(r"^Reason:\s+InvalidNiceness$", described, re.MULTILINE)
    assert "must be a whole number from 1 to 19, got '-5'" in described
    assert list((tmp_path / "state" / "example-bad").glob("*/pod.json")) == []  # never reached the device
