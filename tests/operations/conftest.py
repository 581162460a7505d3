"""Fixtures for running vkpy as an operator does: bootstrap credentials, a background approver,
vkpy processes with hand-made configurations (several per test, each on its own kubelet port)."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from ops_support import Approver, RunVkpy, StartApprover, service_account_kubeconfig

from vkpy.testing.cluster import ControlPlane
from vkpy.testing.runner import VkpyProcess

_LOGS = pytest.StashKey[list[Path]]()

BOOTSTRAP_NAMESPACE = "vkpy-ops"


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    report = yield
    if report.failed:
        for path in item.stash.get(_LOGS, []):
            try:
                text = path.read_text(errors="replace")
            except OSError:
                continue
            report.sections.append((f"vkpy log {path}", text[-15000:]))
    return report


@pytest.fixture(scope="session")
def bootstrap_kubeconfig(k8s_cluster: ControlPlane, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Bootstrap credentials as a kubelet gets them: allowed to ask for certificates and read them
    back (the built-in system:node-bootstrapper ClusterRole), nothing else, and not auto-approved."""
    return service_account_kubeconfig(
        k8s_cluster,
        tmp_path_factory.mktemp("bootstrap"),
        BOOTSTRAP_NAMESPACE,
        "vkpy-bootstrap",
        "system:node-bootstrapper",
    )


@pytest.fixture
def approver(k8s_cluster: ControlPlane) -> Iterator[StartApprover]:
    started: list[Approver] = []

    def start(prefix: str, verb: str = "approve") -> Approver:
        approver = Approver(k8s_cluster, prefix, verb).start()
        started.append(approver)
        return approver

    yield start
    for approver in started:
        approver.stop()


@pytest.fixture
def run_vkpy(
    k8s_cluster: ControlPlane, tmp_path: Path, probe_dir: Path, request: pytest.FixtureRequest
) -> Iterator[RunVkpy]:
    """``run_vkpy(config, name=...)``: start ``vkpy run`` with this configuration (a dict), its log
    shown when the test fails; stopped, and its nodes deleted, afterwards."""
    processes: list[VkpyProcess] = []

    def start(
        config: dict[str, Any], name: str | None = None, env: dict[str, str] | None = None
    ) -> VkpyProcess:
        process = VkpyProcess(
            config,
            tmp_path / (name or f"vkpy-{len(processes)}"),
            env={"VKPY_PROBE_DIR": str(probe_dir), **(env or {})},
        )
        request.node.stash.setdefault(_LOGS, []).append(process.log_path)
        processes.append(process.start())
        return process

    yield start
    for process in processes:
        process.stop(signal.SIGTERM)
    nodes = {entry["name"] for process in processes for entry in process.config.get("nodes", [])}
    for node in nodes:
        k8s_cluster.kubectl("delete", "node", node, "--wait=false", check=False)
