"""`vkpy run`: one process, many nodes. Wires config, plugins, API clients, nodes, pod workers and
the kubelet API together, and takes them down cleanly on SIGTERM (work on devices keeps running)."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import signal
import socket
from pathlib import Path
from typing import Any

import structlog

from vkpy.errors import ConfigError
from vkpy.kube import KubeClient
from vkpy.kubelet.server import KubeletServer
from vkpy.node.virtual_node import VirtualNode
from vkpy.plugins.loader import PluginRegistry
from vkpy.pods.controller import PodController

log = structlog.get_logger("vkpy.runtime")

START_CONCURRENCY = 50


def advertise_address(listen: str, explicit: str | None) -> str:
    """The InternalIP nodes report: explicit, else the listen address when it is one host, else
    the address this machine would use for outbound traffic (no packet is sent)."""
    if explicit:
        return explicit
    with contextlib.suppress(ValueError):
        ip = ipaddress.ip_address(listen)
        if not ip.is_unspecified:
            return listen
    with contextlib.suppress(OSError), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.connect(("192.0.2.1", 9))  # TEST-NET-1: never routed; connect() on UDP sends nothing
        return str(sock.getsockname()[0])
    return "127.0.0.1"


class Runtime:
    """Everything `vkpy run` starts. Usable embedded: ``await rt.start()`` … ``await rt.stop()``."""

    def __init__(self, config: Any, registry: PluginRegistry) -> None:
        self.config = config
        self.registry = registry
        self.clients: dict[str, KubeClient] = {}
        self.nodes: dict[str, VirtualNode] = {}
        self.pods: PodController | None = None
        self.server: KubeletServer | None = None

    async def _client(self, kubeconfig: Path | None, identity: str) -> KubeClient:
        key = str(kubeconfig) if kubeconfig else "<default>"
        if key not in self.clients:
            self.clients[key] = await KubeClient.from_kubeconfig(kubeconfig, identity=identity)
        return self.clients[key]

    async def start(self) -> None:
        cfg = self.config
        kubelet = cfg.kubelet
        shared_kubeconfig = cfg.kubeconfig
        first_client: KubeClient | None = None
        for node_cfg in cfg.nodes:
            if node_cfg.transport not in self.registry.transports:
                raise ConfigError(f"node {node_cfg.name}: transport {node_cfg.transport!r} is not installed")
            own = node_cfg.kubeconfig
            client = await self._client(
                own or shared_kubeconfig, f"node:{node_cfg.name}" if own else "shared"
            )
            first_client = first_client or client
        assert first_client is not None

        self.server = KubeletServer(
            backend=_LazyBackend(self),
            address=kubelet.address,
            port=kubelet.port,
            tls_cert=kubelet.tls_cert,
            tls_key=kubelet.tls_key,
            client_ca=kubelet.client_ca or (Path(first_client.ca_file) if first_client.ca_file else None),
            allow_anonymous=kubelet.allow_anonymous,
        )
        await self.server.start()
        address = advertise_address(kubelet.address, kubelet.advertise_address)

        for node_cfg in cfg.nodes:
            own = node_cfg.kubeconfig
            client = await self._client(own or shared_kubeconfig, "")
            node = VirtualNode(
                config=node_cfg,
                client=client,
                transport=None,
                plugin_manager=None,
                address=address,
                kubelet_port=self.server.port,
            )
            transport_cls = self.registry.transports[node_cfg.transport]
            transport = transport_cls(node, node_cfg.transport_options)
            node.attach(transport, self.registry.node_plugin_manager(transport, node_cfg.plugins))
            self.nodes[node_cfg.name] = node

        self.pods = PodController(self.nodes)
        limiter = asyncio.Semaphore(START_CONCURRENCY)

        async def start_node(node: VirtualNode) -> None:
            async with limiter:
                await node.start()

        await asyncio.gather(*(start_node(n) for n in self.nodes.values()))
        self.pods.start()
        log.info("vkpy.started", nodes=len(self.nodes))

    async def stop(self) -> None:
        log.info("vkpy.stopping")
        if self.pods is not None:
            await self.pods.stop()
        await asyncio.gather(*(n.stop() for n in self.nodes.values()), return_exceptions=True)
        if self.server is not None:
            await self.server.stop()
        for client in self.clients.values():
            with contextlib.suppress(Exception):
                await client.close()
        log.info("vkpy.stopped")


class _LazyBackend:
    """The kubelet server starts before the pod controller exists (the port goes into the Node)."""

    def __init__(self, runtime: Runtime) -> None:
        self._runtime = runtime

    def _pods(self) -> PodController | None:
        return self._runtime.pods

    def find_pod(self, namespace: str, name: str) -> Any:
        pods = self._pods()
        return pods.find_pod(namespace, name) if pods else None

    def container_logs(self, pod: Any, container: str, options: Any) -> Any:
        pods = self._pods()
        assert pods is not None
        return pods.container_logs(pod, container, options)

    def pods_manifests(self) -> list[Any]:
        pods = self._pods()
        return pods.pods_manifests() if pods else []

    def healthy(self) -> bool:
        pods = self._pods()
        return pods is not None and pods.healthy()


async def run(config: Any, registry: PluginRegistry) -> None:
    """Run until SIGTERM or SIGINT."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    runtime = Runtime(config, registry)
    try:
        await runtime.start()
        await stop.wait()
    finally:
        await runtime.stop()
