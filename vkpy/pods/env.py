"""Container environment resolved with the kubelet's semantics, before any plugin sees the pod.

Order and precedence follow the kubelet: ``envFrom`` sources first (later sources win), then ``env``
entries in order, each able to refer to the ones before it with ``$(VAR)``; ``command`` and ``args``
are expanded with the result. Values never reach a log: only names of sources and keys do.
"""

from __future__ import annotations

import base64
import decimal
import math
import re
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

import attrs

Fetch = Callable[[str, str], Awaitable[Mapping[str, Any] | None]]
"""(namespace, name) → the ConfigMap/Secret object, or None when it does not exist."""

_ENV_NAME = re.compile(r"^[-._a-zA-Z][-._a-zA-Z0-9]*$")
_QUANTITY = re.compile(r"^([+-]?[0-9.]+(?:[eE][+-]?[0-9]+)?)(Ki|Mi|Gi|Ti|Pi|Ei|m|k|M|G|T|P|E)?$")
_SUFFIX = {
    None: decimal.Decimal(1),
    "m": decimal.Decimal("0.001"),
    "k": decimal.Decimal(10) ** 3,
    "M": decimal.Decimal(10) ** 6,
    "G": decimal.Decimal(10) ** 9,
    "T": decimal.Decimal(10) ** 12,
    "P": decimal.Decimal(10) ** 15,
    "E": decimal.Decimal(10) ** 18,
    "Ki": decimal.Decimal(2) ** 10,
    "Mi": decimal.Decimal(2) ** 20,
    "Gi": decimal.Decimal(2) ** 30,
    "Ti": decimal.Decimal(2) ** 40,
    "Pi": decimal.Decimal(2) ** 50,
    "Ei": decimal.Decimal(2) ** 60,
}


class EnvMissing(Exception):
    """A mandatory ConfigMap, Secret or key is missing: the container cannot start until it appears."""


@attrs.frozen
class EnvWarning:
    reason: str
    message: str


def parse_quantity(value: str | int | float) -> decimal.Decimal:
    match = _QUANTITY.match(str(value).strip())
    if not match:
        raise ValueError(f"invalid quantity {value!r}")
    return decimal.Decimal(match.group(1)) * _SUFFIX[match.group(2)]


def expand(text: str, env: Mapping[str, str]) -> str:
    """Kubernetes' ``$(VAR)`` expansion: known names are replaced, unknown ones kept as written,
    ``$$`` is a literal ``$``."""
    out: list[str] = []
    i = 0
    while i < len(text):
        char = text[i]
        if char != "$" or i + 1 >= len(text):
            out.append(char)
            i += 1
            continue
        nxt = text[i + 1]
        if nxt == "$":
            out.append("$")
            i += 2
        elif nxt == "(":
            end = text.find(")", i + 2)
            if end == -1:
                out.append(text[i:])
                break
            name = text[i + 2 : end]
            out.append(env[name] if name in env else text[i : end + 1])
            i = end + 1
        else:
            out.append(char)
            i += 1
    return "".join(out)


def _decode_secret(obj: Mapping[str, Any]) -> dict[str, str]:
    data = {
        k: base64.b64decode(v).decode("utf-8", errors="replace") for k, v in (obj.get("data") or {}).items()
    }
    data.update({k: str(v) for k, v in (obj.get("stringData") or {}).items()})
    return data


def _configmap_data(obj: Mapping[str, Any]) -> dict[str, str]:
    data = {k: str(v) for k, v in (obj.get("data") or {}).items()}
    for key, value in (obj.get("binaryData") or {}).items():
        data[key] = base64.b64decode(value).decode("utf-8", errors="replace")
    return data


def field_value(pod: Mapping[str, Any], field_path: str) -> str:
    """The kubelet's downward API for env: metadata, spec.nodeName/serviceAccountName, status IPs."""
    meta = pod.get("metadata", {})
    spec = pod.get("spec", {})
    status = pod.get("status", {})
    simple = {
        "metadata.name": meta.get("name", ""),
        "metadata.namespace": meta.get("namespace", ""),
        "metadata.uid": meta.get("uid", ""),
        "spec.nodeName": spec.get("nodeName", ""),
        "spec.serviceAccountName": spec.get("serviceAccountName", ""),
        "status.hostIP": status.get("hostIP", ""),
        "status.podIP": status.get("podIP", ""),
        "status.hostIPs": ",".join(ip.get("ip", "") for ip in status.get("hostIPs") or []),
        "status.podIPs": ",".join(ip.get("ip", "") for ip in status.get("podIPs") or []),
    }
    if field_path in simple:
        return str(simple[field_path] or "")
    match = re.fullmatch(r"metadata\.(labels|annotations)\['([^']*)'\]", field_path)
    if match:
        return str((meta.get(match.group(1)) or {}).get(match.group(2), ""))
    raise ValueError(f"unsupported fieldRef fieldPath {field_path!r}")


def resource_value(
    pod: Mapping[str, Any],
    container_name: str,
    resource: str,
    divisor: str | None,
    node_allocatable: Mapping[str, str],
) -> str:
    """``resourceFieldRef``: the container's limit or request in units of ``divisor``, rounded up;
    a missing limit reads the node's allocatable, as the kubelet does."""
    container: Mapping[str, Any] = next(
        (c for c in pod.get("spec", {}).get("containers", []) if c.get("name") == container_name), {}
    )
    section, _, name = resource.partition(".")
    if section not in {"limits", "requests"} or not name:
        raise ValueError(f"unsupported resourceFieldRef resource {resource!r}")
    raw = (container.get("resources", {}).get(section) or {}).get(name)
    if raw is None and section == "limits":
        raw = node_allocatable.get(name)
    if raw is None:
        raw = "0"
    value = parse_quantity(raw) / parse_quantity(divisor or "1")
    return str(math.ceil(value))


@attrs.define
class EnvResolver:
    """Resolves every container's env for one pod; fetched sources are cached for that pod only."""

    pod: Mapping[str, Any]
    get_configmap: Fetch
    get_secret: Fetch
    node_allocatable: Mapping[str, str] = attrs.field(factory=dict)
    warnings: list[EnvWarning] = attrs.field(factory=list)
    _cache: dict[tuple[str, str], dict[str, str] | None] = attrs.field(factory=dict)

    async def _source(self, kind: str, name: str) -> dict[str, str] | None:
        key = (kind, name)
        if key not in self._cache:
            namespace = self.pod.get("metadata", {}).get("namespace", "default")
            if kind == "secret":
                obj = await self.get_secret(namespace, name)
                self._cache[key] = _decode_secret(obj) if obj is not None else None
            else:
                obj = await self.get_configmap(namespace, name)
                self._cache[key] = _configmap_data(obj) if obj is not None else None
        return self._cache[key]

    async def _key(self, kind: str, ref: Mapping[str, Any], env_name: str, container: str) -> str | None:
        label = "Secret" if kind == "secret" else "ConfigMap"
        name, key, optional = ref.get("name", ""), ref.get("key", ""), bool(ref.get("optional", False))
        data = await self._source(kind, name)
        if data is None or key not in data:
            what = f"{label} {name!r}" if data is None else f"key {key!r} in {label} {name!r}"
            if optional:
                self.warnings.append(
                    EnvWarning(
                        "OptionalEnvSourceMissing",
                        f"container {container}: env {env_name}: {what} not found (optional: skipped)",
                    )
                )
                return None
            raise EnvMissing(f"container {container}: env {env_name}: {what} not found")
        return data[key]

    async def resolve(
        self, container: Mapping[str, Any]
    ) -> tuple[dict[str, str], tuple[str, ...], tuple[str, ...]]:
        """(env, command, args) of one container, resolved and expanded."""
        cname = str(container.get("name", ""))
        env: dict[str, str] = {}
        for source in container.get("envFrom") or []:
            prefix = source.get("prefix", "")
            kind, ref = (
                ("secret", source["secretRef"])
                if "secretRef" in source
                else ("configmap", source.get("configMapRef") or {})
            )
            label = "Secret" if kind == "secret" else "ConfigMap"
            data = await self._source(kind, ref.get("name", ""))
            if data is None:
                if ref.get("optional"):
                    self.warnings.append(
                        EnvWarning(
                            "OptionalEnvSourceMissing",
                            f"container {cname}: envFrom {label} {ref.get('name')!r} not found "
                            "(optional: skipped)",
                        )
                    )
                    continue
                raise EnvMissing(f"container {cname}: envFrom {label} {ref.get('name')!r} not found")
            invalid = []
            for key, source_value in data.items():
                if _ENV_NAME.match(prefix + key):
                    env[prefix + key] = source_value
                else:
                    invalid.append(key)
            if invalid:
                self.warnings.append(
                    EnvWarning(
                        "InvalidEnvironmentVariableNames",
                        f"keys {sorted(invalid)} from envFrom {label} {ref.get('name')!r} "
                        "were skipped: not valid environment variable names",
                    )
                )
        for item in container.get("env") or []:
            name = str(item.get("name", ""))
            if "valueFrom" not in item:
                env[name] = expand(str(item.get("value", "")), env)
                continue
            source = item["valueFrom"] or {}
            value: str | None
            if "fieldRef" in source:
                value = field_value(self.pod, source["fieldRef"].get("fieldPath", ""))
            elif "resourceFieldRef" in source:
                ref = source["resourceFieldRef"]
                value = resource_value(
                    self.pod,
                    ref.get("containerName") or cname,
                    ref.get("resource", ""),
                    ref.get("divisor"),
                    self.node_allocatable,
                )
            elif "configMapKeyRef" in source:
                value = await self._key("configmap", source["configMapKeyRef"], name, cname)
            elif "secretKeyRef" in source:
                value = await self._key("secret", source["secretKeyRef"], name, cname)
            else:
                raise ValueError(f"container {cname}: env {name}: unsupported valueFrom {sorted(source)}")
            if value is not None:
                env[name] = value
        command = tuple(expand(str(part), env) for part in container.get("command") or [])
        args = tuple(expand(str(part), env) for part in container.get("args") or [])
        return env, command, args


async def resolve_volume_sources(
    pod: Mapping[str, Any], get_configmap: Fetch, get_secret: Fetch
) -> dict[str, tuple[str, Sequence[tuple[str, bytes, int]], bool]]:
    """ConfigMap and Secret volumes: {volume name: (kind, [(path, content, mode)], is_secret)}."""
    namespace = pod.get("metadata", {}).get("namespace", "default")
    out: dict[str, tuple[str, Sequence[tuple[str, bytes, int]], bool]] = {}
    for volume in pod.get("spec", {}).get("volumes") or []:
        for kind, fetch, secret in (("configMap", get_configmap, False), ("secret", get_secret, True)):
            source = volume.get(kind)
            if source is None:
                continue
            name = source.get("secretName") if secret else source.get("name")
            obj = await fetch(namespace, str(name))
            default_mode = int(source.get("defaultMode", 0o600 if secret else 0o644))
            if obj is None:
                if source.get("optional"):
                    out[volume["name"]] = (kind, [], secret)
                    continue
                raise EnvMissing(
                    f"volume {volume['name']}: {'Secret' if secret else 'ConfigMap'} {name!r} not found"
                )
            raw: dict[str, bytes] = {}
            for key, value in (obj.get("data") or {}).items():
                raw[key] = base64.b64decode(value) if secret else str(value).encode()
            for key, value in (obj.get("binaryData") or {}).items():
                raw[key] = base64.b64decode(value)
            items = source.get("items")
            files: list[tuple[str, bytes, int]] = []
            if items:
                for item in items:
                    if item.get("key") not in raw:
                        if source.get("optional"):
                            continue
                        raise EnvMissing(f"volume {volume['name']}: key {item.get('key')!r} not found")
                    files.append(
                        (item.get("path", item["key"]), raw[item["key"]], int(item.get("mode", default_mode)))
                    )
            else:
                files = [(key, value, default_mode) for key, value in sorted(raw.items())]
            out[volume["name"]] = (kind, files, secret)
    return out
