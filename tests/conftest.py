"""Shared fixtures. The control plane fixtures (k8s_cluster, k8s_controllers, k8s_namespace) come
from vkpy.testing's pytest plugin; this file adds what vkpy's own end-to-end tests need."""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import StartVkpy, node_entry

from vkpy.testing.cluster import ControlPlane, free_port
from vkpy.testing.runner import VkpyProcess

_LOGS = pytest.StashKey[list[Path]]()
ROOT = Path(__file__).resolve().parent.parent


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    report = yield
    if report.failed:
        for path in item.stash.get(_LOGS, []):
            try:
                text = path.read_text(errors="replace")
            except OSError:
                continue
            report.sections.append((f"vkpy log {path}", text[-12000:]))
    return report


@pytest.fixture
def probe_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "probe"
    directory.mkdir()
    return directory


def kill_processes_under(root: Path) -> None:
    """SIGKILL every process whose working folder or command line lies under ``root``."""
    marker = f"{root}/"
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cwd = os.readlink(entry / "cwd")
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if f"{cwd}/".startswith(marker) or marker in cmdline:
            with contextlib.suppress(OSError):
                os.kill(int(entry.name), signal.SIGKILL)


@pytest.fixture(scope="session")
def shared_identity(k8s_cluster: ControlPlane, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A kubeconfig for the ServiceAccount bound to deploy/rbac.yaml's ClusterRole."""
    from vkpy.testing.pki import write_kubeconfig

    k8s_cluster.kubectl("apply", "-f", str(ROOT / "deploy" / "rbac.yaml"))
    token = k8s_cluster.kubectl(
        "create", "token", "vkpy", "-n", "vkpy-system", "--duration=4h"
    ).stdout.strip()
    return write_kubeconfig(
        tmp_path_factory.mktemp("shared") / "kubeconfig",
        k8s_cluster.server,
        k8s_cluster.ca.files.cert,
        "vkpy",
        token=token,
    )


@pytest.fixture
def start_vkpy(
    k8s_cluster: ControlPlane, tmp_path: Path, probe_dir: Path, request: pytest.FixtureRequest
) -> Iterator[StartVkpy]:
    """Start `vkpy run` as a user would. ``start_vkpy(["n1"])`` runs node n1 with its own
    system:node identity; ``identity=<kubeconfig>`` shares one identity between the nodes."""
    processes: list[VkpyProcess] = []
    node_names: set[str] = set()
    serving = k8s_cluster.serving_certificate("vkpy-test")
    port = free_port()

    def start(
        names: list[str], identity: Path | None = None, nodes: list[dict[str, Any]] | None = None, **top: Any
    ) -> VkpyProcess:
        entries = nodes or [node_entry(n, tmp_path / "state") for n in names]
        for entry in entries:
            node_names.add(entry["name"])
            if identity is None and "kubeconfig" not in entry:
                entry["kubeconfig"] = str(k8s_cluster.node_identity(entry["name"]).kubeconfig)
        config: dict[str, Any] = {
            "log": {"level": "debug", "format": "json"},
            "kubelet": {
                "address": "127.0.0.1",
                "port": port,
                "tls_cert": str(serving.cert),
                "tls_key": str(serving.key),
                "client_ca": str(k8s_cluster.ca.files.cert),
            },
            "nodes": entries,
            **top,
        }
        if identity is not None:
            config["kubeconfig"] = str(identity)
        process = VkpyProcess(
            config, tmp_path / f"vkpy-{len(processes)}", env={"VKPY_PROBE_DIR": str(probe_dir)}
        )
        request.node.stash.setdefault(_LOGS, []).append(process.log_path)
        processes.append(process.start())
        return process

    yield start
    for process in processes:
        process.stop()
    # vkpy leaves device work running when it stops, by design; the test's "device" must not
    # outlive the test.
    kill_processes_under(tmp_path)
    for name in node_names:
        k8s_cluster.kubectl("delete", "node", name, "--wait=false", check=False)
