"""From the API server's pod object to the :class:`vkpy.Pod` that plugins see."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from typing import Any

from vkpy.types import Container, Pod, Volume, VolumeFile, VolumeMount

ResolvedEnv = Mapping[str, tuple[Mapping[str, str], tuple[str, ...], tuple[str, ...]]]
ResolvedVolumes = Mapping[str, tuple[str, Sequence[tuple[str, bytes, int]], bool]]


def _container(raw: Mapping[str, Any], resolved: ResolvedEnv) -> Container:
    name = str(raw.get("name", ""))
    if name in resolved:
        env, command, args = resolved[name]
    else:
        env, command, args = {}, tuple(raw.get("command") or ()), tuple(raw.get("args") or ())
    resources = raw.get("resources") or {}
    return Container(
        name=name,
        image=str(raw.get("image", "")),
        command=tuple(str(c) for c in command),
        args=tuple(str(a) for a in args),
        env=tuple(env.items()),
        working_dir=raw.get("workingDir") or None,
        volume_mounts=tuple(
            VolumeMount(
                name=str(m.get("name", "")),
                mount_path=str(m.get("mountPath", "")),
                read_only=bool(m.get("readOnly", False)),
                sub_path=str(m.get("subPath", "")),
            )
            for m in raw.get("volumeMounts") or []
        ),
        resources={
            k: {rk: str(rv) for rk, rv in (v or {}).items()}
            for k, v in resources.items()
            if k in {"limits", "requests"}
        },
    )


def _volume_kind(raw: Mapping[str, Any]) -> str:
    return next((key for key in raw if key != "name"), "unknown")


def to_pod(
    manifest: Mapping[str, Any], env: ResolvedEnv | None = None, volumes: ResolvedVolumes | None = None
) -> Pod:
    """Build the plugin's view; without resolved env/volumes, containers carry their raw command."""
    meta = manifest.get("metadata", {})
    spec = manifest.get("spec", {})
    resolved = env or {}
    files = volumes or {}
    pod_volumes = []
    for raw in spec.get("volumes") or []:
        name = str(raw.get("name", ""))
        kind, contents, secret = files.get(name, (_volume_kind(raw), (), False))
        pod_volumes.append(
            Volume(
                name=name,
                kind=kind,
                files=tuple(VolumeFile(path=p, content=c, mode=m) for p, c, m in contents),
                secret=secret,
            )
        )
    return Pod(
        uid=str(meta.get("uid", "")),
        namespace=str(meta.get("namespace", "")),
        name=str(meta.get("name", "")),
        node_name=str(spec.get("nodeName", "")),
        containers=tuple(_container(c, resolved) for c in spec.get("containers") or []),
        init_containers=tuple(_container(c, resolved) for c in spec.get("initContainers") or []),
        restart_policy=str(spec.get("restartPolicy", "Always")),
        volumes=tuple(pod_volumes),
        labels=dict(meta.get("labels") or {}),
        annotations=dict(meta.get("annotations") or {}),
        termination_grace_period_seconds=int(spec.get("terminationGracePeriodSeconds", 30)),
        manifest=manifest,
    )


def mutable_spec_digest(manifest: Mapping[str, Any]) -> str:
    """A digest of the spec fields Kubernetes lets a user change on a running pod; a change in it
    is what ``update_pod`` is called for (status-only changes leave it as it is)."""
    spec = manifest.get("spec", {})
    mutable = {
        "images": [(c.get("name"), c.get("image")) for c in spec.get("containers") or []],
        "initImages": [(c.get("name"), c.get("image")) for c in spec.get("initContainers") or []],
        "resources": [(c.get("name"), c.get("resources")) for c in spec.get("containers") or []],
        "activeDeadlineSeconds": spec.get("activeDeadlineSeconds"),
        "tolerations": spec.get("tolerations"),
        "labels": manifest.get("metadata", {}).get("labels"),
        "annotations": manifest.get("metadata", {}).get("annotations"),
    }
    return hashlib.sha256(json.dumps(mutable, sort_keys=True, default=str).encode()).hexdigest()
