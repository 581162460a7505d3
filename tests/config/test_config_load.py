"""Loading configuration files: the happy path, every class of error with its exact path, and the
transport options validated against a real plugin registry."""

from __future__ import annotations

import textwrap
import types
from pathlib import Path
from typing import Any

import attrs
import pytest

import vkpy
from vkpy.config import (
    DEFAULT_TAINTS,
    Backoff,
    ConfigValidationError,
    Duration,
    KubeletConfig,
    LogConfig,
    NodeConfig,
    Taint,
    VkpyConfig,
    load_config,
)
from vkpy.errors import ConfigError
from vkpy.plugins.loader import PluginRegistry, load_plugins


@attrs.frozen(kw_only=True)
class FakeOptions:
    host: str
    port: int = 22
    identity_file: Path | None = None
    timeout: Duration = 5.0


class FakeTransport(vkpy.Transport):
    options_class = FakeOptions


class BareTransport(vkpy.Transport):
    """A transport without an options class: its section stays a raw mapping."""


def _transport_plugin() -> types.ModuleType:
    module = types.ModuleType("vkpy_test_fake_transport")

    @vkpy.hookimpl
    def register_transports(register: Any) -> None:
        register("fake", FakeTransport)
        register("bare", BareTransport)

    module.register_transports = register_transports  # type: ignore[attr-defined]
    return module


def _device_plugin() -> types.ModuleType:
    module = types.ModuleType("vkpy_test_blinker")

    @vkpy.hookimpl
    async def create_pod(node: Any, pod: Any) -> Any:
        return vkpy.DEFER

    module.create_pod = create_pod  # type: ignore[attr-defined]
    return module


def _broken_plugin() -> types.ModuleType:
    module = types.ModuleType("vkpy_test_broken")

    @vkpy.hookimpl
    def not_a_hook() -> None:
        """An unknown hook: the loader refuses the plugin."""

    module.not_a_hook = not_a_hook  # type: ignore[attr-defined]
    return module


@pytest.fixture
def registry(monkeypatch: pytest.MonkeyPatch) -> PluginRegistry:
    # Only the plugins built here: the tests must not depend on what else is installed.
    monkeypatch.setenv("VKPY_LOAD_PLUGINS", "")
    return load_plugins(
        extra=[("fake", _transport_plugin()), ("blinker", _device_plugin()), ("broken", _broken_plugin())]
    )


def _write(folder: Path, text: str, name: str = "vkpy.yaml") -> Path:
    path = folder / name
    path.write_text(textwrap.dedent(text))
    return path


def _issues(path: Path, registry: PluginRegistry | None = None) -> list[str]:
    """The error lines, without the file name, hints dropped."""
    with pytest.raises(ConfigValidationError) as caught:
        load_config(path, registry)
    lines = str(caught.value).splitlines()
    prefix = f"{path}: "
    assert all(line.startswith(prefix) for line in lines if not line.startswith("    hint: "))
    return [line.removeprefix(prefix) for line in lines if not line.startswith("    hint: ")]


def test_registry_fixture_is_what_the_tests_expect(registry: PluginRegistry) -> None:
    assert sorted(registry.transports) == ["bare", "fake"]
    assert registry.device_plugins() == ["blinker"]
    assert list(registry.errors) == ["broken"]


def test_full_file_loads(tmp_path: Path, registry: PluginRegistry) -> None:
    for name in ("kubeconfig", "node-kubeconfig", "tls.crt", "tls.key", "ca.crt"):
        (tmp_path / name).write_text("x")
    path = _write(
        tmp_path,
        """\
        kubeconfig: kubeconfig
        log: {level: debug, format: json}
        kubelet:
          address: 192.168.1.5
          port: 10251
          tls_cert: tls.crt
          tls_key: ./tls.key
          client_ca: ca.crt
          allow_anonymous: true
        nodes:
          - name: bench-pi-01
            transport: fake
            fake: {host: 192.168.1.20, identity_file: keys/id_ed25519, timeout: 1m}
            kubeconfig: node-kubeconfig
            capacity: {cpu: 4, memory: 4Gi, pods: "8"}
            allocatable: {cpu: 3500m}
            labels: {lab: bench-3, example.com/rack: "7"}
            taints: [{key: dedicated, value: bench, effect: NoExecute}]
            plugins: [blinker]
            os: linux
            arch: arm64
            status_interval: 500ms
            restart_backoff: {initial: 1s, max: 1m}
          - name: bench-pi-02
            transport: bare
            bare: {anything: [goes, here]}
            taints: []
        """,
    )
    config = load_config(path, registry)
    assert config == VkpyConfig(
        source=path,
        kubeconfig=tmp_path / "kubeconfig",
        log=LogConfig(level="debug", format="json"),
        kubelet=KubeletConfig(
            address="192.168.1.5",
            port=10251,
            advertise_address="192.168.1.5",
            tls_cert=tmp_path / "tls.crt",
            tls_key=tmp_path / "tls.key",
            client_ca=tmp_path / "ca.crt",
            allow_anonymous=True,
        ),
        nodes=(
            NodeConfig(
                name="bench-pi-01",
                transport="fake",
                transport_options=FakeOptions(
                    host="192.168.1.20", identity_file=tmp_path / "keys/id_ed25519", timeout=60.0
                ),
                kubeconfig=tmp_path / "node-kubeconfig",
                capacity={"cpu": "4", "memory": "4Gi", "pods": "8"},
                allocatable={"cpu": "3500m"},
                labels={"lab": "bench-3", "example.com/rack": "7"},
                taints=(Taint(key="dedicated", value="bench", effect="NoExecute"),),
                plugins=("blinker",),
                os="linux",
                arch="arm64",
                status_interval=0.5,
                restart_backoff=Backoff(initial=1.0, max=60.0),
            ),
            NodeConfig(
                name="bench-pi-02",
                transport="bare",
                transport_options={"anything": ["goes", "here"]},
                taints=(),
            ),
        ),
    )


def test_minimal_file_gets_the_defaults(tmp_path: Path, registry: PluginRegistry) -> None:
    path = _write(tmp_path, "nodes: [{name: n1, transport: fake, fake: {host: h}}]\n")
    config = load_config(path, registry)
    assert config.kubeconfig is None
    assert config.log == LogConfig(level="info", format="auto")
    assert config.kubelet == KubeletConfig(address="0.0.0.0", port=10250, advertise_address=None)
    (node,) = config.nodes
    assert node.transport_options == FakeOptions(host="h", port=22, identity_file=None, timeout=5.0)
    assert node.capacity is None
    assert node.allocatable is None
    assert node.labels == {}
    assert node.taints == DEFAULT_TAINTS
    assert node.taints[0] == Taint(key="virtual-kubelet.io/provider", value="vkpy", effect="NoSchedule")
    assert node.plugins == ()
    assert (node.os, node.arch) == ("linux", None)
    assert node.status_interval == 10.0
    assert node.restart_backoff == Backoff(initial=10.0, max=300.0)


def test_nulls_mean_the_defaults(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        """\
        kubeconfig: null
        log: null
        kubelet: {advertise_address: null, tls_cert: null, tls_key: null}
        nodes:
          - {name: n1, transport: x, taints: null, labels: null, allocatable: null, arch: null}
        """,
    )
    (node,) = load_config(path).nodes
    assert node.taints == DEFAULT_TAINTS
    assert node.labels == {}
    assert node.transport_options == {}


def test_without_registry_transport_options_stay_raw(tmp_path: Path) -> None:
    path = _write(tmp_path, "nodes: [{name: n1, transport: ssh, ssh: {host: h, port: abc}}]\n")
    (node,) = load_config(path).nodes
    assert node.transport_options == {"host": "h", "port": "abc"}


def test_relative_paths_resolve_against_the_file_folder(
    tmp_path: Path, registry: PluginRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "etc" / "vkpy"
    folder.mkdir(parents=True)
    (folder / "cluster.conf").write_text("x")
    _write(
        folder,
        "kubeconfig: cluster.conf\n"
        "nodes: [{name: n1, transport: fake, fake: {host: h, identity_file: ../id}}]\n",
    )
    monkeypatch.chdir(tmp_path)  # elsewhere than the file
    config = load_config(Path("etc/vkpy/vkpy.yaml"), registry)
    assert config.kubeconfig == tmp_path / "etc/vkpy/cluster.conf"
    assert config.nodes[0].transport_options.identity_file == tmp_path / "etc/vkpy/../id"
    assert config.source == Path("etc/vkpy/vkpy.yaml")


def test_home_is_expanded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / ".kube").mkdir()
    (tmp_path / ".kube" / "config").write_text("x")
    path = _write(tmp_path, "kubeconfig: ~/.kube/config\nnodes: [{name: n1, transport: x}]\n")
    assert load_config(path).kubeconfig == tmp_path / ".kube/config"


def test_advertise_address_defaults_to_a_specific_listen_address(tmp_path: Path) -> None:
    nodes = "nodes: [{name: n1, transport: x}]\n"
    cases = {"10.1.2.3": "10.1.2.3", "0.0.0.0": None, "::": None, "::1": "::1"}
    for address, advertised in cases.items():
        path = _write(tmp_path, f"kubelet: {{address: '{address}'}}\n{nodes}")
        assert load_config(path).kubelet.advertise_address == advertised
    path = _write(tmp_path, f"kubelet: {{address: 0.0.0.0, advertise_address: 10.0.0.9}}\n{nodes}")
    assert load_config(path).kubelet.advertise_address == "10.0.0.9"


def test_unknown_keys_suggest_the_closest(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        """\
        kubelett: {}
        log: {levle: info}
        nodes:
          - name: n1
            transport: ssh
            capcity: {cpu: "4"}
            zzz: 1
        """,
    )
    with pytest.raises(ConfigValidationError) as caught:
        load_config(path)
    assert [str(issue) for issue in caught.value.issues] == [
        "kubelett: unknown key; did you mean 'kubelet'?",
        "log.levle: unknown key; did you mean 'level'?",
        "nodes[0].capcity: unknown key; did you mean 'capacity'?",
        "nodes[0].zzz: unknown key\n    hint: valid keys here: allocatable, arch, capacity, events, "
        "kubeconfig, labels, name, os, plugins, restart_backoff, status_interval, taints, transport; "
        "the transport's options go under 'ssh:'",
    ]


def test_every_issue_is_reported_at_once_in_file_order(tmp_path: Path, registry: PluginRegistry) -> None:
    path = _write(
        tmp_path,
        """\
        log: {level: loud, format: jsn}
        kubelet: {address: everywhere, port: 99999, allow_anonymous: maybe}
        nodes:
          - name: Bench_1
            transport: fake
            fake: {host: h, port: abc, timeout: soon}
            capacity: {cpu: -1, memory: 4Gb, bad key: "1"}
            labels: {"kubernetes.io/os": linux, lab: "not ok"}
            taints: [{key: a, effect: NoSchedul}, {value: x, effect: NoExecute}]
            status_interval: 0
            restart_backoff: {initial: 10s, max: 5s}
          - name: n2
          - name: n3
            transport: fake
            fake: {host: [h]}
            os: 5
            plugins: [blinker, blinker, nope, fake]
          - just a string
          - name: n2
            transport: serail
            serial: {}
        """,
    )
    assert _issues(path, registry) == [
        "log.level: expected one of 'debug', 'info', 'warning', 'error', 'critical', got 'loud'",
        "log.format: expected one of 'auto', 'json', 'console', got 'jsn'; did you mean 'json'?",
        "kubelet.address: 'everywhere' is not an IP address",
        "kubelet.port: a port must be between 1 and 65535, got 99999",
        "kubelet.allow_anonymous: expected true or false, got 'maybe'",
        "nodes[0].name: 'Bench_1' is not a valid DNS-1123 subdomain",
        "nodes[0].fake.port: expected an integer, got 'abc'",
        "nodes[0].fake.timeout: expected a duration, got 'soon'",
        "nodes[0].capacity.cpu: must not be negative",
        "nodes[0].capacity.memory: not a valid quantity: '4Gb'",
        "nodes[0].capacity[\"bad key\"]: 'bad key' is not a valid key: "
        "the name must be 1-63 letters, digits, '-', '_' or '.', starting and ending with a letter or digit",
        "nodes[0].labels.lab: 'not ok' is not a valid label value",
        "nodes[0].taints[0].effect: expected one of 'NoSchedule', 'PreferNoSchedule', 'NoExecute', "
        "got 'NoSchedul'; did you mean 'NoSchedule'?",
        "nodes[0].taints[1].key: missing required key",
        "nodes[0].status_interval: must be longer than zero, got 0",
        "nodes[0].restart_backoff.max: must be at least initial (10s), got 5s",
        "nodes[1].transport: missing required key",
        "nodes[2].fake.host: expected a string, got a list",
        "nodes[2].os: expected a label value (a string), got 5",
        "nodes[2].plugins[1]: plugin 'blinker' is listed twice",
        "nodes[2].plugins[2]: no plugin named 'nope' is installed; device plugins: blinker",
        "nodes[2].plugins[3]: 'fake' is a transport plugin (it provides fake, bare), not a device plugin",
        "nodes[3]: expected a mapping describing a node, got 'just a string'",
        "nodes[4].name: duplicate node name 'n2' (also nodes[1].name)",
        "nodes[4].transport: no transport named 'serail' is installed; installed: bare, fake; "
        "did you mean 'serial'? (pip install vkpy-serial)",
        "nodes[4].serial: this node's transport is 'serail'",
    ]


def test_cross_field_checks_once_fields_are_valid(tmp_path: Path) -> None:
    (tmp_path / "tls.crt").write_text("x")
    path = _write(
        tmp_path,
        """\
        kubelet: {tls_cert: tls.crt}
        nodes:
          - name: n1
            transport: x
            labels: {kubernetes.io/os: linux, kubernetes.io/arch: arm64}
            taints: [{key: a, effect: NoSchedule}, {key: a, value: b, effect: NoSchedule}]
          - name: n2
            transport: x
            labels:
              kubernetes.io/arch: arm64
              kubernetes.io/role: agent
              foo.k8s.io/x: y
              node.kubernetes.io/pool: a
              topology.kubernetes.io/zone: z
              example.com/role: edge
            kubeconfig: missing.conf
        """,
    )
    reserved = "labels under kubernetes.io and k8s.io are reserved; a kubelet may not set this one"
    assert _issues(path) == [
        "kubelet.tls_key: tls_cert and tls_key go together; set both or neither",
        "nodes[0].taints: taint a:NoSchedule is listed twice",
        'nodes[1].labels["kubernetes.io/arch"]: a label vkpy sets',
        f'nodes[1].labels["kubernetes.io/role"]: {reserved}',
        f'nodes[1].labels["foo.k8s.io/x"]: {reserved}',
        f"nodes[1].kubeconfig: no such file: {tmp_path / 'missing.conf'}",
    ]


def test_missing_files_are_named(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        """\
        kubeconfig: nope/kubeconfig
        kubelet: {tls_cert: a.crt, tls_key: a.key, client_ca: /nonexistent/ca.crt}
        nodes: [{name: n1, transport: x}]
        """,
    )
    assert _issues(path) == [
        f"kubeconfig: no such file: {tmp_path / 'nope/kubeconfig'}",
        f"kubelet.tls_cert: no such file: {tmp_path / 'a.crt'}",
        f"kubelet.tls_key: no such file: {tmp_path / 'a.key'}",
        "kubelet.client_ca: no such file: /nonexistent/ca.crt",
    ]


def test_transport_errors(tmp_path: Path, registry: PluginRegistry) -> None:
    path = _write(
        tmp_path,
        """\
        nodes:
          - {name: n1, transport: ssh, ssh: {host: h}}
          - {name: n2, transport: broken}
          - {name: n3, transport: fake}
          - {name: n4, transport: fake, fake: "host=h"}
          - {name: n5, transport: bare, bare: [1]}
          - {name: n6, transport: fake, fake: {host: h}, bare: {}, usb: {}}
        """,
    )
    with pytest.raises(ConfigValidationError) as caught:
        load_config(path, registry)
    issues = [(i.path, i.message, i.hint) for i in caught.value.issues]
    broken_error = registry.errors["broken"]
    assert issues == [
        (
            "nodes[0].transport",
            "no transport named 'ssh' is installed (pip install vkpy-ssh); installed: bare, fake",
            f"these plugins failed to load and may provide it: {broken_error}",
        ),
        (
            "nodes[1].transport",
            "transport 'broken' is not available: plugin 'broken' failed to load; installed: bare, fake",
            broken_error,
        ),
        ("nodes[2].fake.host", "missing required key", None),
        ("nodes[3].fake", "expected a mapping, got 'host=h'", None),
        ("nodes[4].bare", "expected a mapping of the transport's options, got a list", None),
        (
            "nodes[5].bare",
            "this node's transport is 'fake'",
            "a 'bare:' section configures nodes with 'transport: bare'",
        ),
        (
            "nodes[5].usb",
            "this node's transport is 'fake'",
            "a 'usb:' section configures nodes with 'transport: usb'",
        ),
    ]


def test_plugin_that_failed_to_load(tmp_path: Path, registry: PluginRegistry) -> None:
    path = _write(
        tmp_path, "nodes: [{name: n1, transport: fake, fake: {host: h}, plugins: [broken, blinkr]}]\n"
    )
    with pytest.raises(ConfigValidationError) as caught:
        load_config(path, registry)
    assert [(i.path, i.message, i.hint) for i in caught.value.issues] == [
        ("nodes[0].plugins[0]", "plugin 'broken' failed to load", registry.errors["broken"]),
        (
            "nodes[0].plugins[1]",
            "no plugin named 'blinkr' is installed; device plugins: blinker; did you mean 'blinker'?",
            None,
        ),
    ]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "the file is empty; it needs at least a 'nodes:' list"),
        ("- a\n- b\n", "expected a mapping at the top, got a list"),
        ("log: {}\n", "nodes: missing required key"),
        ("nodes: []\n", "nodes: at least one node is required"),
        ("nodes: {name: n1}\n", "nodes: expected a list of nodes, got a mapping"),
    ],
)
def test_file_shape_errors(tmp_path: Path, text: str, message: str) -> None:
    path = _write(tmp_path, text)
    assert _issues(path) == [message]


def test_yaml_syntax_errors_name_file_line_and_column(tmp_path: Path) -> None:
    path = _write(tmp_path, "log:\n  level: info\n  format: [json\nnodes: []\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert str(caught.value).startswith(f"{path}:4:")
    assert "invalid YAML" in str(caught.value)

    path = _write(tmp_path, "nodes:\n  - name: a\n    name: b\n")
    with pytest.raises(ConfigError, match=r"vkpy\.yaml:3:5: invalid YAML: found duplicate key 'name'"):
        load_config(path)

    path = _write(tmp_path, "a: !!python/object:os.system [echo]\n")
    with pytest.raises(ConfigError, match=r"vkpy\.yaml:1:4: invalid YAML"):
        load_config(path)


def test_unreadable_files(tmp_path: Path) -> None:
    with pytest.raises(
        ConfigError, match=r"missing\.yaml: no such file \(choose the file with -c or \$VKPY_CONFIG\)"
    ):
        load_config(tmp_path / "missing.yaml")
    (tmp_path / "bin.yaml").write_bytes(b"\xff\xfe\x00")
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_config(tmp_path / "bin.yaml")
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path)


def test_error_text_puts_the_file_first_and_hints_below(tmp_path: Path) -> None:
    path = _write(tmp_path, "nodes: [{name: n1, transport: x, status_interval: 10x}]\n")
    with pytest.raises(ConfigValidationError) as caught:
        load_config(path)
    assert str(caught.value) == (
        f"{path}: nodes[0].status_interval: expected a duration, got '10x'\n"
        "    hint: a number of seconds, or a string such as 500ms, 10s, 5m, 1h, 1m30s"
    )
    assert caught.value.source == str(path)
    assert isinstance(caught.value, ConfigError)
