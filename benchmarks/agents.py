"""The contenders as the harness starts them: vkpy (instant or local transport), the Go
virtual-kubelet with its mock provider (one process per node), and kwok (no device at all).

Every agent uses the admin kubeconfig (the same identity, in the API server's exempt priority level:
no server-side throttling for anyone) and has its client-side rate limit off: vkpy has none, kwok
disables client-go's, and the virtual-kubelet gets ``VK_KUBE_API_QPS=-1`` and its work queues'
rate limit raised (see contenders.py), with 100 pod-sync workers."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
from pathlib import Path
from typing import Any, ClassVar

import contenders
from cluster_io import ignore_missing
from plane import BenchControlPlane

from vkpy.kube import KubeClient
from vkpy.testing.cluster import free_port
from vkpy.testing.runner import VkpyProcess

VK_POD_SYNC_WORKERS = 100
VK_QUEUE_QPS = 100_000  # its work queues' overall rate limit: effectively none, as vkpy has none
KWOK_PARALLELISM = 100
KWOK_ANNOTATION = "kwok.x-k8s.io/node"
NODE_CPU = "1000"
NODE_MEMORY = "1000Gi"


def spawn(
    argv: list[str], log: Path, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    """Start a contender's process, its output appended to ``log``."""
    with log.open("ab") as out:
        return subprocess.Popen(
            argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, cwd=cwd
        )


def _stop_process(process: subprocess.Popen[bytes], timeout: float = 20) -> None:
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


class Agent:
    """One contender, started for a set of nodes and stopped (with its nodes deleted) afterwards."""

    name: ClassVar[str] = ""
    user_agent: ClassVar[str] = ""
    """The prefix of the User-Agent its API requests carry (to count them in the audit log)."""
    runs_processes: ClassVar[bool] = False
    """Pods are real processes (their command matters, and so does the machine's memory)."""

    def __init__(self, plane: BenchControlPlane, workdir: Path, pod_capacity: int) -> None:
        self.plane = plane
        self.workdir = workdir
        self.pod_capacity = pod_capacity
        self.nodes: list[str] = []

    def pids(self) -> list[int]:
        raise NotImplementedError

    def python_pid(self) -> int | None:
        """The vkpy process, for profiling; None for the Go agents."""
        return None

    def exited(self) -> str | None:
        """Why the agent is no longer running (None while it runs)."""
        return None

    async def start(self, nodes: list[str], client: KubeClient) -> None:
        raise NotImplementedError

    async def _stop(self) -> None:
        raise NotImplementedError

    async def stop(self, client: KubeClient) -> None:
        try:
            await self._stop()
        finally:
            limiter = asyncio.Semaphore(50)

            async def delete(node: str) -> None:
                async with limiter:
                    await ignore_missing(client.delete(f"/api/v1/nodes/{node}"))

            await asyncio.gather(*(delete(n) for n in self.nodes), return_exceptions=True)

    def log_tail(self, lines: int = 30) -> str:
        return ""


class VkpyAgent(Agent):
    user_agent = "vkpy/"
    transport: ClassVar[str] = ""

    def __init__(self, plane: BenchControlPlane, workdir: Path, pod_capacity: int) -> None:
        super().__init__(plane, workdir, pod_capacity)
        self.process: VkpyProcess | None = None

    def _transport_options(self, node: str) -> dict[str, Any]:
        raise NotImplementedError

    async def start(self, nodes: list[str], client: KubeClient) -> None:
        self.nodes = list(nodes)
        serving = self.plane.serving_certificate("vkpy-bench")
        config: dict[str, Any] = {
            "kubeconfig": str(self.plane.admin_kubeconfig),
            "log": {"level": "info", "format": "json"},
            "kubelet": {
                "address": "127.0.0.1",
                "port": free_port(),
                "tls_cert": str(serving.cert),
                "tls_key": str(serving.key),
                "client_ca": str(self.plane.ca.files.cert),
            },
            "nodes": [
                {
                    "name": node,
                    "transport": self.transport,
                    self.transport: self._transport_options(node),
                    "capacity": {"cpu": NODE_CPU, "memory": NODE_MEMORY, "pods": str(self.pod_capacity)},
                }
                for node in nodes
            ],
        }
        env = {"VKPY_LOAD_PLUGINS": "local,instant,ssh"}
        self.process = VkpyProcess(config, self.workdir, env=env).start()

    async def _stop(self) -> None:
        if self.process is not None:
            await asyncio.to_thread(self.process.stop)

    def pids(self) -> list[int]:
        return [self.process.process.pid] if self.process and self.process.process else []

    def exited(self) -> str | None:
        if self.process is None or self.process.process is None:
            return None
        code = self.process.process.poll()
        return None if code is None else f"vkpy exited with {code}"

    def python_pid(self) -> int | None:
        pids = self.pids()
        return pids[0] if pids else None

    def log_tail(self, lines: int = 30) -> str:
        text = self.process.log_text() if self.process else ""
        return "\n".join(text.splitlines()[-lines:])


class VkpyInstant(VkpyAgent):
    """vkpy with the in-memory device: the framework's own cost."""

    name = "vkpy-instant"
    transport = "instant"

    def _transport_options(self, node: str) -> dict[str, Any]:
        return {"pods": self.pod_capacity}


class VkpyLocal(VkpyAgent):
    """vkpy with the local transport: every container a real process under a supervisor."""

    name = "vkpy-local"
    transport = "local"
    runs_processes = True

    def _transport_options(self, node: str) -> dict[str, Any]:
        return {"state_dir": str(self.workdir / "state" / node), "max_pods": self.pod_capacity}


class VkpySsh(VkpyAgent):
    """vkpy with the ssh transport, on one device: an sshd of its own on loopback."""

    name = "vkpy-ssh"
    transport = "ssh"
    runs_processes = True

    def __init__(self, plane: BenchControlPlane, workdir: Path, pod_capacity: int) -> None:
        super().__init__(plane, workdir, pod_capacity)
        self.sshd: Any = None

    async def start(self, nodes: list[str], client: KubeClient) -> None:
        from vkpy.testing.sshd import SshServer

        self.sshd = await asyncio.to_thread(SshServer(self.workdir / "sshd").start)
        await super().start(nodes, client)

    def _transport_options(self, node: str) -> dict[str, Any]:
        import attrs
        from vkpy_ssh.options import SshOptions

        sshd = self.sshd
        known_hosts = sshd.write_known_hosts(self.workdir / "known_hosts")
        key = {"identity_file": str(sshd.client_key)}
        # The plugin is young: its key settings have lived under `auth:` and at the top level.
        auth = {"auth": key} if "auth" in attrs.fields_dict(SshOptions) else key
        return {
            "host": sshd.host,
            "port": sshd.port,
            "user": sshd.user,
            **auth,
            "known_hosts": str(known_hosts),
            "state_dir": str(self.workdir / "device"),
            "max_pods": self.pod_capacity,
        }

    async def _stop(self) -> None:
        try:
            await super()._stop()
        finally:
            if self.sshd is not None:
                await asyncio.to_thread(self.sshd.stop)


def ssh_missing() -> str | None:
    """Why the ssh transport cannot be benchmarked here (None when it can)."""
    try:
        import vkpy_ssh  # noqa: F401

        from vkpy.testing import sshd
    except ImportError as exc:
        return f"not installed: {exc}"
    return sshd.missing()


class GoVirtualKubelet(Agent):
    """The Go virtual-kubelet with its mock provider; one process per node, as it is built."""

    name = "go-vk"
    user_agent = "virtual-kubelet/"

    def __init__(self, plane: BenchControlPlane, workdir: Path, pod_capacity: int) -> None:
        super().__init__(plane, workdir, pod_capacity)
        self.processes: list[tuple[subprocess.Popen[bytes], Path]] = []

    async def start(self, nodes: list[str], client: KubeClient) -> None:
        self.nodes = list(nodes)
        binary = contenders.virtual_kubelet_binary()
        self.workdir.mkdir(parents=True, exist_ok=True)
        provider = self.workdir / "mock-provider.json"
        provider.write_text(
            json.dumps(
                {n: {"cpu": NODE_CPU, "memory": NODE_MEMORY, "pods": str(self.pod_capacity)} for n in nodes}
            )
        )
        serving = self.plane.serving_certificate("go-vk-bench")
        for node in nodes:
            env = {
                **os.environ,
                "KUBELET_PORT": str(free_port()),
                "APISERVER_CERT_LOCATION": str(serving.cert),
                "APISERVER_KEY_LOCATION": str(serving.key),
                "VKUBELET_POD_IP": "127.0.0.1",
                "VK_LISTEN_HOST": "127.0.0.1",
                "VK_KUBE_API_QPS": "-1",
                "VK_QUEUE_QPS": str(VK_QUEUE_QPS),
            }
            log = self.workdir / f"{node}.log"
            argv = [
                str(binary),
                f"--kubeconfig={self.plane.admin_kubeconfig}",
                f"--nodename={node}",
                "--provider=mock",
                f"--provider-config={provider}",
                f"--pod-sync-workers={VK_POD_SYNC_WORKERS}",
                f"--metrics-addr=127.0.0.1:{free_port()}",
                "--log-level=info",
            ]
            process = await asyncio.to_thread(spawn, argv, log, self.workdir, env)
            self.processes.append((process, log))

    async def _stop(self) -> None:
        def stop_all() -> None:
            for process, _ in self.processes:
                with contextlib.suppress(ProcessLookupError):
                    process.send_signal(signal.SIGTERM)
            for process, _ in self.processes:
                _stop_process(process)

        await asyncio.to_thread(stop_all)

    def pids(self) -> list[int]:
        return [p.pid for p, _ in self.processes if p.poll() is None]

    def exited(self) -> str | None:
        codes = [p.poll() for p, _ in self.processes]
        ended = [c for c in codes if c is not None]
        return f"{len(ended)} virtual-kubelet process(es) exited ({ended[0]})" if ended else None

    def log_tail(self, lines: int = 30) -> str:
        if not self.processes:
            return ""
        text = self.processes[0][1].read_text(errors="replace")
        return "\n".join(text.splitlines()[-lines:])


class Kwok(Agent):
    """kwok: nodes and pods faked by one process, with no device and no per-pod work at all. The
    harness creates its nodes (annotated for kwok to manage), as kwok users do."""

    name = "kwok"
    user_agent = "kwok/"

    def __init__(self, plane: BenchControlPlane, workdir: Path, pod_capacity: int) -> None:
        super().__init__(plane, workdir, pod_capacity)
        self.process: subprocess.Popen[bytes] | None = None
        self.log = workdir / "kwok.log"

    def _configuration(self) -> Path:
        path = self.workdir / "kwok-configuration.yaml"
        path.write_text(
            json.dumps(
                {
                    "apiVersion": "config.kwok.x-k8s.io/v1alpha1",
                    "kind": "KwokConfiguration",
                    "options": {
                        "podPlayStageParallelism": KWOK_PARALLELISM,
                        "nodePlayStageParallelism": KWOK_PARALLELISM,
                        "nodeLeaseParallelism": KWOK_PARALLELISM,
                    },
                }
            )
        )
        return path

    async def start(self, nodes: list[str], client: KubeClient) -> None:
        self.nodes = list(nodes)
        self.workdir.mkdir(parents=True, exist_ok=True)
        argv = [
            str(contenders.kwok_binary()),
            f"--config={contenders.kwok_stages()}",
            f"--config={self._configuration()}",
            f"--kubeconfig={self.plane.admin_kubeconfig}",
            "--manage-all-nodes=false",
            f"--manage-nodes-with-annotation-selector={KWOK_ANNOTATION}=fake",
            "--node-lease-duration-seconds=40",
            "--node-ip=127.0.0.1",
            f"--server-address=127.0.0.1:{free_port()}",
        ]
        # A HOME of its own: kwok also reads ~/.kwok/kwok.yaml when it exists.
        env = {**os.environ, "HOME": str(self.workdir)}
        self.process = await asyncio.to_thread(spawn, argv, self.log, self.workdir, env)
        limiter = asyncio.Semaphore(50)

        async def create(node: str) -> None:
            async with limiter:
                await client.create("/api/v1/nodes", self._node(node))

        await asyncio.gather(*(create(n) for n in nodes))

    def _node(self, name: str) -> dict[str, Any]:
        resources = {"cpu": NODE_CPU, "memory": NODE_MEMORY, "pods": str(self.pod_capacity)}
        return {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": name,
                "annotations": {KWOK_ANNOTATION: "fake"},
                "labels": {"type": "kwok", "kubernetes.io/hostname": name, "kubernetes.io/os": "linux"},
            },
            "status": {"capacity": resources, "allocatable": resources},
        }

    async def _stop(self) -> None:
        if self.process is not None:
            await asyncio.to_thread(_stop_process, self.process)

    def pids(self) -> list[int]:
        return [self.process.pid] if self.process and self.process.poll() is None else []

    def exited(self) -> str | None:
        code = self.process.poll() if self.process is not None else None
        return None if code is None else f"kwok exited with {code}"

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


AGENTS: dict[str, type[Agent]] = {a.name: a for a in (Kwok, GoVirtualKubelet, VkpyInstant, VkpyLocal)}
"""The contenders of the burst, node and steady-state scenarios; vkpy-ssh has a scenario of its own."""
SSH_AGENTS: dict[str, type[Agent]] = {a.name: a for a in (VkpySsh, VkpyLocal)}
