"""The ``ssh`` transport: every container of a pod is a supervised process group on a device reached
over SSH. See docs/transports/ssh.md for the user's view.

The device holds the truth. Each pod is a folder ``<state_dir>/pods/<node>/<uid>/`` written over
SFTP, and the device script (``device.sh``, uploaded at each connection when it changed) starts,
supervises, stops and reports its containers, detached from any SSH session: pods keep running
while vkpy restarts or the link is down, and a later vkpy adopts them from the folders alone.

vkpy's side: one :class:`~vkpy_ssh.link.Link` (one connection, reconnected with backoff, its
health pushed to the node), a status sweep (one command for every pod, each ``status_interval``,
sooner after a change or while a container is starting) that pushes ``node.report_status`` for
each pod whose state changed, and log reads over SFTP.

Status is never read pod by pod: ``get_pod_status`` answers from a sweep that started after the
transport's last change to that pod, waiting for (or starting) the next one when needed. A burst of
pods then costs one sweep per round, whatever the number of pods asking, and the sweeps run on a
control channel of their own, never queued behind the starts.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.resources
import secrets
import shlex
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Iterable, Mapping
from posixpath import join as pjoin
from typing import Any, cast

import asyncssh
import attrs

from vkpy import (
    DeviceHealth,
    DeviceUnreachable,
    LogLine,
    LogOptions,
    LogsNotAvailable,
    NodeHandle,
    Pod,
    PodStatusReport,
    Transport,
    hookimpl,
)
from vkpy_ssh import layout, status
from vkpy_ssh.control import Control, ControlPool
from vkpy_ssh.layout import DeviceFacts, Entry, PodPaths
from vkpy_ssh.link import Link, SetupFailed
from vkpy_ssh.logs import read_device_log
from vkpy_ssh.options import SshOptions, remote_path

DEVICE_SCRIPT = importlib.resources.files("vkpy_ssh").joinpath("device.sh").read_bytes()
SCRIPT_MODE = 0o700
SOON_RESWEEP_SECONDS = 0.25
POD_WRITES_AT_ONCE = 8


@attrs.frozen
class Snapshot:
    """One sweep: every pod on the device, as of ``started`` (loop time when the command was sent)."""

    started: float
    generation: int
    pods: Mapping[str, status.PodLine]


class SshTransport(Transport):
    """Runs pods on a device over SSH; see the module docstring and docs/transports/ssh.md."""

    name = "ssh"
    options_class = SshOptions
    # Every sweep reports each pod whose state changed (and every pod after a reconnection): the
    # core's own poll is only a safety net.
    pushes_status = True

    def __init__(self, node: NodeHandle, options: SshOptions) -> None:
        super().__init__(node, options)
        self.options: SshOptions
        self.link = Link(options, setup=self._setup, on_health=self._on_health, node_name=node.name)
        # Sweeps are read-only and cheap; pod commands fork on the device. Separate channels keep
        # the status of a burst flowing while its starts are still queued.
        self.sweeps = Control(self.link)
        commands = [Control(self.link) for _ in range(options.command_channels)]
        self.control = ControlPool(commands or [self.sweeps])
        self.facts: DeviceFacts | None = None
        self.script = ""
        self.pods_root = ""
        self._snapshot: Snapshot | None = None
        self._published_generation = 0
        self._changed: dict[str, float] = {}
        self._last_change = float("-inf")
        # Pod folders written together share the SFTP channel: a hundred at once would each take as
        # long as all of them, and no pod could start before the burst was written. A few at a time
        # finish in turn, and their starts go on while the next ones are written.
        self._writes = asyncio.Semaphore(POD_WRITES_AT_ONCE)
        self._kick = asyncio.Event()
        self._sweeper: asyncio.Task[None] | None = None
        self._sweeping: asyncio.Task[Snapshot] | None = None

    # -- connection ----------------------------------------------------------------------------------

    def _on_health(self, health: DeviceHealth) -> None:
        self.node.set_health(health)
        if health.reachable:
            self._kick.set()

    async def _setup(self, conn: asyncssh.SSHClientConnection, sftp: asyncssh.SFTPClient) -> None:
        """At every connection: the state folders, the device script (uploaded when it changed),
        the device's facts, and leftovers of creations a dropped link interrupted."""
        home = await sftp.realpath(".")
        state_dir = remote_path(self.options.state_dir, home if isinstance(home, str) else home.decode())
        bin_dir = pjoin(state_dir, "bin")
        pods_root = pjoin(state_dir, "pods", self.node.name)
        for folder in (bin_dir, pods_root):
            await _makedirs(sftp, folder)
        script = pjoin(bin_dir, "device.sh")
        try:
            async with sftp.open(script, "rb") as current:
                installed = cast(bytes, await current.read())
        except asyncssh.SFTPNoSuchFile:
            installed = b""
        if installed != DEVICE_SCRIPT:
            staging = pjoin(bin_dir, f".device.sh.{secrets.token_hex(4)}")
            async with sftp.open(staging, "wb", attrs=asyncssh.SFTPAttrs(permissions=SCRIPT_MODE)) as new:
                await new.write(DEVICE_SCRIPT)
                await new.chmod(SCRIPT_MODE)
            # Atomic replace: supervisors running the old script keep reading the old file.
            await sftp.posix_rename(staging, script)
            self.node.log.info("ssh.device_script_installed", path=script)
        info = await self.link.run(
            shlex.join(["sh", script, "info", state_dir, pods_root]), conn=conn, what="reading device facts"
        )
        try:
            facts = DeviceFacts.parse(info.stdout.decode("utf-8", "replace"))
        except ValueError as exc:
            raise SetupFailed(f"the device script did not run: {info.error_text() or exc}") from None
        if facts.missing:
            raise SetupFailed(f"the device lacks {', '.join(facts.missing)}, which pods need")
        if not facts.home:
            facts = attrs.evolve(facts, home=home if isinstance(home, str) else home.decode())
        self.facts = facts
        self.script = script
        self.pods_root = pods_root
        self.control.configure(script, pods_root)
        self.sweeps.configure(script, pods_root)
        self.node.log.info(
            "ssh.device_ready",
            arch=facts.arch,
            cpus=facts.cpus,
            memory_kib=facts.memory_kib,
            timestamps=facts.stamper,
            state_dir=state_dir,
        )

    def _require_ready(self) -> DeviceFacts:
        if self.facts is None or not self.link.connected:
            raise self.link.unreachable()
        return self.facts

    def _paths(self, uid: str) -> PodPaths:
        return PodPaths(pjoin(self.pods_root, layout.check_uid(uid)))

    def _mark(self, uid: str) -> None:
        """A pod changed by our hand: the last sweep no longer describes it."""
        self._last_change = self._changed[uid] = asyncio.get_running_loop().time()
        self._kick.set()

    # -- node hooks ----------------------------------------------------------------------------------

    @hookimpl
    async def node_start(self, node: NodeHandle) -> None:
        await self.link.start()
        self._sweeper = asyncio.get_running_loop().create_task(
            self._sweep_loop(), name=f"ssh-sweep:{node.name}"
        )

    @hookimpl
    async def node_stop(self, node: NodeHandle) -> None:
        # Pods keep running on the device; only our side of the link closes.
        if self._sweeper is not None:
            self._sweeper.cancel()
            await asyncio.gather(self._sweeper, return_exceptions=True)
            self._sweeper = None
        if self._sweeping is not None:
            self._sweeping.cancel()
            await asyncio.gather(self._sweeping, return_exceptions=True)
            self._sweeping = None
        self.sweeps.close()
        self.control.close()
        await self.link.stop()

    @hookimpl
    async def node_health(self, node: NodeHandle) -> DeviceHealth:
        return self.link.health

    @hookimpl
    async def node_capacity(self, node: NodeHandle) -> Mapping[str, str] | None:
        facts = self.facts
        if facts is None:
            return None
        capacity = {"pods": str(self.options.max_pods)}
        if facts.cpus:
            capacity["cpu"] = str(facts.cpus)
        if facts.memory_kib:
            capacity["memory"] = f"{facts.memory_kib}Ki"
        return capacity

    @hookimpl
    async def list_pods(self, node: NodeHandle) -> Collection[str]:
        snapshot = await self._snapshot_after(asyncio.get_running_loop().time())
        return sorted(uid for uid, pod in snapshot.pods.items() if pod.present)

    # -- pod hooks -----------------------------------------------------------------------------------

    @hookimpl
    async def create_pod(self, node: NodeHandle, pod: Pod) -> None:
        layout.validate(pod)
        facts = self._require_ready()
        paths = self._paths(pod.uid)
        # No look first: the rename that publishes the folder refuses an existing pod.
        if await self._write_pod(pod, paths, facts):
            node.log.info("ssh.pod_created", pod=pod.key, pod_uid=pod.uid, env_names=layout.env_names(pod))
        result = await self.control.call("start", pod.uid, what="starting the pod")
        self._mark(pod.uid)
        if not result.ok:
            raise RuntimeError(f"the device could not start pod {pod.key}: {result.error_text()}")

    async def _write_pod(self, pod: Pod, paths: PodPaths, facts: DeviceFacts) -> bool:
        """Build the pod folder aside and rename it into place: on the device, a pod is complete
        or absent. False when the pod was there already.

        The SFTP requests are pipelined on the one channel: the folders one depth at a time (a
        level's mkdirs together), then every file, symlink and folder mode at once, then the
        rename; a simple pod costs four round trips, not twenty."""
        building = pjoin(self.pods_root, f".creating-{pod.uid}-{secrets.token_hex(4)}")
        entries = layout.pod_entries(pod, self.node.name, building, paths, facts)
        dirs = [e for e in entries if e.kind == "dir"]
        others = [e for e in entries if e.kind != "dir"]
        levels: dict[int, list[Entry]] = {}
        for entry in dirs:
            levels.setdefault(entry.path.count("/"), []).append(entry)

        async def build(sftp: asyncssh.SFTPClient) -> bool:
            for depth in sorted(levels):
                await _gather_all(
                    sftp.mkdir(entry.path, attrs=asyncssh.SFTPAttrs(permissions=entry.mode))
                    for entry in levels[depth]
                )
            # The SFTP server's umask may have narrowed or kept bits: set exactly what was meant
            # (before the rename, so the published folder never has other modes).
            await _gather_all(
                [
                    *(sftp.chmod(entry.path, entry.mode) for entry in dirs),
                    *(_put(sftp, entry) for entry in others),
                ]
            )
            try:
                await sftp.rename(building, paths.pod_dir)
            except asyncssh.SFTPFailure:
                if await sftp.exists(pjoin(paths.pod_dir, layout.CONTAINERS_FILE)):
                    return False  # created meanwhile by an earlier call that timed out
                raise
            return True

        try:
            async with self._writes:
                written = await self.link.sftp_call(build, what="writing the pod folder")
        except asyncssh.SFTPError as exc:
            await self._remove_quietly(building)
            raise RuntimeError(f"cannot write pod {pod.key} to the device: {exc.reason}") from None
        if not written:
            await self._remove_quietly(building)
        return written

    async def _remove_quietly(self, path: str) -> None:
        # When the link is down, the next connection's setup removes what is left.
        with contextlib.suppress(DeviceUnreachable):
            await self.link.run(shlex.join(["rm", "-rf", "--", path]), what="cleaning up")

    @hookimpl
    async def update_pod(self, node: NodeHandle, pod: Pod) -> None:
        # A running process has nothing to update: a new image or deadline means nothing here.
        node.log.debug("ssh.pod_update_ignored", pod=pod.key)

    @hookimpl
    async def delete_pod(self, node: NodeHandle, pod: Pod, grace_period_seconds: int) -> None:
        self._require_ready()
        layout.check_uid(pod.uid)
        grace = max(0, int(grace_period_seconds))
        result = await self.control.call("delete", pod.uid, str(grace), what="deleting the pod")
        self._mark(pod.uid)
        if not result.ok:
            raise RuntimeError(f"the device could not delete pod {pod.key or pod.uid}: {result.error_text()}")
        node.log.info("ssh.pod_deleting", pod_uid=pod.uid, grace_period_seconds=grace)

    @hookimpl
    async def restart_container(self, node: NodeHandle, pod: Pod, container_name: str) -> None:
        if pod.container(container_name) is None:
            node.log.warning("ssh.restart_unknown_container", pod=pod.key, container=container_name)
            return
        self._require_ready()
        layout.check_uid(pod.uid)
        result = await self.control.call("restart", pod.uid, container_name, what="restarting a container")
        self._mark(pod.uid)
        if not result.ok:
            raise RuntimeError(
                f"the device could not restart {pod.key}/{container_name}: {result.error_text()}"
            )
        node.log.info("ssh.container_restarted", pod=pod.key, container=container_name)

    @hookimpl
    async def get_pod_status(self, node: NodeHandle, pod: Pod) -> PodStatusReport | None:
        self._require_ready()
        line = await self._pod_line(pod.uid)
        return line.report() if line is not None else None

    async def _pod_line(self, uid: str) -> status.PodLine | None:
        """The pod as the device describes it, from a sweep that is recent and started after our
        last change to the pod: the latest one, the one running, or the next one."""
        layout.check_uid(uid)
        recent = asyncio.get_running_loop().time() - 2 * self.options.status_interval
        snapshot = await self._snapshot_after(max(recent, self._changed.get(uid, float("-inf"))))
        return snapshot.pods.get(uid)

    @hookimpl
    async def get_container_logs(
        self, node: NodeHandle, pod: Pod, container_name: str, options: LogOptions
    ) -> AsyncIterator[LogLine]:
        if pod.container(container_name) is None:
            raise LogsNotAvailable(f"container {container_name!r} is not part of pod {pod.key}")
        self._require_ready()
        paths = self._paths(pod.uid)
        path = paths.log(container_name, previous=options.previous)
        if options.previous:
            missing = f"previous terminated container {container_name!r} in pod {pod.key} not found"
        else:
            missing = f"container {container_name!r} in pod {pod.key} has not started"

        async def finished() -> bool:
            if options.previous:
                return True
            return await self._container_finished(pod.uid, container_name, paths)

        async for line in read_device_log(
            self.link, path, options, finished=finished, missing_message=missing
        ):
            yield line

    async def _container_finished(self, uid: str, name: str, paths: PodPaths) -> bool:
        """Whether the current instance of a container has ended (its writer is gone)."""

        async def exit_recorded(sftp: asyncssh.SFTPClient) -> bool:
            return await sftp.exists(paths.container(name, ".exit"))

        if await self.link.sftp_call(exit_recorded, what="checking a container"):
            return True
        snapshot = self._snapshot
        if snapshot is None:
            return False
        pod = snapshot.pods.get(uid)
        if pod is None or not pod.present:
            return snapshot.started > self._changed.get(uid, float("-inf"))
        line = pod.container(name)
        return line is not None and line.state == "lost"

    # -- sweeping ------------------------------------------------------------------------------------

    async def _snapshot_after(self, since: float) -> Snapshot:
        """A sweep of this connection that started after ``since`` (loop time). Callers asking at
        the same time share the sweep in flight, or the one after it when that one started too
        early: a hundred pods created at once cost a sweep or two, not a hundred status reads."""
        while True:
            snapshot = self._snapshot
            current = snapshot is not None and snapshot.generation == self.link.generation
            if snapshot is not None and current and snapshot.started > since:
                return snapshot
            await self._shared_sweep()

    async def _shared_sweep(self) -> Snapshot:
        """The sweep in flight, or a new one; each is published. One at a time, so snapshots only
        move forward."""
        task = self._sweeping
        if task is None or task.done():
            task = asyncio.get_running_loop().create_task(self._sweep_and_publish(), name="ssh-sweep-once")
            # Every waiter may have been cancelled: the outcome is then nobody's to retrieve.
            task.add_done_callback(lambda t: t.cancelled() or t.exception())
            self._sweeping = task
        # A cancelled waiter must not cancel the sweep the others wait for.
        return await asyncio.shield(task)

    async def _sweep_and_publish(self) -> Snapshot:
        snapshot = await self._sweep()
        self._publish(snapshot)
        return snapshot

    async def _sweep(self) -> Snapshot:
        self._require_ready()
        loop = asyncio.get_running_loop()
        started = loop.time()
        generation = self.link.generation
        result = await self.sweeps.call("sweep", what="the status sweep")
        try:
            pods = status.parse(result.stdout.decode("utf-8", "replace"))
        except status.IncompleteStatus:
            raise DeviceUnreachable(f"{self.options.address}: the status sweep was cut short") from None
        return Snapshot(started=started, generation=generation, pods=pods)

    async def _sweep_loop(self) -> None:
        """Push: one command reads every pod; each pod whose state changed is reported to the core.
        A sweep that gets no answer on a link that looks up means the link is half dead."""
        interval = self.options.status_interval
        while True:
            await self.link.wait_connected()
            generation = self.link.generation
            # Cleared before the sweep: a change made while it runs asks for the next one.
            self._kick.clear()
            try:
                snapshot = await self._shared_sweep()
            except DeviceUnreachable as exc:
                if self.link.connected and self.link.generation == generation:
                    self.link.abort(f"status sweep failed: {exc}")
                await asyncio.sleep(min(interval, 1.0))
                continue
            # A starting container runs within moments, and a container told to stop mostly stops
            # at once: look again soon rather than a whole interval later, so that Running (or
            # the end) is seen when it happens. Only for a while after a change of ours: a slow
            # grace period is followed at the usual pace.
            recent = asyncio.get_running_loop().time() - self._last_change < interval
            wait = min(interval, SOON_RESWEEP_SECONDS) if recent or _starting(snapshot) else interval
            try:
                async with asyncio.timeout(wait):
                    await self._kick.wait()
            except TimeoutError:
                pass

    def _publish(self, snapshot: Snapshot) -> None:
        # Each of our changes is seen by a later sweep or none: entries older than this one go.
        self._changed = {uid: at for uid, at in self._changed.items() if at >= snapshot.started}
        previous = self._snapshot
        self._snapshot = snapshot
        reconnected = snapshot.generation != self._published_generation
        self._published_generation = snapshot.generation
        old = previous.pods if previous is not None else {}
        for uid in sorted(set(old) | set(snapshot.pods)):
            if reconnected or old.get(uid) != snapshot.pods.get(uid):
                self.node.report_status(uid)


def _starting(snapshot: Snapshot) -> bool:
    return any(c.state == "starting" for pod in snapshot.pods.values() for c in pod.containers)


async def _makedirs(sftp: asyncssh.SFTPClient, path: str) -> None:
    """``mkdir -p`` with mode 0700 for each folder created."""
    parts = path.strip("/").split("/")
    current = ""
    for part in parts:
        current = f"{current}/{part}"
        try:
            await sftp.mkdir(current, attrs=asyncssh.SFTPAttrs(permissions=0o700))
        except asyncssh.SFTPFailure:
            if not await sftp.isdir(current):
                raise SetupFailed(f"cannot create the folder {current} on the device") from None
        except asyncssh.SFTPPermissionDenied:
            if not await sftp.isdir(current):
                raise SetupFailed(f"no permission to create the folder {current} on the device") from None


async def _gather_all(operations: Iterable[Awaitable[Any]]) -> None:
    """Await every operation, even when one fails (none is left running on the channel), then
    raise the first failure."""
    results = await asyncio.gather(*operations, return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException):
            raise result


async def _put(sftp: asyncssh.SFTPClient, entry: Entry) -> None:
    if entry.kind == "link":
        await sftp.symlink(entry.target, entry.path)
        return
    async with sftp.open(entry.path, "wb", attrs=asyncssh.SFTPAttrs(permissions=entry.mode)) as file:
        # Both on the open handle, sent together. The SFTP server's umask may have narrowed or kept
        # bits: the chmod sets exactly what was meant.
        await _gather_all([file.write(entry.content), file.chmod(entry.mode)])


@hookimpl
def register_transports(register: Callable[[str, type[Any]], None]) -> None:
    register("ssh", SshTransport)
