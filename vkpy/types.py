"""The data a plugin sees and returns: pods and containers as the device needs them, container
states, log lines. Frozen attrs classes, built and validated by the core before any hook is called."""

from __future__ import annotations

import datetime
from collections.abc import Mapping
from typing import Any, Final, Protocol

import attrs


@attrs.frozen
class VolumeFile:
    """One file of a ConfigMap or Secret volume, already decoded."""

    path: str
    content: bytes = attrs.field(repr=False)
    mode: int = 0o644


@attrs.frozen
class Volume:
    """A pod volume. ``kind`` is the Kubernetes volume type (``configMap``, ``secret``, ``emptyDir``,
    ...). ``files`` holds the contents of ConfigMap and Secret volumes; other kinds carry none."""

    name: str
    kind: str
    files: tuple[VolumeFile, ...] = ()
    secret: bool = False


@attrs.frozen
class VolumeMount:
    name: str
    mount_path: str
    read_only: bool = False
    sub_path: str = ""


@attrs.frozen
class Container:
    """A container with its environment resolved with kubelet semantics (``$(VAR)`` expanded,
    ``envFrom``, ConfigMap/Secret keys and field references filled in)."""

    name: str
    image: str = ""
    command: tuple[str, ...] = ()
    args: tuple[str, ...] = ()
    env: tuple[tuple[str, str], ...] = attrs.field(default=(), repr=False)
    working_dir: str | None = None
    volume_mounts: tuple[VolumeMount, ...] = ()
    resources: Mapping[str, Mapping[str, str]] = attrs.field(factory=dict)

    @property
    def argv(self) -> tuple[str, ...]:
        """``command`` followed by ``args``: what runs on the device."""
        return self.command + self.args

    @property
    def env_dict(self) -> dict[str, str]:
        return dict(self.env)


@attrs.frozen
class Pod:
    """A pod bound to one of this process's nodes, as plugins see it."""

    uid: str
    namespace: str
    name: str
    node_name: str
    containers: tuple[Container, ...]
    init_containers: tuple[Container, ...] = ()
    restart_policy: str = "Always"
    volumes: tuple[Volume, ...] = ()
    labels: Mapping[str, str] = attrs.field(factory=dict)
    annotations: Mapping[str, str] = attrs.field(factory=dict)
    termination_grace_period_seconds: int = 30
    manifest: Mapping[str, Any] = attrs.field(factory=dict, repr=False, eq=False)
    """The pod object as the API server returned it, for anything not modelled above."""

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    def container(self, name: str) -> Container | None:
        for container in (*self.init_containers, *self.containers):
            if container.name == name:
                return container
        return None


@attrs.frozen
class Waiting:
    """The container has not started (yet)."""

    reason: str = "ContainerCreating"
    message: str = ""


@attrs.frozen
class Running:
    started_at: datetime.datetime | None = None


@attrs.frozen
class Terminated:
    exit_code: int
    reason: str = ""
    message: str = ""
    started_at: datetime.datetime | None = None
    finished_at: datetime.datetime | None = None

    @property
    def succeeded(self) -> bool:
        return self.exit_code == 0


ContainerState = Waiting | Running | Terminated


@attrs.frozen
class PodStatusReport:
    """What the device says about one pod: the state of each container it knows, by name.

    A container missing from the mapping is reported as waiting. Return ``None`` instead of a report
    from ``get_pod_status`` when the device holds no such pod; raise :class:`DeviceUnreachable` when
    you cannot tell."""

    containers: Mapping[str, ContainerState] = attrs.field(factory=dict)
    init_containers: Mapping[str, ContainerState] = attrs.field(factory=dict)
    pod_ip: str | None = None
    message: str = ""


@attrs.frozen
class LogOptions:
    """The kubelet log query, validated. Plugins must honour ``follow``, ``previous``,
    ``tail_lines`` and ``since``; the core applies ``timestamps`` and ``limit_bytes``."""

    follow: bool = False
    tail_lines: int | None = None
    since: datetime.datetime | None = None
    timestamps: bool = False
    limit_bytes: int | None = None
    previous: bool = False


@attrs.frozen
class LogLine:
    """One line of container output (``data`` keeps its trailing newline) and when it was written."""

    time: datetime.datetime
    data: bytes
    stream: str = "stdout"


@attrs.frozen
class DeviceHealth:
    """The transport's view of its link: ``reachable`` false turns the node NotReady with this reason."""

    reachable: bool
    reason: str = ""
    message: str = ""


class _Defer:
    _instance: _Defer | None = None

    def __new__(cls) -> _Defer:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "vkpy.DEFER"

    def __bool__(self) -> bool:
        return False


DEFER: Final = _Defer()
"""Returned by a pod hook implementation to hand the call to the next plugin (the transport)."""


class NodeHandle(Protocol):
    """What a plugin gets as ``node`` in every hook: the virtual node the call is for."""

    @property
    def name(self) -> str:
        """The Kubernetes Node name."""

    @property
    def transport(self) -> Any:
        """The node's transport instance (a device plugin calls its lower-level API)."""

    @property
    def log(self) -> Any:
        """A structlog logger bound to ``node=<name>``."""

    def report_status(self, pod_uid: str) -> None:
        """Tell the core that a pod's state changed on the device, so it asks now, not at the next poll."""

    def set_health(self, health: DeviceHealth) -> None:
        """Push the link's health: unreachable makes the node NotReady with the given reason."""
