"""The pods of every node this process runs: watches feeding one worker per pod, and the lookups
the kubelet API needs.

Nodes are grouped by identity. A node with its own credentials (``system:node:<name>``) may only
watch its own pods, so its group watches with ``spec.nodeName=<name>``; the nodes sharing the
process's credentials are served by a single watch over all scheduled pods, filtered here.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import AsyncIterator, Coroutine, Mapping
from typing import Any

import structlog

from vkpy.errors import LogsNotAvailable
from vkpy.kube import JSON, KubeClient
from vkpy.node.virtual_node import VirtualNode
from vkpy.plugins import dispatch
from vkpy.pods.convert import to_pod
from vkpy.pods.events import EventRecorder
from vkpy.pods.worker import PodWorker
from vkpy.types import LogLine, LogOptions, Pod
from vkpy.watching import Backoff, Watcher

log = structlog.get_logger("vkpy.pods")

ORPHAN_RETRY = Backoff(initial=5.0, maximum=60.0)
FINISHED_MEMORY_SECONDS = 300.0


class PodController:
    def __init__(self, nodes: Mapping[str, VirtualNode]) -> None:
        self.nodes = dict(nodes)
        self.workers: dict[str, PodWorker] = {}
        self.by_name: dict[tuple[str, str], str] = {}
        self.events = {
            name: EventRecorder(node.client, name, getattr(node.config, "events", "brief"))
            for name, node in self.nodes.items()
        }
        self.watchers: list[Watcher] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._orphans_checked: set[str] = set()
        # Pods whose final delete is done, until their DELETED event: an event still queued for
        # one must not start a new worker that asks the device and deletes again. In insertion
        # (= finishing) order, so the oldest are forgotten first.
        self._finished_uids: dict[str, tuple[float, str]] = {}
        self._background_tasks: set[asyncio.Task[None]] = set()
        for node in self.nodes.values():
            node.add_status_listener(self._poke)

    def _background(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        self._background_tasks.add(task)
        task.add_done_callback(self._background_tasks.discard)

    # -- watches -----------------------------------------------------------------------------------
    def _groups(self) -> list[tuple[KubeClient, list[VirtualNode]]]:
        groups: dict[int, tuple[KubeClient, list[VirtualNode]]] = {}
        for node in self.nodes.values():
            groups.setdefault(id(node.client), (node.client, []))[1].append(node)
        return list(groups.values())

    def start(self) -> None:
        for client, members in self._groups():
            names = {n.name for n in members}
            selector = f"spec.nodeName={members[0].name}" if len(members) == 1 else "spec.nodeName!="
            watcher = Watcher(
                client=client,
                path="/api/v1/pods",
                query={"fieldSelector": selector},
                on_event=functools.partial(self._on_event, names=names),
                on_synced=functools.partial(self._on_synced, names=names),
                name=f"pods:{','.join(sorted(names))[:60]}",
                already_held=self._already_held,
            )
            self.watchers.append(watcher)
            self._tasks.append(asyncio.create_task(watcher.run(), name=watcher.name))
            node_watcher = Watcher(
                client=client,
                path="/api/v1/nodes",
                query={"fieldSelector": f"metadata.name={members[0].name}"}
                if len(members) == 1
                else {"labelSelector": "type=virtual-kubelet"},
                on_event=functools.partial(self._on_node_event, names=names),
                on_synced=functools.partial(self._on_node_synced, names=names),
                name=f"nodes:{','.join(sorted(names))[:60]}",
            )
            self.watchers.append(node_watcher)
            self._tasks.append(asyncio.create_task(node_watcher.run(), name=node_watcher.name))

    async def stop(self) -> None:
        """Stop watching and working; what runs on devices keeps running."""
        for watcher in self.watchers:
            watcher.stop()
        tasks = [*self._tasks, *self._background_tasks]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await asyncio.gather(*(w.stop() for w in list(self.workers.values())), return_exceptions=True)
        await asyncio.gather(*(e.drain() for e in self.events.values()), return_exceptions=True)

    def _on_event(self, kind: str, obj: JSON, names: set[str]) -> None:
        node_name = obj.get("spec", {}).get("nodeName")
        if node_name not in names:
            return
        self._dispatch(obj["metadata"]["uid"], node_name, None if kind == "DELETED" else obj)

    async def _on_synced(self, items: list[JSON], names: set[str]) -> None:
        present: dict[str, set[str]] = {name: set() for name in names}
        for obj in items:
            node_name = obj.get("spec", {}).get("nodeName")
            if node_name in names:
                present[node_name].add(obj["metadata"]["uid"])
                self._dispatch(obj["metadata"]["uid"], node_name, obj)
        for uid, (_, node_name) in list(self._finished_uids.items()):
            if node_name in names and uid not in present[node_name]:
                del self._finished_uids[uid]
        # Deleted while the watch was down: the worker lets the device go of it.
        for uid, worker in list(self.workers.items()):
            if worker.node.name in names and uid not in present[worker.node.name]:
                worker.update(None)
        for name in names:
            self.nodes[name].mark_pods_synced()
            if name not in self._orphans_checked:
                self._orphans_checked.add(name)
                self._background(self._clean_orphans(self.nodes[name], present[name]))

    def _on_node_event(self, kind: str, obj: JSON, names: set[str]) -> None:
        name = obj.get("metadata", {}).get("name")
        if kind == "DELETED" and name in names:
            self._background(self._reregister(self.nodes[name]))

    async def _on_node_synced(self, items: list[JSON], names: set[str]) -> None:
        listed = {obj.get("metadata", {}).get("name") for obj in items}
        for name in names:
            if name not in listed and self.nodes[name].uid is not None:
                await self._reregister(self.nodes[name])

    async def _reregister(self, node: VirtualNode) -> None:
        try:
            await node.on_node_deleted()
        except Exception as exc:
            log.warning("node.reregister_failed", node=node.name, error=str(exc))

    async def _clean_orphans(self, node: VirtualNode, known: set[str]) -> None:
        """Pods the device holds that the API no longer has (deleted while vkpy was away). A device
        that cannot be asked now is asked again later, until it answers."""
        if not dispatch.has_implementation(node.pm, "list_pods"):
            return
        attempt = 0
        while True:
            try:
                held = await dispatch.call_first(node.pm, "list_pods", node=node)
                for uid in set(held or ()) - known - set(self.workers):
                    log.info("pod.orphan_deleted", node=node.name, pod_uid=uid)
                    orphan = Pod(uid=uid, namespace="", name="", node_name=node.name, containers=())
                    await dispatch.call_first(
                        node.pm, "delete_pod", node=node, pod=orphan, grace_period_seconds=0
                    )
                return
            except Exception as exc:
                delay = ORPHAN_RETRY.delay(attempt)
                attempt += 1
                log.warning("pod.orphan_check_failed", node=node.name, error=str(exc), retry_in=round(delay))
                await asyncio.sleep(delay)

    # -- workers -----------------------------------------------------------------------------------
    def _dispatch(self, uid: str, node_name: str, obj: JSON | None) -> None:
        worker = self.workers.get(uid)
        if worker is None:
            if uid in self._finished_uids:
                if obj is None:
                    del self._finished_uids[uid]
                return
            if obj is None:
                return
            worker = PodWorker(uid, self.nodes[node_name], self.events[node_name], self._finished)
            self.workers[uid] = worker
            worker.update(obj)
            worker.start()
        else:
            worker.update(obj)
        if obj is not None:
            meta = obj["metadata"]
            self.by_name[(meta["namespace"], meta["name"])] = uid

    def _finished(self, worker: PodWorker) -> None:
        if self.workers.get(worker.uid) is worker:
            del self.workers[worker.uid]
        if worker.latest is not None:
            # Gone from the API already when `latest` is None: no DELETED event is to come.
            self._remember_finished(worker.uid, worker.node.name)
        if worker.last_known is not None:
            # A pod's namespace and name never change: one lookup, not a scan of every pod.
            meta = worker.last_known.get("metadata", {})
            key = (meta.get("namespace", ""), meta.get("name", ""))
            if self.by_name.get(key) == worker.uid:
                del self.by_name[key]

    def _remember_finished(self, uid: str, node_name: str) -> None:
        now = asyncio.get_running_loop().time()
        # The DELETED event normally comes within a second; one lost with a broken watch is not
        # waited for long (a relist forgets every uid it does not list).
        while self._finished_uids:
            oldest, (when, _) = next(iter(self._finished_uids.items()))
            if now - when < FINISHED_MEMORY_SECONDS:
                break
            del self._finished_uids[oldest]
        self._finished_uids[uid] = (now, node_name)

    def _already_held(self, uid: str, resource_version: str) -> bool:
        # The echo of a worker's own status write: decoding it only to ignore it was a third of the
        # JSON work of a pod burst.
        worker = self.workers.get(uid)
        return worker is not None and worker.holds(resource_version)

    def _poke(self, uid: str) -> None:
        worker = self.workers.get(uid)
        if worker is not None:
            worker.poke()

    # -- kubelet API backend -------------------------------------------------------------------------
    def find_pod(self, namespace: str, name: str) -> Pod | None:
        uid = self.by_name.get((namespace, name))
        worker = self.workers.get(uid) if uid else None
        return worker.current_pod() if worker else None

    async def container_logs(self, pod: Pod, container: str, options: LogOptions) -> AsyncIterator[LogLine]:
        worker = self.workers.get(pod.uid)
        if worker is None:
            raise LogsNotAvailable(f"pod {pod.key} is not on this node")
        result: Any = await dispatch.call_first(
            worker.node.pm,
            "get_container_logs",
            node=worker.node,
            pod=pod,
            container_name=container,
            options=options,
        )
        # Closing our generator (client gone) must close the plugin's stream too (an SSH channel...).
        async with contextlib.aclosing(result):
            async for line in result:
                yield line

    def pods_manifests(self) -> list[Mapping[str, Any]]:
        return [w.last_known for w in self.workers.values() if w.last_known is not None]

    def healthy(self) -> bool:
        return all(not task.done() for task in self._tasks)


__all__ = ["PodController", "to_pod"]
