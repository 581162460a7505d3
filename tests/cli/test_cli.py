"""The ``vkpy`` console script, run for real as a subprocess against plugins installed for real: a
distribution on PYTHONPATH whose entry points the loader finds like any pip-installed one."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from vkpy.testing import wait_for
from vkpy.testing.cluster import ControlPlane, free_port

VKPY = Path(sys.executable).parent / "vkpy"

_FAKE_TRANSPORT = """
import attrs
import vkpy


@attrs.frozen(kw_only=True)
class Options:
    host: str
    port: int = 22


class FakeTransport(vkpy.Transport):
    # A device that holds no pods and is always healthy: enough for a node to register.

    options_class = Options

    @vkpy.hookimpl
    async def create_pod(self, node, pod):
        return None

    @vkpy.hookimpl
    async def node_health(self, node):
        return vkpy.DeviceHealth(reachable=True)

    @vkpy.hookimpl
    async def list_pods(self, node):
        return []

    @vkpy.hookimpl
    async def get_pod_status(self, node, pod):
        return None

    @vkpy.hookimpl
    async def delete_pod(self, node, pod, grace_period_seconds):
        return None


@vkpy.hookimpl
def register_transports(register):
    register("fake", FakeTransport)
"""

_DEVICE_PLUGIN = """
import vkpy


@vkpy.hookimpl
async def get_pod_status(node, pod):
    return vkpy.DEFER
"""


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder holding an installed distribution 'vkpy-clitest' with three plugins: a transport,
    a device plugin, and one that fails to import."""
    folder = tmp_path_factory.mktemp("site")
    (folder / "vkpy_clitest_fake.py").write_text(_FAKE_TRANSPORT)
    (folder / "vkpy_clitest_blink.py").write_text(_DEVICE_PLUGIN)
    (folder / "vkpy_clitest_broken.py").write_text("raise ImportError('no driver for this board')\n")
    dist = folder / "vkpy_clitest-1.2.3.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: vkpy-clitest\nVersion: 1.2.3\n")
    (dist / "entry_points.txt").write_text(
        "[vkpy]\nfake = vkpy_clitest_fake\nblink = vkpy_clitest_blink\nbroken = vkpy_clitest_broken\n"
    )
    return folder


def _env(site: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("VKPY_CONFIG", "VKPY_LOAD_PLUGINS", "PYTHONPATH")}
    # Only this test's plugins: whatever else is installed must not change the outcome.
    env.update({"PYTHONPATH": str(site), "VKPY_LOAD_PLUGINS": "fake,blink,broken"})
    env.update(extra)
    return env


def _vkpy(site: Path, *args: str, cwd: Path | None = None, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(VKPY), *args], capture_output=True, text=True, env=_env(site, **env), cwd=cwd, timeout=60
    )


def _config(folder: Path, text: str, name: str = "vkpy.yaml") -> Path:
    path = folder / name
    path.write_text(textwrap.dedent(text))
    return path


GOOD = """\
nodes:
  - {name: bench-pi-01, transport: fake, fake: {host: 192.168.1.20}, plugins: [blink]}
  - {name: bench-pi-02, transport: fake, fake: {host: 192.168.1.21, port: 2222}}
"""


def test_check_ok(site: Path, tmp_path: Path) -> None:
    path = _config(tmp_path, GOOD)
    result = _vkpy(site, "check", "-c", str(path))
    assert result.returncode == 0, result.stderr
    assert result.stdout == "ok: 2 node(s): bench-pi-01 (fake), bench-pi-02 (fake)\n"
    # the broken plugin is not used by this file: a warning only
    assert result.stderr.startswith("warning: plugin 'broken' (vkpy_clitest_broken) failed to import: ")
    assert "no driver for this board" in result.stderr
    assert "Traceback" not in result.stderr


def test_check_reports_every_error(site: Path, tmp_path: Path) -> None:
    path = _config(
        tmp_path,
        """\
        nodes:
          - name: n1
            transport: fake
            fake: {host: h, port: abc}
            capcity: {cpu: "4"}
          - name: n2
            transport: serail
        """,
    )
    result = _vkpy(site, "check", "-c", str(path))
    assert result.returncode == 1
    assert result.stdout == ""
    errors = [line for line in result.stderr.splitlines() if line.startswith(str(path))]
    assert errors == [
        f"{path}: nodes[0].fake.port: expected an integer, got 'abc'",
        f"{path}: nodes[0].capcity: unknown key; did you mean 'capacity'?",
        f"{path}: nodes[1].transport: no transport named 'serail' is installed; installed: fake; "
        "did you mean 'serial'? (pip install vkpy-serial)",
    ]
    assert "Traceback" not in result.stderr


def test_check_fails_when_the_file_uses_a_broken_plugin(site: Path, tmp_path: Path) -> None:
    path = _config(tmp_path, "nodes: [{name: n1, transport: broken}]\n")
    result = _vkpy(site, "check", "-c", str(path))
    assert result.returncode == 1
    assert "warning:" not in result.stderr
    assert (
        f"{path}: nodes[0].transport: transport 'broken' is not available: plugin 'broken' failed to load"
        in (result.stderr)
    )
    assert "no driver for this board" in result.stderr


def test_check_yaml_error_and_missing_file(site: Path, tmp_path: Path) -> None:
    path = _config(tmp_path, "nodes:\n  - name: [a\n")
    result = _vkpy(site, "check", "-c", str(path))
    assert result.returncode == 1
    assert f"{path}:3:1: invalid YAML" in result.stderr
    result = _vkpy(site, "check", "-c", str(tmp_path / "nope.yaml"))
    assert result.returncode == 1
    assert f"{tmp_path / 'nope.yaml'}: no such file" in result.stderr


def test_config_path_defaults(site: Path, tmp_path: Path) -> None:
    _config(tmp_path, GOOD)
    result = _vkpy(site, "check", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("ok: 2 node(s)")

    other = _config(tmp_path, "nodes: [{name: solo, transport: fake, fake: {host: h}}]\n", name="other.yaml")
    result = _vkpy(site, "check", cwd=tmp_path, VKPY_CONFIG=str(other))
    assert result.returncode == 0, result.stderr
    assert result.stdout == "ok: 1 node(s): solo (fake)\n"


def test_run_with_a_bad_config_exits_2_without_traceback(site: Path, tmp_path: Path) -> None:
    path = _config(tmp_path, "nodes: [{name: n1, transport: fake, fake: {host: h, port: abc}}]\n")
    result = _vkpy(site, "run", "-c", str(path))
    assert result.returncode == 2
    assert f"{path}: nodes[0].fake.port: expected an integer, got 'abc'" in result.stderr
    assert "Traceback" not in result.stderr
    result = _vkpy(site, "run", "-c", str(tmp_path / "missing.yaml"))
    assert result.returncode == 2
    assert "no such file" in result.stderr
    assert "Traceback" not in result.stderr


def test_plugins_table(site: Path) -> None:
    result = _vkpy(site, "plugins")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["NAME", "DISTRIBUTION", "VERSION", "TRANSPORTS", "HOOKS"]
    assert lines[1].split() == ["blink", "vkpy-clitest", "1.2.3", "-", "get_pod_status"]
    assert lines[2].split() == [
        "fake",
        "vkpy-clitest",
        "1.2.3",
        "fake",
        "create_pod,",
        "delete_pod,",
        "get_pod_status,",
        "list_pods,",
        "node_health",
    ]
    assert lines[3:5] == ["", "broken plugins:"]
    assert lines[5].startswith(
        "  broken: plugin 'broken' (vkpy_clitest_broken) failed to import: ImportError"
    )
    # the loader's own log of the failure is not repeated on stderr
    assert result.stderr == ""


def test_plugins_json(site: Path) -> None:
    result = _vkpy(site, "plugins", "--json")
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    assert document["plugins"] == [
        {
            "name": "blink",
            "module": "vkpy_clitest_blink",
            "distribution": "vkpy-clitest",
            "version": "1.2.3",
            "transports": [],
            "hooks": ["get_pod_status"],
        },
        {
            "name": "fake",
            "module": "vkpy_clitest_fake",
            "distribution": "vkpy-clitest",
            "version": "1.2.3",
            "transports": ["fake"],
            "hooks": ["create_pod", "delete_pod", "get_pod_status", "list_pods", "node_health"],
        },
    ]
    assert [b["name"] for b in document["broken"]] == ["broken"]
    assert "no driver for this board" in document["broken"][0]["error"]


def test_plugins_when_none_is_installed(site: Path) -> None:
    result = _vkpy(site, "plugins", VKPY_LOAD_PLUGINS="")
    assert result.returncode == 0
    assert result.stdout == "no plugins installed\n"


def test_version_and_usage(site: Path) -> None:
    import vkpy

    result = _vkpy(site, "version")
    assert (result.returncode, result.stdout) == (0, f"vkpy {vkpy.__version__}\n")
    result = _vkpy(site, "--version")
    assert (result.returncode, result.stdout) == (0, f"vkpy {vkpy.__version__}\n")
    result = _vkpy(site)
    assert result.returncode == 2
    assert "check" in result.stderr
    result = _vkpy(site, "frobnicate")
    assert result.returncode == 2
    assert "invalid choice" in result.stderr


def test_every_command_has_help(site: Path) -> None:
    for command in ("run", "check", "plugins", "version"):
        result = _vkpy(site, command, "--help")
        assert result.returncode == 0, result.stderr
        assert result.stdout.startswith(f"usage: vkpy {command}")


@pytest.mark.cluster
@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGINT])
def test_run_serves_nodes_and_exits_0_on_signal(
    site: Path, tmp_path: Path, k8s_cluster: ControlPlane, stop_signal: signal.Signals
) -> None:
    node = f"cli-run-{stop_signal.name.lower()}"
    serving = k8s_cluster.serving_certificate("vkpy-cli-test")
    config = {
        # The CLI is under test here, not NodeRestriction: an admin identity keeps it out of the way.
        "kubeconfig": str(k8s_cluster.admin_kubeconfig),
        "log": {"level": "info", "format": "json"},
        "kubelet": {
            "address": "127.0.0.1",
            "port": free_port(),
            "tls_cert": str(serving.cert),
            "tls_key": str(serving.key),
            "client_ca": str(k8s_cluster.ca.files.cert),
        },
        "nodes": [
            {
                "name": node,
                "transport": "fake",
                "fake": {"host": "192.0.2.1"},
                "capacity": {"cpu": "3", "memory": "2Gi", "pods": "7"},
                "labels": {"lab": "cli"},
            }
        ],
    }
    path = tmp_path / "vkpy.yaml"
    path.write_text(yaml.safe_dump(config))
    log = (tmp_path / "vkpy.log").open("w")
    process = subprocess.Popen(
        [str(VKPY), "run", "-c", str(path)], stdout=log, stderr=subprocess.STDOUT, env=_env(site)
    )
    try:

        def registered() -> bool:
            if process.poll() is not None:
                output = (tmp_path / "vkpy.log").read_text()
                raise AssertionError(f"vkpy run exited {process.returncode}: {output}")
            got = k8s_cluster.kubectl("get", "node", node, "-o", "json", check=False)
            return got.returncode == 0 and json.loads(got.stdout)["metadata"]["labels"].get("lab") == "cli"

        wait_for(registered, timeout=60, what=f"node {node} registered by vkpy run")
        capacity = k8s_cluster.kubectl_json("get", "node", node)["status"]["capacity"]
        assert (capacity["cpu"], capacity["memory"], capacity["pods"]) == ("3", "2Gi", "7")
        process.send_signal(stop_signal)
        assert process.wait(timeout=30) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        log.close()
        k8s_cluster.kubectl("delete", "node", node, "--wait=false", check=False)
    output = (tmp_path / "vkpy.log").read_text()
    assert "Traceback" not in output
    events = [json.loads(line)["event"] for line in output.splitlines() if line.startswith("{")]
    assert "vkpy.stopped" in events
