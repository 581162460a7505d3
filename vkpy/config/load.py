"""Reading a configuration file: YAML parsing, structuring into the schema, and the checks that need
context (the installed plugins, the file system, the other nodes). Every issue is reported at once."""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs
import yaml

from vkpy.config.convert import (
    ConfigIssue,
    ConfigValidationError,
    config_keys,
    describe,
    did_you_mean,
    join_path,
    structure,
    unknown_key_issue,
)
from vkpy.config.schema import NodeConfig, VkpyConfig
from vkpy.errors import ConfigError

if TYPE_CHECKING:
    from vkpy.plugins.loader import PluginRegistry

KNOWN_TRANSPORT_PACKAGES = {"ssh": "vkpy-ssh", "serial": "vkpy-serial", "usb": "vkpy-usb"}
"""Transports published by the vkpy project, so a missing one can be named with its package."""

_RESERVED_LABELS = {
    "kubernetes.io/os": "set it with the node's 'os:' key",
    "kubernetes.io/arch": "set it with the node's 'arch:' key",
    "kubernetes.io/hostname": "vkpy sets it to the node's name",
}
# What a kubelet may set in the kubernetes.io and k8s.io namespaces (kubelet's well_known_labels.go);
# the NodeRestriction admission plugin refuses the others.
_KUBELET_LABELS = frozenset(
    {
        "kubernetes.io/hostname",
        "kubernetes.io/os",
        "kubernetes.io/arch",
        "beta.kubernetes.io/os",
        "beta.kubernetes.io/arch",
        "beta.kubernetes.io/instance-type",
        "node.kubernetes.io/instance-type",
        "topology.kubernetes.io/zone",
        "topology.kubernetes.io/region",
        "failure-domain.beta.kubernetes.io/zone",
        "failure-domain.beta.kubernetes.io/region",
    }
)
_KUBELET_LABEL_NAMESPACES = ("kubelet.kubernetes.io", "node.kubernetes.io")
_NODE_KEYS = tuple(key for key in config_keys(NodeConfig) if key != "transport_options")
_MISSING: Any = object()


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML keeps the last of two equal keys; a duplicated key in a config is always a mistake."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            try:
                duplicate = key in seen
            except TypeError:
                continue  # an unhashable key; the base class reports it
            if duplicate:
                raise yaml.constructor.ConstructorError(
                    "while reading a mapping",
                    node.start_mark,
                    f"found duplicate key {key!r}",
                    key_node.start_mark,
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def read_config_file(path: Path) -> Any:
    """The YAML document of ``path``; ConfigError naming the file (and line and column) if unreadable."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file (choose the file with -c or $VKPY_CONFIG)") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror or exc}") from None
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        problem = exc.problem or exc.context or "invalid YAML"
        raise ConfigError(f"{where}: invalid YAML: {problem}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: invalid YAML: {exc}") from None


def load_config(path: Path, registry: PluginRegistry | None = None) -> VkpyConfig:
    """Read and validate a configuration file.

    With ``registry`` (from :func:`vkpy.plugins.loader.load_plugins`), transports and device plugins are
    checked against what is installed and each node's transport options become an instance of the
    transport's ``options_class``; without it they stay raw mappings.
    """
    return build_config(read_config_file(path), path, registry)


def build_config(raw: Any, path: Path, registry: PluginRegistry | None = None) -> VkpyConfig:
    """Validate a parsed document that came from ``path`` (relative paths are resolved against its folder)."""
    source = str(path)
    if raw is None:
        raise ConfigValidationError(
            [ConfigIssue("", "the file is empty; it needs at least a 'nodes:' list")], source
        )
    if not isinstance(raw, Mapping):
        raise ConfigValidationError(
            [ConfigIssue("", f"expected a mapping at the top, got {describe(raw)}")], source
        )
    base_dir = path.absolute().parent
    issues: list[ConfigIssue] = []
    top = dict(raw)
    raw_nodes = top.pop("nodes", _MISSING)

    config: VkpyConfig | None = None
    try:
        config = structure(VkpyConfig, top, base_dir=base_dir, provided={"source": path, "nodes": ()})
    except ConfigValidationError as exc:
        issues.extend(exc.issues)
    if config is not None:
        _check_files(config, issues)
    nodes = _nodes(raw_nodes, base_dir, registry, issues)

    if config is not None:
        kubelet = config.kubelet
        if kubelet.advertise_address is None and kubelet.address not in ("0.0.0.0", "::"):  # noqa: S104
            kubelet = attrs.evolve(kubelet, advertise_address=kubelet.address)
        config = attrs.evolve(config, kubelet=kubelet, nodes=tuple(nodes))
    if issues or config is None:
        raise ConfigValidationError(issues, source)
    return config


def _nodes(
    raw: Any, base_dir: Path, registry: PluginRegistry | None, issues: list[ConfigIssue]
) -> list[NodeConfig]:
    if raw is _MISSING or raw is None:
        issues.append(
            ConfigIssue(
                "nodes", "missing required key", "list the nodes: 'nodes: [{name: ..., transport: ...}]'"
            )
        )
        return []
    if not isinstance(raw, list):
        issues.append(ConfigIssue("nodes", f"expected a list of nodes, got {describe(raw)}"))
        return []
    if not raw:
        issues.append(ConfigIssue("nodes", "at least one node is required"))
    nodes: list[NodeConfig] = []
    first_seen: dict[str, str] = {}
    for index, data in enumerate(raw):
        path = f"nodes[{index}]"
        name = data.get("name") if isinstance(data, Mapping) else None
        if isinstance(name, str):
            if name in first_seen:
                issues.append(
                    ConfigIssue(
                        f"{path}.name", f"duplicate node name {name!r} (also {first_seen[name]}.name)"
                    )
                )
            first_seen.setdefault(name, path)
        node_issues: list[ConfigIssue] = []
        node = _node(data, path, base_dir, registry, node_issues)
        issues.extend(_in_file_order(node_issues, path, data))
        if node is not None:
            nodes.append(node)
    return nodes


def _in_file_order(issues: list[ConfigIssue], path: str, data: Any) -> list[ConfigIssue]:
    """A node's issues sorted by where their key is in the node's mapping (stable within a key)."""
    if not isinstance(data, Mapping):
        return issues
    order = {key: index for index, key in enumerate(data)}

    def position(issue: ConfigIssue) -> int:
        rest = issue.path[len(path) :].lstrip(".")
        key = re.split(r"[.\[]", rest, maxsplit=1)[0]
        return order.get(key, len(order))

    return sorted(issues, key=position)


def _node(
    data: Any, path: str, base_dir: Path, registry: PluginRegistry | None, issues: list[ConfigIssue]
) -> NodeConfig | None:
    if not isinstance(data, Mapping):
        issues.append(ConfigIssue(path, f"expected a mapping describing a node, got {describe(data)}"))
        return None
    transport = data.get("transport")
    transport_name = transport if isinstance(transport, str) and transport else None
    fields = {key: value for key, value in data.items() if key in _NODE_KEYS}
    section: Any = _MISSING
    for key, value in data.items():
        if key in _NODE_KEYS:
            continue
        if transport_name is not None and key == transport_name:
            section = value
        elif isinstance(key, str) and _is_transport_name(key, registry):
            issues.append(
                ConfigIssue(
                    join_path(path, key),
                    f"this node's transport is {transport_name!r}"
                    if transport_name
                    else "this node has no transport",
                    f"a '{key}:' section configures nodes with 'transport: {key}'",
                )
            )
        elif isinstance(key, str):
            candidates = [*_NODE_KEYS, *([transport_name] if transport_name else [])]
            hint = None
            if transport_name and did_you_mean(key, candidates) is None:
                hint = (
                    f"valid keys here: {', '.join(sorted(_NODE_KEYS))}; "
                    f"the transport's options go under '{transport_name}:'"
                )
            issues.append(unknown_key_issue(path, key, candidates, hint))
        else:
            issues.append(ConfigIssue(path, f"keys must be strings, got {describe(key)}"))

    node: NodeConfig | None = None
    try:
        node = structure(NodeConfig, fields, path, base_dir=base_dir, provided={"transport_options": {}})
    except ConfigValidationError as exc:
        issues.extend(exc.issues)
    options = _transport_options(transport_name, section, path, base_dir, registry, issues)
    if registry is not None and isinstance(data.get("plugins"), list):
        _check_plugins(data["plugins"], f"{path}.plugins", registry, issues)
    if node is None:
        return None
    _check_node(node, path, issues)
    return attrs.evolve(node, transport_options=options)


def _is_transport_name(key: str, registry: PluginRegistry | None) -> bool:
    return key in KNOWN_TRANSPORT_PACKAGES or (registry is not None and key in registry.transports)


def _transport_options(
    transport: str | None,
    section: Any,
    path: str,
    base_dir: Path,
    registry: PluginRegistry | None,
    issues: list[ConfigIssue],
) -> Any:
    if transport is None:
        return {}
    at = join_path(path, transport)
    if registry is not None:
        if transport not in registry.transports:
            issues.append(_unknown_transport(transport, f"{path}.transport", registry))
            return {}
        options_class = registry.transports[transport].options_class
        if options_class is not None:
            if not attrs.has(options_class):
                issues.append(
                    ConfigIssue(
                        at,
                        f"the options_class of transport {transport!r} is not an attrs class",
                    )
                )
                return {}
            try:
                return structure(
                    options_class,
                    {} if section is _MISSING or section is None else section,
                    at,
                    base_dir=base_dir,
                )
            except ConfigValidationError as exc:
                issues.extend(exc.issues)
                return {}
    if section is _MISSING or section is None:
        return {}
    if not isinstance(section, Mapping):
        issues.append(
            ConfigIssue(at, f"expected a mapping of the transport's options, got {describe(section)}")
        )
        return {}
    return dict(section)


def _unknown_transport(name: str, path: str, registry: PluginRegistry) -> ConfigIssue:
    installed = sorted(registry.transports)
    if name in registry.errors:
        return ConfigIssue(
            path,
            f"transport {name!r} is not available: plugin {name!r} failed to load; "
            f"installed: {', '.join(installed) or 'none'}",
            registry.errors[name],
        )
    message = f"no transport named {name!r} is installed"
    if name in KNOWN_TRANSPORT_PACKAGES:
        message += f" (pip install {KNOWN_TRANSPORT_PACKAGES[name]})"
    message += f"; installed: {', '.join(installed) or 'none'}"
    guess = did_you_mean(name, sorted({*installed, *KNOWN_TRANSPORT_PACKAGES}))
    if guess is not None and guess != name:
        message += f"; did you mean {guess!r}?"
        if guess not in registry.transports:
            message += f" (pip install {KNOWN_TRANSPORT_PACKAGES[guess]})"
    hint = None
    if registry.errors:
        hint = "these plugins failed to load and may provide it: " + "; ".join(registry.errors.values())
    return ConfigIssue(path, message, hint)


def _check_plugins(names: list[Any], path: str, registry: PluginRegistry, issues: list[ConfigIssue]) -> None:
    seen: set[str] = set()
    for index, name in enumerate(names):
        at = f"{path}[{index}]"
        if not isinstance(name, str):
            continue  # structuring reports it
        if name in seen:
            issues.append(ConfigIssue(at, f"plugin {name!r} is listed twice"))
            continue
        seen.add(name)
        if name in registry.errors:
            issues.append(ConfigIssue(at, f"plugin {name!r} failed to load", registry.errors[name]))
        elif name not in registry.infos:
            device_plugins = registry.device_plugins()
            message = (
                f"no plugin named {name!r} is installed; "
                f"device plugins: {', '.join(device_plugins) or 'none'}"
            )
            guess = did_you_mean(name, device_plugins)
            issues.append(ConfigIssue(at, message + (f"; did you mean {guess!r}?" if guess else "")))
        elif registry.infos[name].transports:
            provided = ", ".join(registry.infos[name].transports)
            issues.append(
                ConfigIssue(
                    at,
                    f"{name!r} is a transport plugin (it provides {provided}), not a device plugin",
                    "choose a transport with the node's 'transport:' key",
                )
            )


def _check_node(node: NodeConfig, path: str, issues: list[ConfigIssue]) -> None:
    for key in node.labels:
        at = join_path(f"{path}.labels", key)
        if key in _RESERVED_LABELS:
            issues.append(ConfigIssue(at, "a label vkpy sets", _RESERVED_LABELS[key]))
        elif not _kubelet_may_set(key):
            issues.append(
                ConfigIssue(
                    at,
                    "labels under kubernetes.io and k8s.io are reserved; a kubelet may not set this one",
                    "use your own prefix (example.com/role) or node.kubernetes.io/...",
                )
            )
    if node.kubeconfig is not None and not node.kubeconfig.is_file():
        issues.append(ConfigIssue(f"{path}.kubeconfig", f"no such file: {node.kubeconfig}"))


def _kubelet_may_set(key: str) -> bool:
    prefix, slash, _ = key.rpartition("/")
    if not slash or key in _KUBELET_LABELS:
        return True
    reserved = any(prefix == ns or prefix.endswith("." + ns) for ns in ("kubernetes.io", "k8s.io"))
    allowed = any(prefix == ns or prefix.endswith("." + ns) for ns in _KUBELET_LABEL_NAMESPACES)
    return allowed or not reserved


def _check_files(config: VkpyConfig, issues: list[ConfigIssue]) -> None:
    files = {
        "kubeconfig": config.kubeconfig,
        "kubelet.tls_cert": config.kubelet.tls_cert,
        "kubelet.tls_key": config.kubelet.tls_key,
        "kubelet.client_ca": config.kubelet.client_ca,
        "certificates.bootstrap_kubeconfig": config.certificates.bootstrap_kubeconfig
        if config.certificates
        else None,
    }
    for key, file in files.items():
        if file is not None and not file.is_file():
            issues.append(ConfigIssue(key, f"no such file: {file}"))
    certificates = config.certificates
    if certificates is not None and certificates.dir.exists() and not certificates.dir.is_dir():
        issues.append(ConfigIssue("certificates.dir", f"not a folder: {certificates.dir}"))
