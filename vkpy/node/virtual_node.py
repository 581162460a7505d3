"""One virtual node: its plugins, its Node object, its Lease and its status heartbeat."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Mapping
from typing import Any

import pluggy
import structlog

from vkpy import __version__
from vkpy.kube import JSON, KubeClient, KubeError, micro_time, now
from vkpy.kubelet.metrics import NodeMetrics
from vkpy.node import manifest
from vkpy.node.manifest import NodeFacts, Readiness
from vkpy.plugins import dispatch
from vkpy.types import DeviceHealth

LEASE_NAMESPACE = "kube-node-lease"
LEASE_DURATION_SECONDS = 40
LEASE_RENEW_INTERVAL = 10.0
STATUS_INTERVAL = 10.0
STATUS_REPORT_INTERVAL = 60.0
KUBELET_VERSION = f"v1.37.0-vkpy.{__version__}"


class VirtualNode:
    """Implements :class:`vkpy.NodeHandle` for plugins, and keeps the Node alive in the cluster."""

    def __init__(
        self,
        *,
        config: Any,
        client: KubeClient,
        transport: Any,
        plugin_manager: pluggy.PluginManager | None,
        address: str,
        kubelet_port: int,
    ) -> None:
        self.config = config
        self.client = client
        self._transport = transport
        self._pm = plugin_manager
        self.address = address
        self.kubelet_port = kubelet_port
        self._log = structlog.get_logger("vkpy.node").bind(node=config.name)
        self.health = DeviceHealth(reachable=True)
        self._pushed_health = DeviceHealth(reachable=True)
        self._polled_health = DeviceHealth(reachable=True)
        self.pods_synced = False
        self.uid: str | None = None
        self._status_listeners: list[Callable[[str], None]] = []
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._last_readiness: Readiness | None = None
        self._last_report = 0.0
        self._previous_conditions: list[JSON] = []
        self._device_capacity: Mapping[str, str] | None = None
        self._capacity_stale = False
        # Every pod's env resolution reads the facts: built once per change of what they depend on.
        self._facts: tuple[tuple[object, ...], NodeFacts] | None = None
        self._capacity_generation = 0
        self._register_lock = asyncio.Lock()
        self.metrics = NodeMetrics()

    # -- NodeHandle ------------------------------------------------------------------------------
    @property
    def name(self) -> str:
        return str(self.config.name)

    @property
    def transport(self) -> Any:
        return self._transport

    @property
    def log(self) -> Any:
        return self._log

    @property
    def pm(self) -> pluggy.PluginManager:
        """The node's PluginManager: its transport and device plugins."""
        if self._pm is None:
            raise RuntimeError(f"node {self.name}: no plugins attached yet")
        return self._pm

    def attach(self, transport: Any, pm: pluggy.PluginManager) -> None:
        self._transport = transport
        self._pm = pm

    def report_status(self, pod_uid: str) -> None:
        for listener in self._status_listeners:
            listener(pod_uid)

    def set_health(self, health: DeviceHealth) -> None:
        # What a transport pushes stands until it pushes again; a plugin's polled "healthy" (or
        # another plugin's) must not hide it.
        self._pushed_health = health
        self._apply_health()

    def _apply_health(self) -> None:
        pushed, polled = self._pushed_health, self._polled_health
        health = pushed if not pushed.reachable else polled
        if health != self.health:
            self._log.info(
                "node.device_health", reachable=health.reachable, reason=health.reason, message=health.message
            )
            if health.reachable != self.health.reachable:
                self.metrics.device_health_changed(health.reachable)
                # A device that was away (or absent at start) may report another capacity now.
                self._capacity_stale = health.reachable
            self.health = health
            self._wake.set()

    # -- wiring ----------------------------------------------------------------------------------
    def add_status_listener(self, listener: Callable[[str], None]) -> None:
        self._status_listeners.append(listener)

    def mark_pods_synced(self) -> None:
        if not self.pods_synced:
            self.pods_synced = True
            self._wake.set()

    def readiness(self) -> Readiness:
        if not self.pods_synced:
            return Readiness(False, "PodCacheNotSynced", "vkpy has not yet listed this node's pods")
        if not self.health.reachable:
            return Readiness(
                False,
                self.health.reason or "DeviceUnreachable",
                self.health.message or "the device cannot be reached",
            )
        return Readiness(
            True,
            "KubeletReady",
            f"vkpy is posting ready status; device reachable via {self.config.transport}",
        )

    def facts(self) -> NodeFacts:
        key = (self.address, self.kubelet_port, self._capacity_generation)
        if self._facts is None or self._facts[0] != key:
            self._facts = (key, self._build_facts())
        return self._facts[1]

    def _build_facts(self) -> NodeFacts:
        capacity = dict(self.config.capacity or self._device_capacity or manifest.DEFAULT_CAPACITY)
        allocatable = dict(self.config.allocatable or capacity)
        taints = self.config.taints
        taint_dicts: tuple[Mapping[str, str], ...]
        if taints is None:
            taint_dicts = (manifest.DEFAULT_TAINT,)
        else:
            taint_dicts = tuple(
                {k: v for k, v in (("key", t.key), ("value", t.value), ("effect", t.effect)) if v}
                for t in taints
            )
        return NodeFacts(
            name=self.name,
            transport=self.config.transport,
            address=self.address,
            kubelet_port=self.kubelet_port,
            capacity=capacity,
            allocatable=allocatable,
            labels=dict(self.config.labels or {}),
            taints=taint_dicts,
            os=self.config.os or "linux",
            arch=self.config.arch or manifest.host_arch(),
            kubelet_version=KUBELET_VERSION,
        )

    # -- lifecycle -------------------------------------------------------------------------------
    async def start(self) -> None:
        try:
            await dispatch.call_all(self.pm, "node_start", node=self)
        except Exception as exc:
            # The node still registers (NotReady): the user sees why in `kubectl describe node`.
            self._log.error("node.start_failed", error=str(exc))
            self.set_health(DeviceHealth(False, "DeviceStartFailed", str(exc)))
        else:
            # Registered NotReady when the device is away, rather than Ready until the first poll:
            # the scheduler would place pods on it meanwhile.
            await self._poll_health()
        await self._refresh_capacity()
        await self.register()
        self._tasks = [
            asyncio.create_task(self._lease_loop(), name=f"lease:{self.name}"),
            asyncio.create_task(self._status_loop(), name=f"status:{self.name}"),
        ]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        try:
            await dispatch.call_all(self.pm, "node_stop", node=self, reverse=True)
        except Exception as exc:
            self._log.warning("node.stop_failed", error=str(exc))

    async def register(self) -> None:
        """Create the Node, or take over an existing one (a restart); then (re)create its Lease."""
        async with self._register_lock:
            facts = self.facts()
            readiness = self.readiness()
            try:
                created = await self.client.create(
                    "/api/v1/nodes", manifest.node_object(facts, readiness, now())
                )
                self.uid = created["metadata"]["uid"]
                self._log.info("node.registered", uid=self.uid)
            except KubeError as exc:
                if not exc.conflict:
                    raise
                # Taints are left as they are: NodeRestriction forbids a node changing its own.
                patched = await self.client.patch(
                    f"/api/v1/nodes/{self.name}", {"metadata": {"labels": manifest.labels(facts)}}
                )
                self.uid = patched["metadata"]["uid"]
                self._previous_conditions = list(patched.get("status", {}).get("conditions") or [])
                self._log.info("node.adopted", uid=self.uid)
            await self._write_status(force=True)
            await self._ensure_lease()

    async def on_node_deleted(self) -> None:
        self._log.warning("node.deleted_externally")
        await self.register()

    # -- lease -----------------------------------------------------------------------------------
    def _lease_path(self) -> str:
        return f"/apis/coordination.k8s.io/v1/namespaces/{LEASE_NAMESPACE}/leases/{self.name}"

    async def _ensure_lease(self) -> None:
        stamp = micro_time(now())
        body: dict[str, Any] = {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {
                "name": self.name,
                "namespace": LEASE_NAMESPACE,
                "ownerReferences": [{"apiVersion": "v1", "kind": "Node", "name": self.name, "uid": self.uid}],
            },
            "spec": {
                "holderIdentity": self.name,
                "leaseDurationSeconds": LEASE_DURATION_SECONDS,
                "renewTime": stamp,
            },
        }
        try:
            await self.client.create(
                f"/apis/coordination.k8s.io/v1/namespaces/{LEASE_NAMESPACE}/leases", body
            )
        except KubeError as exc:
            if not exc.conflict:
                raise
            await self.client.patch(
                self._lease_path(),
                {"metadata": {"ownerReferences": body["metadata"]["ownerReferences"]}, "spec": body["spec"]},
                content_type="application/merge-patch+json",
            )
        self.metrics.lease_renewed()

    async def renew_lease(self) -> None:
        try:
            await self.client.patch(
                self._lease_path(),
                {
                    "spec": {
                        "renewTime": micro_time(now()),
                        "holderIdentity": self.name,
                        "leaseDurationSeconds": LEASE_DURATION_SECONDS,
                    }
                },
                content_type="application/merge-patch+json",
            )
            self.metrics.lease_renewed()
        except KubeError as exc:
            if not exc.not_found:
                raise
            # The garbage collector deletes the Lease with its Node: check which is gone.
            try:
                await self.client.get(f"/api/v1/nodes/{self.name}")
            except KubeError as node_exc:
                if node_exc.not_found:
                    await self.register()
                    return
                raise
            await self._ensure_lease()

    async def _lease_loop(self) -> None:
        while True:
            await asyncio.sleep(LEASE_RENEW_INTERVAL)
            try:
                await self.renew_lease()
            except Exception as exc:
                self._log.warning("node.lease_renew_failed", error=str(exc))

    # -- status ----------------------------------------------------------------------------------
    async def _poll_health(self) -> None:
        if not dispatch.has_implementation(self.pm, "node_health"):
            return
        try:
            async with asyncio.timeout(STATUS_INTERVAL / 2):
                answers = await dispatch.call_all(self.pm, "node_health", node=self)
        except Exception as exc:
            failed = f"health check failed: {exc}"
            self._polled_health = DeviceHealth(False, "DeviceHealthCheckFailed", failed)
            self._apply_health()
            return
        if answers:
            unhealthy = [h for h in answers if isinstance(h, DeviceHealth) and not h.reachable]
            self._polled_health = unhealthy[0] if unhealthy else DeviceHealth(True)
            self._apply_health()

    async def _write_status(self, force: bool = False) -> None:
        readiness = self.readiness()
        loop = asyncio.get_running_loop()
        due = loop.time() - self._last_report >= STATUS_REPORT_INTERVAL
        if not force and not due and readiness == self._last_readiness:
            return
        status = manifest.node_status(self.facts(), readiness, now(), self._previous_conditions)
        try:
            result = await self.client.patch(f"/api/v1/nodes/{self.name}/status", {"status": status})
        except KubeError as exc:
            if exc.not_found and not force:
                await self.register()
                return
            raise
        self._previous_conditions = list(result.get("status", {}).get("conditions") or [])
        if readiness != self._last_readiness:
            self._log.info("node.readiness", ready=readiness.ready, reason=readiness.reason)
        self._last_readiness = readiness
        self._last_report = loop.time()

    async def _refresh_capacity(self) -> bool:
        """Ask the device for its capacity; True when it differs from what the node reports."""
        self._capacity_stale = False
        try:
            reported = await dispatch.call_all(self.pm, "node_capacity", node=self)
        except Exception as exc:
            self._log.warning("node.capacity_unavailable", error=str(exc))
            return False
        if not reported:
            return False
        capacity = {str(k): str(v) for k, v in dict(reported[-1]).items()}
        if capacity == self._device_capacity:
            return False
        self._device_capacity = capacity
        self._capacity_generation += 1
        self._log.info("node.device_capacity", capacity=capacity)
        return True

    async def _status_loop(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(STATUS_INTERVAL):
                    await self._wake.wait()
            self._wake.clear()
            try:
                await self._poll_health()
                changed = self._capacity_stale and await self._refresh_capacity()
                await self._write_status(force=changed)
            except Exception as exc:
                self._log.warning("node.status_update_failed", error=str(exc))
