"""`vkpy run`: one process, many nodes. Wires config, plugins, API clients, certificates, nodes, pod
workers, the kubelet API and the metrics port together, and takes them down cleanly on SIGTERM (work
on devices keeps running).

Start-up order: the metrics port (so probes see a live process while it waits), the nodes'
credentials (bootstrapping certificates when ``certificates:`` says so, which may wait for an
approval), the kubelet server, then the nodes and their pods, at once or, with leader election,
once this replica holds the Lease. Certificates are renewed in the background from then on.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import signal
import socket
import time
from collections.abc import Coroutine, Sequence
from pathlib import Path
from typing import Any

import structlog

from vkpy.errors import ConfigError
from vkpy.kube import now
from vkpy.kubelet.metrics import Check, Family, render
from vkpy.kubelet.server import KubeletServer, MetricsServer
from vkpy.node import observability
from vkpy.node.apiclient import ObservedClient
from vkpy.node.certificates import (
    CLIENT,
    SERVING,
    CertificateInfo,
    CertificateStore,
    StoredCertificate,
    identity_problem,
)
from vkpy.node.credentials import CertificateManager, CertificatePolicy
from vkpy.node.leader import ElectionSettings, LeaderElector, default_identity
from vkpy.node.virtual_node import VirtualNode
from vkpy.plugins.loader import PluginRegistry
from vkpy.pods.controller import PodController

log = structlog.get_logger("vkpy.runtime")

START_CONCURRENCY = 50
# A certificate this close to its end is not worth asking with: use the bootstrap credentials.
_CLIENT_CERT_MARGIN = 30.0


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
    """Everything `vkpy run` starts. Usable embedded: ``await rt.start()`` … ``await rt.stop()``;
    ``await rt.wait_failed()`` returns (raising) when a background part fails for good, such as
    losing the leader election."""

    def __init__(self, config: Any, registry: PluginRegistry) -> None:
        self.config = config
        self.registry = registry
        self.clients: dict[str, ObservedClient] = {}
        self.nodes: dict[str, VirtualNode] = {}
        self.pods: PodController | None = None
        self.server: KubeletServer | None = None
        self.metrics_server: MetricsServer | None = None
        self.elector: LeaderElector | None = None
        self.certificates: list[CertificateManager] = []
        self.address = ""
        self._node_clients: dict[str, ObservedClient] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._failed: asyncio.Future[None] | None = None
        self._nodes_started = False
        self._bootstrap_lock = asyncio.Lock()

    # -- clients ---------------------------------------------------------------------------------

    async def _client(self, kubeconfig: Path | None, identity: str) -> ObservedClient:
        key = str(kubeconfig) if kubeconfig else "<default>"
        if key not in self.clients:
            self.clients[key] = await ObservedClient.open(kubeconfig, identity=identity)
        return self.clients[key]

    async def _bootstrap_client(self) -> ObservedClient:
        certificates = self.config.certificates
        path = certificates.bootstrap_kubeconfig or self.config.kubeconfig
        key = f"bootstrap:{path or '<default>'}"
        async with self._bootstrap_lock:  # nodes bootstrap concurrently: make one client, not many
            if key not in self.clients:
                self.clients[key] = await ObservedClient.open(path, identity="bootstrap")
        return self.clients[key]

    async def _resolve_identities(self) -> list[Any]:
        """A client for every node; returns the nodes whose certificates vkpy manages."""
        cfg = self.config
        managed = []
        for index, node_cfg in enumerate(cfg.nodes):
            if node_cfg.transport not in self.registry.transports:
                raise ConfigError(f"node {node_cfg.name}: transport {node_cfg.transport!r} is not installed")
            if node_cfg.kubeconfig is not None:
                client = await self._client(node_cfg.kubeconfig, f"node:{node_cfg.name}")
                _check_identity(client, node_cfg.name, f"nodes[{index}].kubeconfig ({node_cfg.kubeconfig})")
            elif cfg.certificates is not None:
                managed.append(node_cfg)
                continue
            else:
                client = await self._client(cfg.kubeconfig, "shared")
                _check_identity(client, node_cfg.name, f"kubeconfig ({cfg.kubeconfig or 'default'})")
            self._node_clients[node_cfg.name] = client
        await asyncio.gather(*(self._bootstrap(node_cfg) for node_cfg in managed))
        return managed

    def _policy(self) -> CertificatePolicy:
        certificates = self.config.certificates
        return CertificatePolicy(
            expiration=certificates.expiration,
            renew_before=certificates.renew_before,
            approval_timeout=certificates.approval_timeout,
        )

    async def _bootstrap(self, node_cfg: Any) -> None:
        """The kubelet's --bootstrap-kubeconfig: use the node's stored certificate when it fits,
        else ask for one with the bootstrap credentials; then keep it renewed."""
        name = node_cfg.name
        store = CertificateStore(self.config.certificates.dir / name)

        async def requester() -> ObservedClient:
            own = self._node_clients.get(name)
            current = manager.current
            if own is not None and current is not None:
                left = (current.info.not_after - now()).total_seconds()
                if left > _CLIENT_CERT_MARGIN:
                    return own
            return await self._bootstrap_client()

        manager = CertificateManager(
            kind=CLIENT, node=name, store=store, policy=self._policy(), requester=requester
        )
        await manager.ensure()
        if not store.kubeconfig.is_file():
            bootstrap = await self._bootstrap_client()
            configuration = bootstrap.api.configuration
            ca_file = configuration.ssl_ca_cert
            ca = await asyncio.to_thread(Path(ca_file).read_bytes) if ca_file else None
            await asyncio.to_thread(
                store.write_kubeconfig, name, str(configuration.host), ca, configuration.tls_server_name
            )
        client = await ObservedClient.open(store.kubeconfig, identity=f"node:{name}")
        self.clients[f"node:{name}"] = client
        self._node_clients[name] = client
        _check_identity(client, name, f"{store.kubeconfig}")

        async def install(renewed: StoredCertificate) -> None:
            client.use_certificate(renewed.path)

        manager.set_on_renewed(install)
        self.certificates.append(manager)

    async def _serving_certificate(self, managed: Sequence[Any]) -> tuple[Path | None, Path | None]:
        kubelet = self.config.kubelet
        certificates = self.config.certificates
        if kubelet.tls_cert is not None or certificates is None or not certificates.serving:
            return kubelet.tls_cert, kubelet.tls_key
        if not managed:
            log.warning(
                "certificate.serving_skipped",
                reason="no node's certificate is managed by vkpy (every node has its own kubeconfig)",
            )
            return None, None
        # One server answers for every node, so one certificate: the first managed node asks, since
        # approvers (and NodeRestriction) expect a node to ask for its own serving certificate.
        owner = managed[0].name
        names = [self.address, *certificates.serving_names]

        async def requester() -> ObservedClient:
            return self._node_clients[owner]

        manager = CertificateManager(
            kind=SERVING,
            node=owner,
            store=CertificateStore(certificates.dir / owner),
            policy=self._policy(),
            requester=requester,
            names=names,
        )
        stored = await manager.ensure()

        async def install(renewed: StoredCertificate) -> None:
            if self.server is not None:
                self.server.reload_certificate(renewed.path, renewed.path)

        manager.set_on_renewed(install)
        self.certificates.append(manager)
        return stored.path, stored.path

    # -- lifecycle -------------------------------------------------------------------------------

    async def start(self) -> None:
        cfg = self.config
        kubelet = cfg.kubelet
        self._failed = asyncio.get_running_loop().create_future()
        self.address = advertise_address(kubelet.address, kubelet.advertise_address)
        if cfg.metrics.port is not None:
            self.metrics_server = MetricsServer(
                metrics=self.metrics_text,
                healthy=self.healthy,
                readiness=self.readiness,
                address=cfg.metrics.address,
                port=cfg.metrics.port,
            )
            await self.metrics_server.start()

        managed = await self._resolve_identities()
        tls_cert, tls_key = await self._serving_certificate(managed)
        first_client = self._node_clients[cfg.nodes[0].name]
        self.server = KubeletServer(
            backend=_LazyBackend(self),
            address=kubelet.address,
            port=kubelet.port,
            tls_cert=tls_cert,
            tls_key=tls_key,
            client_ca=kubelet.client_ca or (Path(first_client.ca_file) if first_client.ca_file else None),
            allow_anonymous=kubelet.allow_anonymous,
            metrics_source=self.metrics_text,
            readiness=self.readiness,
        )
        await self.server.start()

        for manager in self.certificates:
            self._spawn(manager.run(), f"renew:{manager.node}:{manager.kind.name}")
        election = cfg.leader_election
        if election.enabled:
            process_client = await self._client(cfg.kubeconfig, "shared")
            self.elector = LeaderElector(
                process_client,
                ElectionSettings(
                    namespace=election.namespace,
                    name=election.name,
                    identity=election.identity or default_identity(),
                    lease_duration=election.lease_duration,
                    renew_interval=election.renew_interval,
                ),
            )
            self._spawn(self._lead(), "leader-election")
            log.info("vkpy.started", nodes=len(cfg.nodes), mode="standby until elected")
        else:
            await self._start_nodes()
            log.info("vkpy.started", nodes=len(self.nodes))

    async def _lead(self) -> None:
        assert self.elector is not None
        await self.elector.acquire()
        await self._start_nodes()
        log.info("vkpy.leading", nodes=len(self.nodes))
        await self.elector.hold()

    async def _start_nodes(self) -> None:
        assert self.server is not None
        for node_cfg in self.config.nodes:
            node = VirtualNode(
                config=node_cfg,
                client=self._node_clients[node_cfg.name],
                transport=None,
                plugin_manager=None,
                address=self.address,
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

        self._nodes_started = True
        await asyncio.gather(*(start_node(n) for n in self.nodes.values()))
        self.pods.start()

    def _spawn(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        task = asyncio.create_task(coro, name=name)
        self._tasks.append(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        if task.cancelled() or self._failed is None or self._failed.done():
            return
        error = task.exception()
        if error is not None:
            self._failed.set_exception(error)
        else:
            self._failed.set_exception(RuntimeError(f"vkpy task {task.get_name()} ended unexpectedly"))

    async def wait_failed(self) -> None:
        """Wait until a background part fails for good; raise its error."""
        assert self._failed is not None, "start() first"
        await asyncio.shield(self._failed)

    async def stop(self) -> None:
        log.info("vkpy.stopping")
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self.pods is not None:
            await self.pods.stop()
        await asyncio.gather(*(n.stop() for n in self.nodes.values()), return_exceptions=True)
        if self.elector is not None:
            # Only now: a standby may start the nodes as soon as the Lease is free.
            await self.elector.release()
        if self.server is not None:
            await self.server.stop()
        if self.metrics_server is not None:
            await self.metrics_server.stop()
        for client in self.clients.values():
            with contextlib.suppress(Exception):
                await client.close()
        if self._failed is not None and not self._failed.done():
            self._failed.cancel()
        log.info("vkpy.stopped")

    # -- what the process tells its operator ----------------------------------------------------

    def healthy(self) -> bool:
        """For ``/healthz``: a standby, or a process still starting, is alive; a running one is
        alive while its watches run."""
        return self.pods is None or self.pods.healthy()

    def readiness(self) -> list[Check]:
        checks = [observability.api_check(self.clients.values())]
        if self.certificates:
            checks.append(observability.certificate_check(self.certificates))
        if self.elector is not None and not self.elector.is_leader:
            leader = self.elector.leader or "nobody yet"
            checks.append(Check("leader-election", True, f"standby; the leader is {leader}"))
            return checks
        if not self._nodes_started:
            checks.append(Check("nodes", False, "the nodes have not started yet"))
            return checks
        checks.append(observability.watch_check(self.pods))
        checks.append(observability.lease_check(self.nodes))
        return checks

    def metrics_text(self) -> str:
        families: list[Family] = []
        families += observability.node_families(self.nodes, self.pods)
        families += observability.api_families(self.clients.values())
        families += observability.watch_families(self.pods.watchers if self.pods else [])
        families += observability.leader_families(self.elector)
        families += observability.certificate_families(self.certificates)
        return render(families)


def _check_identity(client: ObservedClient, node: str, where: str) -> None:
    """Refuse, before anything is sent, credentials that cannot act for ``node``."""
    cert_file = client.cert_file
    if cert_file is None:
        return  # a token or an exec plugin: the API server decides
    try:
        info = CertificateInfo.from_pem(cert_file.read_bytes())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{where}: cannot read the client certificate {cert_file}: {exc}") from exc
    problem = identity_problem(info, node, now())
    if problem is not None:
        raise ConfigError(
            f"{where}: {problem}\n    hint: get one for this node with `vkpy certs request --node {node}`, "
            "or let vkpy obtain and renew it (the certificates: section)"
        )


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
        return self._runtime.healthy()


async def run(config: Any, registry: PluginRegistry) -> None:
    """Run until SIGTERM or SIGINT, or until a background part fails for good (then raise)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    runtime = Runtime(config, registry)
    started = time.monotonic()
    try:
        await runtime.start()
        stopped = asyncio.create_task(stop.wait())
        failed = asyncio.create_task(runtime.wait_failed())
        done, pending = await asyncio.wait({stopped, failed}, return_when=asyncio.FIRST_COMPLETED)
        for task in pending:
            task.cancel()
        if failed in done:
            failed.result()  # raises what failed
    finally:
        await runtime.stop()
        log.debug("vkpy.ran", seconds=round(time.monotonic() - started, 1))
