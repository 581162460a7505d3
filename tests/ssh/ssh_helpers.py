"""Helpers for the ssh transport tests: a recording NodeHandle, options, pods, waiting."""

from __future__ import annotations

import asyncio
import itertools
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import attrs
import structlog
from vkpy_ssh import SshOptions, SshTransport

from vkpy import Container, DeviceHealth, LogLine, LogOptions, Pod, PodStatusReport, Terminated, Volume
from vkpy.config import structure
from vkpy.testing.sshd import SshServer, TcpRelay

T = TypeVar("T")


class RecordingNode:
    """The smallest NodeHandle: records pushed status reports and health."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.transport: Any = None
        self.log = structlog.get_logger("tests.ssh").bind(node=name)
        self.reports: list[str] = []
        self.healths: list[DeviceHealth] = []

    def report_status(self, pod_uid: str) -> None:
        self.reports.append(pod_uid)

    def set_health(self, health: DeviceHealth) -> None:
        self.healths.append(health)

    @property
    def health(self) -> DeviceHealth | None:
        return self.healths[-1] if self.healths else None


@attrs.define
class Device:
    transport: SshTransport
    node: RecordingNode
    sshd: SshServer
    relay: TcpRelay
    options: SshOptions

    async def status(self, pod: Pod) -> PodStatusReport | None:
        return await self.transport.get_pod_status(self.node, pod)

    async def logs(self, pod: Pod, container: str = "main", **options: Any) -> list[LogLine]:
        result = self.transport.get_container_logs(self.node, pod, container, LogOptions(**options))
        return [line async for line in result]

    async def text(self, pod: Pod, container: str = "main", **options: Any) -> str:
        return b"".join(line.data for line in await self.logs(pod, container, **options)).decode()

    def pod_dir(self, pod: Pod) -> Path:
        # sshd runs on this machine: the device's files are ours to look at.
        return Path(self.transport.pods_root) / pod.uid

    def run(self, command: str) -> str:
        """A command on the device through OpenSSH's own client."""
        return self.sshd.run(command).stdout


def ssh_options(sshd: SshServer, tmp_path: Path, port: int | None = None, **overrides: Any) -> SshOptions:
    known_hosts = tmp_path / "known_hosts"
    if not known_hosts.exists():
        sshd.write_known_hosts(known_hosts, port=port or sshd.port)
    data: dict[str, Any] = {
        "host": sshd.host,
        "port": port or sshd.port,
        "user": sshd.user,
        "identity_file": str(sshd.client_key),
        "known_hosts": str(known_hosts),
        "state_dir": str(tmp_path / "device-state"),
        "connect_timeout": "5s",
        "command_timeout": "10s",
        "keepalive_interval": "1s",
        "keepalive_count_max": 3,
        "reconnect_backoff": {"initial": "200ms", "max": "1s"},
        "status_interval": "500ms",
    }
    auth = overrides.pop("auth", None)
    if auth is not None:  # replace the default login method with the test's
        data.pop("identity_file")
        data.update(auth)
    data.update(overrides)
    return structure(SshOptions, data, "ssh")


def ssh_node_entry(
    name: str, sshd: SshServer, tmp_path: Path, port: int | None = None, **overrides: Any
) -> dict[str, Any]:
    """A node of vkpy's config file on the ssh transport (for start_vkpy(nodes=[...]))."""
    known_hosts = tmp_path / f"{name}-known_hosts"
    if not known_hosts.exists():
        sshd.write_known_hosts(known_hosts, port=port or sshd.port)
    ssh: dict[str, Any] = {
        "host": sshd.host,
        "port": port or sshd.port,
        "user": sshd.user,
        "identity_file": str(sshd.client_key),
        "known_hosts": str(known_hosts),
        "state_dir": str(tmp_path / f"{name}-device"),
        "connect_timeout": "5s",
        "command_timeout": "10s",
        "keepalive_interval": "1s",
        "keepalive_count_max": 3,
        "reconnect_backoff": {"initial": "200ms", "max": "1s"},
        "status_interval": "1s",
    }
    ssh.update(overrides.pop("ssh", {}))
    entry: dict[str, Any] = {
        "name": name,
        "transport": "ssh",
        "ssh": ssh,
        "capacity": {"cpu": "4", "memory": "4Gi", "pods": "20"},
        "plugins": ["probe"],
        "status_interval": "2s",
        "restart_backoff": {"initial": "1s", "max": "4s"},
    }
    entry.update(overrides)
    return entry


_names = itertools.count()


def make_pod(
    *containers: Container,
    init: tuple[Container, ...] = (),
    volumes: tuple[Volume, ...] = (),
    grace: int = 30,
    restart_policy: str = "Never",
) -> Pod:
    return Pod(
        uid=str(uuid.uuid4()),
        namespace="default",
        name=f"pod-{next(_names)}",
        node_name="ssh-test",
        containers=containers,
        init_containers=init,
        volumes=volumes,
        termination_grace_period_seconds=grace,
        restart_policy=restart_policy,
    )


def sh(name: str, script: str, **kwargs: Any) -> Container:
    return Container(name=name, command=("sh", "-c", script), **kwargs)


async def eventually(
    probe: Callable[[], Awaitable[T]],
    check: Callable[[T], bool],
    timeout: float = 15.0,
    interval: float = 0.1,
) -> T:
    """Ask ``probe`` until ``check`` accepts its answer; return that answer."""
    last: Any = None
    try:
        async with asyncio.timeout(timeout):
            while True:
                last = await probe()
                if check(last):
                    return last
                await asyncio.sleep(interval)
    except TimeoutError:
        raise AssertionError(f"timed out after {timeout}s; last answer: {last!r}") from None


def terminated(report: PodStatusReport | None, name: str = "main") -> Terminated | None:
    if report is None:
        return None
    state = report.containers.get(name) or report.init_containers.get(name)
    return state if isinstance(state, Terminated) else None


async def clean_up(transport: SshTransport, node: RecordingNode) -> None:
    """Delete every pod left on the device (grace 0) and close the link."""
    try:
        if transport.link.connected:
            for uid in await transport.list_pods(node):
                pod = Pod(uid=uid, namespace="", name="", node_name=node.name, containers=())
                await transport.delete_pod(node, pod, 0)

            async def left() -> list[str]:
                return list(await transport.list_pods(node))

            await eventually(left, lambda uids: not uids, timeout=15)
    finally:
        await transport.node_stop(node)
