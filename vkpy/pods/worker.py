"""One worker per pod: create → update → status → delete, strictly in sequence for that pod.

The worker holds the newest pod object the watch delivered and reconciles the device towards it
whenever it changes, when the device pushes news, or when its poll interval passes. Errors from
plugins are retried with capped backoff, never abandoned.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import attrs
import structlog

from vkpy.errors import DeviceUnreachable, PodRejected
from vkpy.kube import JSON, MERGE_PATCH, KubeError, now, object_head
from vkpy.plugins import dispatch
from vkpy.pods import status as status_mod
from vkpy.pods.convert import mutable_spec_digest, to_pod
from vkpy.pods.env import EnvMissing, EnvResolver, resolve_volume_sources
from vkpy.pods.events import EventRecorder
from vkpy.pods.status import ContainerRecord, Observation, PodFailure
from vkpy.types import Pod, PodStatusReport, Running, Terminated, Waiting
from vkpy.watching import Backoff

if TYPE_CHECKING:
    from vkpy.node.virtual_node import VirtualNode

log = structlog.get_logger("vkpy.pods")

ERROR_BACKOFF = Backoff(initial=1.0, maximum=60.0)
DELETE_MARGIN_SECONDS = 10.0
DELETE_POLL_SECONDS = 1.0
LONG_RUN_RESETS_BACKOFF = 600.0
PUSHED_RESYNC_SECONDS = 60.0


def _was_started(manifest: Mapping[str, Any]) -> bool:
    status = manifest.get("status", {}) or {}
    for entry in (status.get("containerStatuses") or []) + (status.get("initContainerStatuses") or []):
        if entry.get("containerID") or {"running", "terminated"} & set(entry.get("state", {})):
            return True
    return False


def _not_newer(manifest: JSON, held: JSON | None) -> bool:
    """Whether ``manifest`` is the version of the pod the worker ``held`` already, or an older one."""
    if held is None:
        return False
    return _version_not_newer(
        str(manifest.get("metadata", {}).get("resourceVersion") or ""),
        str(held.get("metadata", {}).get("resourceVersion") or ""),
    )


def _version_not_newer(theirs: str, ours: str) -> bool:
    """resourceVersions are opaque by contract, but a pod's come from etcd's revision: decimal and
    increasing. Others are only compared for equality, so at worst a status write is repeated."""
    if not ours or not theirs:
        return False
    if ours.isdecimal() and theirs.isdecimal():
        return int(theirs) <= int(ours)
    return theirs == ours


def _as_written(manifest: JSON, desired: JSON, answer: bytes) -> JSON:
    """The pod as the server holds it after our status patch, without decoding the whole answer.

    The patch carried the resourceVersion of ``manifest``, so it applied to exactly that object: the
    result is ``manifest`` with ``desired`` merged into its status (a JSON merge patch of plain
    values and lists replaces them key by key) under the new resourceVersion the answer starts
    with. Only the managed fields differ, and vkpy does not read them. Decoding the answer was a
    third of the JSON work of a pod burst; it is still done when the answer is laid out otherwise.
    """
    head = object_head(answer)
    if head is None or head[0] != manifest["metadata"].get("uid"):
        written: JSON = json.loads(answer)
        return written
    return {
        **manifest,
        "metadata": {**manifest["metadata"], "resourceVersion": head[1]},
        "status": {**(manifest.get("status") or {}), **desired},
    }


def _should_restart(policy: str, state: Terminated, init: bool = False) -> bool:
    if init:
        # A failed init container is retried unless the pod never restarts; a finished one is done.
        return policy != "Never" and not state.succeeded
    return policy == "Always" or (policy == "OnFailure" and not state.succeeded)


class PodWorker:
    def __init__(self, uid: str, node: VirtualNode, events: EventRecorder, on_finished: Any) -> None:
        self.uid = uid
        self.node = node
        self.events = events
        self._on_finished = on_finished
        self.latest: JSON | None = None
        self.last_known: JSON | None = None
        self.pod: Pod | None = None
        self.created = False
        self.checked_device = False
        self.delete_requested = False
        self.delete_deadline: float | None = None
        self.finished = False
        self.spec_digest: str | None = None
        self.records: dict[str, ContainerRecord] = {}
        self.report: PodStatusReport | None = None
        self.failure: PodFailure | None = None
        self.waiting_override: dict[str, Waiting] = {}
        self._seen_terminations: dict[str, Terminated] = {}
        self._announced_running: set[str] = set()
        self._announced_pod_start = False
        # Events that report what a status write shows go out after it: they would compete with it
        # for the API connections and delay the pod's Running.
        self._after_status: list[tuple[JSON, str, str, str, bool]] = []
        # The inputs of the last status found written; the same inputs give the same status.
        self._status_inputs: tuple[Any, ...] | None = None
        self._digest: tuple[JSON, str] | None = None
        self._wake = asyncio.Event()
        # Why the worker woke: the device is asked only when it pushed news (poked), when the poll
        # interval or a backoff timer ran out (due), or on the first pass; the echo of our own
        # status write is not a reason to ask again.
        self._poked = True
        self._due = False
        self._attempt = 0
        self._create_attempts = 0
        self._task: asyncio.Task[None] | None = None
        self.log = log.bind(node=node.name, pod_uid=uid)
        self._named = False

    # -- inputs ----------------------------------------------------------------------------------
    def update(self, manifest: JSON | None) -> None:
        if manifest is not None and _not_newer(manifest, self.latest):
            # The echo of the worker's own status write, an unchanged pod in a relist (nothing to
            # reconcile), or an event queued before that write (acting on it would repeat the write
            # with a stale resourceVersion: a 409 and a GET).
            return
        self.latest = manifest
        if manifest is not None:
            self.last_known = manifest
            if not self._named:
                # A pod's namespace and name never change: bound once, not on every event.
                meta = manifest.get("metadata", {})
                self.log = log.bind(node=self.node.name, pod=f"{meta.get('namespace')}/{meta.get('name')}")
                self._named = True
        self._wake.set()

    def holds(self, resource_version: str) -> bool:
        """Whether the worker holds this version of its pod, or a newer one (see :meth:`update`)."""
        if self.latest is None:
            return False
        held = str(self.latest.get("metadata", {}).get("resourceVersion") or "")
        return _version_not_newer(resource_version, held)

    def poke(self) -> None:
        self._poked = True
        self._wake.set()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"pod:{self.uid}")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def _is_finished(self) -> bool:
        # A method, not the attribute: mypy would narrow `finished` and call the check unreachable.
        return self.finished

    @property
    def pm(self) -> Any:
        return self.node.pm

    def current_pod(self) -> Pod | None:
        if self.pod is not None:
            return self.pod
        return to_pod(self.last_known) if self.last_known is not None else None

    # -- loop ------------------------------------------------------------------------------------
    async def _run(self) -> None:
        try:
            while True:
                if self.finished:
                    break
                self._wake.clear()
                try:
                    delay = await self._step()
                    self._attempt = 0
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    delay = ERROR_BACKOFF.delay(self._attempt)
                    self._attempt += 1
                    self.log.warning(
                        "pod.reconcile_failed",
                        error=str(exc),
                        error_type=type(exc).__name__,
                        retry_in=round(delay, 1),
                        attempt=self._attempt,
                    )
                if self._is_finished():
                    break
                try:
                    async with asyncio.timeout(delay):
                        await self._wake.wait()
                except TimeoutError:
                    self._due = True
        finally:
            if self.finished:
                self._on_finished(self)

    async def _step(self) -> float:
        manifest = self.latest
        if manifest is None:
            await self._gone_from_api()
            return 0
        if manifest.get("metadata", {}).get("deletionTimestamp"):
            return await self._delete(manifest)
        if not self.checked_device:
            await self._check_device(manifest)
        phase = manifest.get("status", {}).get("phase")
        if not self.created and self.failure is None:
            if phase in status_mod.TERMINAL_PHASES:
                return self._poll_interval()
            if not await self._create(manifest):
                return ERROR_BACKOFF.delay(self._create_attempts - 1)
        elif self.created and self.spec_digest != self._spec_digest(manifest):
            await self._update(manifest)
        return await self._sync_status(manifest)

    def _spec_digest(self, manifest: JSON) -> str:
        # Hashing the spec costs more than the rest of a poll: once per pod object, not per poll.
        if self._digest is None or self._digest[0] is not manifest:
            self._digest = (manifest, mutable_spec_digest(manifest))
        return self._digest[1]

    def _poll_interval(self) -> float:
        interval = float(getattr(self.node.config, "status_interval", 10.0) or 10.0)
        if getattr(self.node.transport, "pushes_status", False):
            # The transport reports changes itself: polling is only a safety net.
            return max(interval, PUSHED_RESYNC_SECONDS)
        return interval

    # -- create / adopt ----------------------------------------------------------------------------
    async def _check_device(self, manifest: JSON) -> None:
        """Before creating a pod this process did not create, ask the device: a pod it already runs
        is adopted; one that had started but is gone was lost while vkpy was away."""
        report = await dispatch.call_first(self.pm, "get_pod_status", node=self.node, pod=to_pod(manifest))
        self.checked_device = True
        if report is not None:
            self.created = True
            self.report = report
            self.spec_digest = self._spec_digest(manifest)
            self._restore_records(manifest)
            self.log.info("pod.adopted")
        elif (
            _was_started(manifest)
            and manifest.get("status", {}).get("phase") not in status_mod.TERMINAL_PHASES
        ):
            self._restore_records(manifest)
            self.failure = PodFailure(
                "DeviceLost",
                f"the device behind node {self.node.name} no longer holds this pod "
                "(it restarted or lost its state while unreachable)",
            )
            self.events.emit(manifest, "Warning", "DeviceLost", self.failure.message)

    def _restore_records(self, manifest: JSON) -> None:
        for entry in manifest.get("status", {}).get("containerStatuses") or []:
            record = self.records.setdefault(entry.get("name", ""), ContainerRecord())
            record.restart_count = int(entry.get("restartCount") or 0)

    async def _resolve(self, manifest: JSON) -> Pod:
        client = self.node.client

        async def fetch(kind: str, namespace: str, name: str) -> Mapping[str, Any] | None:
            try:
                return await client.get(f"/api/v1/namespaces/{namespace}/{kind}/{name}")
            except KubeError as exc:
                if exc.not_found:
                    return None
                raise

        async def configmap(namespace: str, name: str) -> Mapping[str, Any] | None:
            return await fetch("configmaps", namespace, name)

        async def secret(namespace: str, name: str) -> Mapping[str, Any] | None:
            return await fetch("secrets", namespace, name)

        # The kubelet knows its own address before the API has it: devices are like hostNetwork
        # pods, so the pod's IP is the node's unless the device reports one.
        status = dict(manifest.get("status") or {})
        status.setdefault("hostIP", self.node.address)
        status.setdefault("hostIPs", [{"ip": self.node.address}])
        status.setdefault("podIP", self.node.address)
        status.setdefault("podIPs", [{"ip": self.node.address}])
        view = {**manifest, "status": status}
        resolver = EnvResolver(view, configmap, secret, node_allocatable=self.node.facts().allocatable)
        spec = manifest.get("spec", {})
        resolved = {}
        for container in (spec.get("initContainers") or []) + (spec.get("containers") or []):
            resolved[container["name"]] = await resolver.resolve(container)
        volumes = await resolve_volume_sources(manifest, configmap, secret)
        for warning in resolver.warnings:
            self.events.emit(manifest, "Warning", warning.reason, warning.message)
        return to_pod(manifest, resolved, volumes)

    async def _create(self, manifest: JSON) -> bool:
        self._create_attempts += 1
        try:
            pod = await self._resolve(manifest)
        except EnvMissing as exc:
            self._set_waiting(manifest, "CreateContainerConfigError", str(exc))
            if self._create_attempts == 1:
                self.events.emit(manifest, "Warning", "Failed", f"Error: {exc}")
            await self._write_status(manifest)
            return False
        try:
            await dispatch.call_first(self.pm, "create_pod", node=self.node, pod=pod)
        except PodRejected as exc:
            self.failure = PodFailure(exc.reason, str(exc))
            self.events.emit(manifest, "Warning", exc.reason, str(exc))
            self.log.warning("pod.rejected", reason=exc.reason, message=str(exc))
            await self._write_status(manifest)
            return True
        except DeviceUnreachable as exc:
            self._set_waiting(manifest, "ContainerCreating", f"waiting for the device: {exc}")
            await self._write_status(manifest)
            return False
        except Exception as exc:
            self._set_waiting(manifest, "CreateContainerError", f"{type(exc).__name__}: {exc}")
            self.events.emit(manifest, "Warning", "Failed", f"Error: {exc}")
            self.log.warning("pod.create_failed", error=str(exc), attempt=self._create_attempts)
            await self._write_status(manifest)
            return False
        self.pod = pod
        self.created = True
        self.waiting_override.clear()
        self.spec_digest = self._spec_digest(manifest)
        self.events.emit(
            manifest,
            "Normal",
            "Created",
            f"Created on device of node {self.node.name} via {self.node.config.transport}",
        )
        self.log.info("pod.created")
        return True

    def _set_waiting(self, manifest: JSON, reason: str, message: str) -> None:
        spec = manifest.get("spec", {})
        for container in (spec.get("initContainers") or []) + (spec.get("containers") or []):
            self.waiting_override[container["name"]] = Waiting(reason, message)

    async def _update(self, manifest: JSON) -> None:
        pod = await self._resolve(manifest)
        await dispatch.call_first(self.pm, "update_pod", node=self.node, pod=pod)
        self.pod = pod
        self.spec_digest = self._spec_digest(manifest)
        self.log.info("pod.updated")

    # -- status ------------------------------------------------------------------------------------
    async def _sync_status(self, manifest: JSON) -> float:
        try:
            return await self._observe_and_write(manifest)
        finally:
            pending, self._after_status = self._after_status, []
            for event in pending:
                self.events.emit(*event)

    async def _observe_and_write(self, manifest: JSON) -> float:
        delay = self._poll_interval()
        ask = self._poked or self._due or self.report is None
        self._poked = self._due = False
        if self.created and self.failure is None and not ask:
            assert self.report is not None
            delay = min(delay, await self._apply_restart_policy(manifest, self.report))
        elif self.created and self.failure is None:
            pod = self.current_pod()
            try:
                report = await dispatch.call_first(self.pm, "get_pod_status", node=self.node, pod=pod)
            except DeviceUnreachable:
                report = self.report  # keep the last known state; never "lost" because of a flaky link
            else:
                if report is None:
                    self.failure = PodFailure(
                        "DeviceLost", f"the device behind node {self.node.name} no longer holds this pod"
                    )
                    self.events.emit(manifest, "Warning", "DeviceLost", self.failure.message)
            self.report = report
            if report is not None:
                delay = min(delay, await self._apply_restart_policy(manifest, report))
        await self._write_status(manifest)
        return delay

    async def _apply_restart_policy(self, manifest: JSON, report: PodStatusReport) -> float:
        """CrashLoopBackOff: a terminated container restarts after 10 s, 20 s, ... up to 5 min
        (as configured), reset after a long run. Returns when to look again."""
        policy = str(manifest.get("spec", {}).get("restartPolicy", "Always"))
        backoff = getattr(self.node.config, "restart_backoff", None)
        initial = float(getattr(backoff, "initial", 10.0))
        maximum = float(getattr(backoff, "max", 300.0))
        loop = asyncio.get_running_loop()
        next_check = float("inf")
        reported = [(n, s, True) for n, s in report.init_containers.items()]
        reported += [(n, s, False) for n, s in report.containers.items()]
        # A container seen terminated without ever being seen running did start too.
        started = [
            n
            for n, s, _ in reported
            if n not in self._announced_running
            and (
                isinstance(s, Running) or (isinstance(s, Terminated) and self._seen_terminations.get(n) != s)
            )
        ]
        self._announce_started(manifest, started)
        for name, state, init in reported:
            if not isinstance(state, Terminated):
                continue
            self._announced_running.discard(name)
            record = self.records.setdefault(name, ContainerRecord())
            if self._seen_terminations.get(name) == state:
                if record.backoff_until is None:
                    continue
            elif _should_restart(policy, state, init):
                self._seen_terminations[name] = state
                ran = (
                    (state.finished_at - state.started_at).total_seconds()
                    if (state.finished_at and state.started_at)
                    else 0
                )
                record.backoff_seconds = (
                    initial
                    if (record.backoff_seconds == 0 or ran > LONG_RUN_RESETS_BACKOFF)
                    else min(maximum, record.backoff_seconds * 2)
                )
                record.backoff_until = loop.time() + record.backoff_seconds
                record.last_terminated = state
                self.events.emit(
                    manifest,
                    "Warning" if not state.succeeded else "Normal",
                    "BackOff",
                    f"Back-off {record.backoff_seconds:.0f}s restarting container {name} "
                    f"(exit code {state.exit_code})",
                )
            else:
                self._seen_terminations[name] = state
                continue
            assert record.backoff_until is not None
            remaining = record.backoff_until - loop.time()
            if remaining > 0:
                self.waiting_override[name] = Waiting(
                    "CrashLoopBackOff",
                    f"back-off {record.backoff_seconds:.0f}s restarting failed container={name} "
                    f"pod={manifest['metadata']['name']}_{manifest['metadata']['namespace']}",
                )
                next_check = min(next_check, remaining)
                continue
            await dispatch.call_first(
                self.pm, "restart_container", node=self.node, pod=self.current_pod(), container_name=name
            )
            record.restart_count += 1
            record.backoff_until = None
            self.waiting_override.pop(name, None)
            self.waiting_override[name] = Waiting("ContainerCreating", "restarting")
            self.log.info("pod.container_restarted", container=name, restart_count=record.restart_count)
            next_check = 0.2
        return next_check

    def _announce_started(self, manifest: JSON, names: list[str]) -> None:
        """``all``: the kubelet's ``Started`` for each container, at each (re)start. ``brief``: one
        for the pod, when its containers first run."""
        self._announced_running.update(names)
        if not names:
            return
        if self.events.level == "all":
            for name in names:
                self._after_status.append((manifest, "Normal", "Started", f"Started container {name}", False))
        elif not self._announced_pod_start:
            self._announced_pod_start = True
            which = f"container {names[0]}" if len(names) == 1 else f"containers {', '.join(names)}"
            via = f"the device of node {self.node.name} via {self.node.config.transport}"
            message = f"Started {which} on {via}"
            self._after_status.append((manifest, "Normal", "Started", message, True))

    def _inputs(self, manifest: JSON) -> tuple[Any, ...]:
        # `manifest` by identity (a new object comes with every change), the rest by value.
        records = tuple((name, attrs.astuple(record)) for name, record in self.records.items())
        overrides = tuple(self.waiting_override.items())
        return (manifest, self.report, records, overrides, self.failure, self.created, self.node.address)

    async def _write_status(self, manifest: JSON) -> None:
        inputs = self._inputs(manifest)
        if (
            self._status_inputs is not None
            and self._status_inputs[0] is manifest
            and self._status_inputs[1:] == inputs[1:]
        ):
            return
        # After a restart, the device's next report replaces the transient "restarting" state.
        observation = Observation(
            manifest=manifest,
            report=self.report,
            records=self.records,
            host_ip=self.node.address,
            now=now(),
            created=self.created,
            waiting_override=dict(self.waiting_override),
            failure=self.failure,
        )
        desired = status_mod.compute_status(observation)
        for name, override in list(self.waiting_override.items()):
            if override.reason == "ContainerCreating" and override.message == "restarting":
                del self.waiting_override[name]
        if not status_mod.status_changed(manifest.get("status", {}) or {}, desired):
            self._status_inputs = inputs
            return
        self._status_inputs = None
        meta = manifest["metadata"]
        path = f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}/status"
        body = {
            "metadata": {"uid": meta["uid"], "resourceVersion": meta["resourceVersion"]},
            "status": desired,
        }
        try:
            with self.events.urgent():
                answer = await self.node.client.request_bytes(
                    "PATCH", path, body=body, content_type=MERGE_PATCH
                )
        except KubeError as exc:
            if exc.conflict:
                fresh = await self.node.client.get(
                    f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}"
                )
                if fresh.get("metadata", {}).get("uid") == self.uid and self.latest is manifest:
                    self.update(fresh)
                return
            if exc.not_found:
                return
            raise
        if self.latest is manifest:
            written = _as_written(manifest, desired, answer)
            self.latest = written
            self.last_known = written
        self.log.debug("pod.status_written", phase=desired.get("phase"))

    # -- delete ------------------------------------------------------------------------------------
    async def _delete(self, manifest: JSON) -> float:
        meta = manifest["metadata"]
        if not self.checked_device and not self.created:
            report = await dispatch.call_first(
                self.pm, "get_pod_status", node=self.node, pod=to_pod(manifest)
            )
            self.checked_device = True
            self.created = report is not None
        if not self.created:
            await self._finalize(manifest)
            return 0
        loop = asyncio.get_running_loop()
        grace_value = meta.get("deletionGracePeriodSeconds")
        if grace_value is None:
            grace_value = manifest.get("spec", {}).get("terminationGracePeriodSeconds", 30)
        grace = int(grace_value or 0)
        if not self.delete_requested:
            self.events.emit(manifest, "Normal", "Killing", f"Stopping pod on device (grace period {grace}s)")
            await dispatch.call_first(
                self.pm, "delete_pod", node=self.node, pod=self.current_pod(), grace_period_seconds=grace
            )
            self.delete_requested = True
            self.delete_deadline = loop.time() + grace + DELETE_MARGIN_SECONDS
            self.log.info("pod.delete_requested", grace=grace)
        try:
            report = await dispatch.call_first(
                self.pm, "get_pod_status", node=self.node, pod=self.current_pod()
            )
        except DeviceUnreachable:
            return DELETE_POLL_SECONDS
        done = report is None or all(
            not isinstance(s, Running)
            for s in (*report.containers.values(), *report.init_containers.values())
        )
        assert self.delete_deadline is not None
        if not done and loop.time() < self.delete_deadline:
            return DELETE_POLL_SECONDS
        if not done:
            self.log.warning("pod.delete_deadline_passed", grace=grace)
        await self._finalize(manifest)
        return 0

    async def _finalize(self, manifest: JSON) -> None:
        """The final delete, with grace 0 and a UID precondition: a pod of the same name created
        meanwhile is a different pod and survives."""
        meta = manifest["metadata"]
        try:
            with self.events.urgent():
                await self.node.client.send(
                    "DELETE",
                    f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}",
                    body={
                        "apiVersion": "v1",
                        "kind": "DeleteOptions",
                        "gracePeriodSeconds": 0,
                        "preconditions": {"uid": meta["uid"]},
                    },
                )
        except KubeError as exc:
            if not (exc.not_found or exc.conflict):
                raise
        self.log.info("pod.deleted")
        self.finished = True

    async def _gone_from_api(self) -> None:
        """Force-deleted (or deleted while vkpy was away): the device must still let go of it."""
        if not self.delete_requested and self.last_known is not None:
            await dispatch.call_first(
                self.pm, "delete_pod", node=self.node, pod=self.current_pod(), grace_period_seconds=0
            )
            self.delete_requested = True
            self.log.info("pod.force_deleted_on_device")
        self.finished = True
