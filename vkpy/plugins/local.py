"""The ``local`` transport: every container is a process on this machine.

It is also the model for transport authors. Everything it knows lives in files, so that a restarted
vkpy finds its pods again (``<state dir>/<pod uid>/``)::

    pod.json                 uid, namespace, name, container names: the pod exists on the "device"
    volumes/<volume>/...     ConfigMap and Secret files, emptyDir folders
    <container>.spec.json    argv, env, working dir (0600: the env may hold secrets)
    <container>.log          output in the CRI format; .previous.log before the last restart
    <container>.supervisor   the supervisor process (pid, start time, boot id)
    <container>.pid          the container's main process, written by the supervisor
    <container>.exit         how it ended (JSON), written by the supervisor
    deleting                 the pod is being deleted (holds the grace period)

Each container runs under the supervisor in ``vkpy/plugins/local_supervisor.py``, in its own session,
so containers keep running across a vkpy restart. The transport watches each supervisor with a pidfd
and pushes ``node.report_status`` when one ends, so the core never has to poll.

Crash safety: a pod folder is built under a hidden name, flushed to the disk and renamed into
place, so that even after a power loss it is complete or absent. The files written later describe
live processes, which a power loss ends anyway: they are replaced atomically but not flushed, except
the exit record (see ``write_file_atomic``'s callers). File work and supervisor starts run in the
transport's own small thread pool, never in the event loop's default executor.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import datetime
import functools
import json
import os
import pwd
import re
import secrets
import shutil
import signal
import subprocess
from collections.abc import AsyncIterator, Callable, Collection, Mapping
from pathlib import Path, PurePosixPath
from typing import Any, ParamSpec, TypeVar

import attrs

from vkpy import (
    Container,
    ContainerState,
    DeviceHealth,
    LogLine,
    LogOptions,
    LogsNotAvailable,
    NodeHandle,
    Pod,
    PodRejected,
    PodStatusReport,
    Running,
    Terminated,
    Transport,
    Waiting,
    hookimpl,
)
from vkpy.logs import read_log_file
from vkpy.plugins.local_supervisor import (
    EXIT_SUFFIX,
    GRACE_SUFFIX,
    LOG_SUFFIX,
    PID_SUFFIX,
    PREVIOUS_LOG_SUFFIX,
    SPEC_SUFFIX,
    SUPERVISOR_COMMAND,
    SUPERVISOR_SUFFIX,
    fsync_path,
    read_json,
    write_file_atomic,
    write_json_atomic,
)
from vkpy.plugins.local_supervisor import boot_id as current_boot_id
from vkpy.plugins.local_supervisor import start_ticks as process_start_ticks

_P = ParamSpec("_P")
_T = TypeVar("_T")

DEFAULT_MAX_PODS = 110
POD_FILE = "pod.json"
DELETING_FILE = "deleting"
VOLUMES_DIR = "volumes"
SUPERVISOR_ERRORS = "supervisor.err"
LOST_EXIT_CODE = 137
LOST_REASON = "ContainerStatusUnknown"
BASE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

_KILL_MARGIN_SECONDS = 5.0  # beyond the grace period, before vkpy kills a supervisor itself
# The transport's own threads: its file work waits on the disk and the kernel rather than the CPU,
# and a few in flight let a burst's fsyncs share journal commits.
_THREADS = 4
_POLL_SECONDS = 2.0  # only where pidfds are missing
_UID = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]{0,127}")
_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")


@attrs.frozen
class LocalOptions:
    """The node's ``local:`` section."""

    state_dir: str | None = None
    """Where pods live; default ``$XDG_STATE_HOME/vkpy/local/<node name>``."""
    max_pods: int | None = attrs.field(
        default=None, validator=attrs.validators.optional(attrs.validators.gt(0))
    )
    """The pod capacity to advertise and enforce; default 110, as the kubelet."""


def default_state_dir(node_name: str) -> Path:
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "vkpy" / "local" / node_name


def volume_env_name(volume_name: str) -> str:
    """The variable through which a container finds a mounted volume's folder."""
    return "VKPY_VOLUME_" + re.sub(r"[^A-Z0-9]", "_", volume_name.upper())


@hookimpl
def register_transports(register: Callable[[str, type[Any]], None]) -> None:
    register("local", LocalTransport)


# --- A container's files and processes -------------------------------------------------------------


@attrs.frozen
class ContainerFiles:
    """Where one container's files live in its pod folder (the names are local_supervisor's)."""

    pod_dir: Path
    name: str

    def _file(self, suffix: str) -> Path:
        return self.pod_dir / f"{self.name}{suffix}"

    @property
    def spec(self) -> Path:
        return self._file(SPEC_SUFFIX)

    @property
    def log(self) -> Path:
        return self._file(LOG_SUFFIX)

    @property
    def previous_log(self) -> Path:
        return self._file(PREVIOUS_LOG_SUFFIX)

    @property
    def supervisor(self) -> Path:
        return self._file(SUPERVISOR_SUFFIX)

    @property
    def pid(self) -> Path:
        return self._file(PID_SUFFIX)

    @property
    def exit(self) -> Path:
        return self._file(EXIT_SUFFIX)

    @property
    def grace(self) -> Path:
        return self._file(GRACE_SUFFIX)


@functools.cache
def _has_procfs() -> bool:
    return os.path.exists("/proc/self/stat")


@attrs.frozen
class ProcessId:
    """A process, identified so that a recycled pid (or a reboot) is not mistaken for it."""

    pid: int
    start_ticks: int | None = None
    boot_id: str | None = None

    @classmethod
    def of(cls, pid: int) -> ProcessId:
        return cls(pid=pid, start_ticks=process_start_ticks(pid), boot_id=current_boot_id())

    @classmethod
    def from_json(cls, value: dict[str, Any] | None) -> ProcessId | None:
        if value is None or not isinstance(value.get("pid"), int):
            return None
        return cls(pid=value["pid"], start_ticks=value.get("start_ticks"), boot_id=value.get("boot_id"))

    def to_json(self) -> dict[str, Any]:
        return {"pid": self.pid, "start_ticks": self.start_ticks, "boot_id": self.boot_id}

    def alive(self) -> bool:
        if not _has_procfs():  # trust the pid alone
            try:
                os.kill(self.pid, 0)
            except ProcessLookupError:
                return False
            except PermissionError:
                return True
            return True
        if self.boot_id is not None and self.boot_id != current_boot_id():
            return False
        ticks = process_start_ticks(self.pid)
        return ticks is not None and (self.start_ticks is None or ticks == self.start_ticks)


# --- Reading a container's state from its files ---------------------------------------------------


def _time(value: Any) -> datetime.datetime | None:
    return datetime.datetime.fromisoformat(value) if isinstance(value, str) else None


@attrs.frozen
class _Probe:
    """What one container's files and live processes say about it."""

    exit: dict[str, Any] | None
    supervisor: ProcessId | None
    alive: bool
    main: dict[str, Any] | None

    @property
    def started(self) -> bool:
        return self.exit is not None or self.supervisor is not None

    @property
    def succeeded(self) -> bool:
        return self.exit is not None and self.exit.get("exit_code") == 0

    def state(self, waiting_reason: str) -> ContainerState:
        if self.exit is not None:
            return Terminated(
                exit_code=int(self.exit.get("exit_code", -1)),
                reason=str(self.exit.get("reason", "")),
                message=str(self.exit.get("message", "")),
                started_at=_time(self.exit.get("started_at")),
                finished_at=_time(self.exit.get("finished_at")),
            )
        if self.alive:
            started_at = _time((self.main or {}).get("started_at"))
            return Running(started_at=started_at) if started_at else Waiting("ContainerCreating")
        if self.supervisor is not None:
            # The supervisor vanished without an exit record: SIGKILLed or the machine rebooted.
            # Reported as the kubelet reports a container the runtime lost.
            return Terminated(
                exit_code=LOST_EXIT_CODE,
                reason=LOST_REASON,
                message=f"the supervisor (pid {self.supervisor.pid}) ended without recording an exit",
            )
        return Waiting(waiting_reason)


def _probe(files: ContainerFiles) -> _Probe:
    exit_record = read_json(files.exit)
    supervisor = ProcessId.from_json(read_json(files.supervisor))
    alive = exit_record is None and supervisor is not None and supervisor.alive()
    if supervisor is not None and exit_record is None and not alive:
        exit_record = read_json(files.exit)  # it may have ended between the two looks
    main = read_json(files.pid) if supervisor is not None else None
    return _Probe(exit=exit_record, supervisor=supervisor, alive=alive, main=main)


def _main_process(probe: _Probe) -> ProcessId | None:
    """The container's main process when it outlived its supervisor (the pid leads its group)."""
    process = ProcessId.from_json(probe.main)
    return process if process is not None and process.alive() else None


def _signal_group(process: ProcessId, sig: signal.Signals) -> None:
    if process.alive():
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, sig)


# --- Writing a pod ---------------------------------------------------------------------------------


def _check_name(kind: str, name: str, pattern: re.Pattern[str]) -> None:
    # Names become file names: anything else could escape the pod folder or collide.
    if not pattern.fullmatch(name):
        raise PodRejected(f"{kind} name {name!r} is not valid here", reason="InvalidName")


def _volume_file_path(volume: str, path: str) -> PurePosixPath:
    relative = PurePosixPath(path)
    if not path or "\0" in path or relative.is_absolute() or ".." in relative.parts:
        raise PodRejected(
            f"volume {volume!r}: file path {path!r} must be relative and stay inside the volume",
            reason="InvalidVolumePath",
        )
    return relative


def _validate(pod: Pod) -> None:
    _check_name("pod uid", pod.uid, _UID)
    for container in (*pod.init_containers, *pod.containers):
        _check_name("container", container.name, _DNS_LABEL)
    for volume in pod.volumes:
        _check_name("volume", volume.name, _DNS_LABEL)
        for file in volume.files:
            _volume_file_path(volume.name, file.path)


def _file_mode(secret: bool, requested: int) -> int:
    # Only the owner's execute bit of the requested mode is kept (scripts shipped in a ConfigMap).
    executable = requested & 0o100
    return (0o600 if secret else 0o644) | executable


def _create_file(path: Path, data: bytes, mode: int | None = None) -> None:
    """A new file of a pod folder being built. Nobody reads that folder before it is complete, so
    no temporary name is needed; _sync_tree flushes it later, with the rest."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(path, flags, 0o600)
    try:
        if mode is not None:
            os.fchmod(fd, mode)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
    finally:
        os.close(fd)


def _json_bytes(value: dict[str, Any]) -> bytes:
    return json.dumps(value, sort_keys=True).encode() + b"\n"


def _sync_tree(root: Path) -> None:
    """Flush every file of a folder about to be published, then every folder (their entries), so
    that the rename which publishes it cannot reach the disk before its content."""
    folders = []
    for folder, _, names in os.walk(root):
        folders.append(folder)
        for name in names:
            fsync_path(os.path.join(folder, name))
    for folder in reversed(folders):
        fsync_path(folder)


def _write_volumes(pod_dir: Path, pod: Pod) -> None:
    if not pod.volumes:
        return  # no folder to create, nor to flush
    root = pod_dir / VOLUMES_DIR
    root.mkdir(mode=0o700)
    for volume in pod.volumes:
        folder = root / volume.name
        folder.mkdir(mode=0o700)
        for file in volume.files:
            target = folder / _volume_file_path(volume.name, file.path)
            target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            _create_file(target, file.content, _file_mode(volume.secret, file.mode))


@functools.cache  # reads the user database (NSS): once, not for every container
def _home() -> str:
    return pwd.getpwuid(os.getuid()).pw_dir


def _container_env(pod: Pod, container: Container, final_dir: Path) -> dict[str, str]:
    # A fresh environment: vkpy's own (KUBECONFIG, credentials...) never reaches a container.
    env = {
        "PATH": BASE_PATH,
        "HOME": _home(),
        "LANG": "C.UTF-8",
        "HOSTNAME": pod.name,
    }
    # No mount namespace for a plain process: each mounted volume is announced by a variable.
    for mount in container.volume_mounts:
        env[volume_env_name(mount.name)] = str(final_dir / VOLUMES_DIR / mount.name)
    env.update(container.env_dict)
    return env


def _write_pod(state_dir: Path, pod: Pod, max_pods: int) -> bool:
    """Lay out a new pod folder; False when it already exists.

    The folder is built under a hidden name, flushed to the disk (every file, then every folder)
    and only then renamed into place, so that even after a power loss a pod folder is complete or
    absent; a building folder left over is removed at start. The rename itself is not flushed: a
    pod lost with it is absent, which the core handles (it creates the pod again, or reports it
    lost if it had started)."""
    final_dir = state_dir / pod.uid
    if final_dir.exists():
        return False
    count = _pod_count(state_dir)
    if count >= max_pods:
        raise PodRejected(f"the node already holds {count} pods (max_pods {max_pods})", reason="OutOfpods")
    building = state_dir / f".creating-{pod.uid}-{secrets.token_hex(4)}"
    building.mkdir(mode=0o700)
    try:
        meta = {
            "uid": pod.uid,
            "namespace": pod.namespace,
            "name": pod.name,
            "init_containers": [c.name for c in pod.init_containers],
            "containers": [c.name for c in pod.containers],
            "created_at": datetime.datetime.now(datetime.UTC).isoformat(),
        }
        _create_file(building / POD_FILE, _json_bytes(meta))
        for container in (*pod.init_containers, *pod.containers):
            spec = {
                "argv": list(container.argv),
                "env": _container_env(pod, container, final_dir),
                "working_dir": container.working_dir or str(final_dir),
            }
            _create_file(ContainerFiles(building, container.name).spec, _json_bytes(spec))
        _write_volumes(building, pod)
        _sync_tree(building)
        building.rename(final_dir)
    except BaseException as exc:
        shutil.rmtree(building, ignore_errors=True)
        if isinstance(exc, OSError) and final_dir.exists():  # created meanwhile by another call
            return False
        raise
    return True


def _pod_count(state_dir: Path) -> int:
    """The pods held, for max_pods: counted from the folder's entries alone (no stat each), as
    this runs for every pod created. Published pod folders are complete, so each holds a pod."""
    try:
        with os.scandir(state_dir) as entries:
            return sum(1 for e in entries if not e.name.startswith(".") and e.is_dir(follow_symlinks=False))
    except FileNotFoundError:
        return 0


def _pod_uids(state_dir: Path) -> list[str]:
    try:
        entries = list(state_dir.iterdir())
    except FileNotFoundError:
        return []
    return sorted(e.name for e in entries if not e.name.startswith(".") and (e / POD_FILE).is_file())


def _spawn_supervisor(files: ContainerFiles) -> tuple[subprocess.Popen[bytes], ProcessId, int]:
    """Start a container's supervisor; also returns a pipe that becomes readable once it runs."""
    errors = os.open(
        files.pod_dir / SUPERVISOR_ERRORS, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600
    )
    ready_read, ready_write = os.pipe()
    try:
        process = subprocess.Popen(
            [*SUPERVISOR_COMMAND, str(files.pod_dir), files.name, f"--ready-fd={ready_write}"],
            cwd=files.pod_dir,
            env={"LANG": "C.UTF-8"},  # the supervisor imports the standard library only
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=errors,
            pass_fds=(ready_write,),
            start_new_session=True,  # out of vkpy's session: it survives vkpy's stop or crash
        )
    except BaseException:
        os.close(ready_read)
        raise
    finally:
        os.close(errors)
        os.close(ready_write)
    identity = ProcessId.of(process.pid)
    # Not durable: a power loss ends the supervisor anyway, and a record lost with it only makes
    # the container look never started. (Flushing the file alone, as before, did not prevent
    # that either: its folder entry was not flushed.)
    write_json_atomic(files.supervisor, identity.to_json(), durable=False)
    return process, identity, ready_read


# --- The transport ---------------------------------------------------------------------------------


@attrs.define(eq=False)
class _Watch:
    """A supervisor being watched until it ends."""

    uid: str
    container: str
    process: ProcessId
    popen: subprocess.Popen[bytes] | None = None
    gone: asyncio.Event = attrs.Factory(asyncio.Event)
    pidfd: int | None = None
    ready: int | None = None
    poller: asyncio.Task[None] | None = None


class LocalTransport(Transport):
    """Runs pods as local processes; see the module docstring and docs/transports/local.md."""

    name = "local"
    options_class = LocalOptions
    pushes_status = True  # a pidfd per supervisor tells us when a container starts and ends

    def __init__(self, node: NodeHandle, options: LocalOptions | None = None) -> None:
        super().__init__(node, options or LocalOptions())
        self.options: LocalOptions
        configured = self.options.state_dir
        self.state_dir = Path(configured).expanduser() if configured else default_state_dir(node.name)
        self._watches: dict[tuple[str, str], _Watch] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._drivers: dict[str, asyncio.Task[None]] = {}
        self._deletions: dict[str, asyncio.Task[None]] = {}
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None

    # Paths and bookkeeping

    def pod_dir(self, uid: str) -> Path:
        _check_name("pod uid", uid, _UID)
        return self.state_dir / uid

    def _files(self, uid: str, container: str) -> ContainerFiles:
        _check_name("container", container, _DNS_LABEL)
        return ContainerFiles(self.pod_dir(uid), container)

    async def _in_thread(self, work: Callable[_P, _T], /, *args: _P.args, **kwargs: _P.kwargs) -> _T:
        """Run blocking file or process work in the transport's own threads. The loop's default
        executor is shared with the rest of vkpy: a burst's fsyncs and spawns must not queue in
        front of other work there, nor behind it."""
        if self._pool is None:
            self._pool = concurrent.futures.ThreadPoolExecutor(_THREADS, thread_name_prefix="vkpy-local")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, functools.partial(work, *args, **kwargs))

    def _lock(self, uid: str) -> asyncio.Lock:
        return self._locks.setdefault(uid, asyncio.Lock())

    def _task(self, registry: dict[str, asyncio.Task[None]], uid: str, work: Any) -> None:
        task = asyncio.get_running_loop().create_task(work, name=f"local:{uid}")
        registry[uid] = task

        def done(t: asyncio.Task[None]) -> None:
            if registry.get(uid) is t:
                del registry[uid]
            if not t.cancelled() and t.exception() is not None:
                self.node.log.error("local.task_failed", pod_uid=uid, error=repr(t.exception()))

        task.add_done_callback(done)

    # Node hooks

    @hookimpl
    async def node_start(self, node: NodeHandle) -> None:
        await self._in_thread(self._prepare_state_dir)
        for uid in await self._in_thread(_pod_uids, self.state_dir):
            await self._adopt(uid)

    def _prepare_state_dir(self) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.state_dir.chmod(0o700)
        # Pods half-created or half-removed when a previous vkpy stopped.
        for leftover in (*self.state_dir.glob(".creating-*"), *self.state_dir.glob(".deleted-*")):
            shutil.rmtree(leftover, ignore_errors=True)

    @hookimpl
    async def node_stop(self, node: NodeHandle) -> None:
        # Containers keep running: the next vkpy adopts them. Only our watching stops.
        tasks = [*self._drivers.values(), *self._deletions.values()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for watch in list(self._watches.values()):
            self._unwatch(watch)
        self._watches.clear()
        pool, self._pool = self._pool, None
        if pool is not None:
            # Work already running is waited for: nothing touches the state folder once the node
            # has stopped. Queued work is dropped (its callers were cancelled above).
            await asyncio.to_thread(pool.shutdown, wait=True, cancel_futures=True)

    @hookimpl
    async def node_capacity(self, node: NodeHandle) -> Mapping[str, str]:
        memory = await self._in_thread(_memory_kib)
        capacity = {"cpu": str(os.cpu_count() or 1), "pods": str(self.options.max_pods or DEFAULT_MAX_PODS)}
        if memory is not None:
            capacity["memory"] = f"{memory}Ki"
        return capacity

    @hookimpl
    async def node_health(self, node: NodeHandle) -> DeviceHealth:
        if await self._in_thread(_writable_dir, self.state_dir):
            return DeviceHealth(reachable=True)
        return DeviceHealth(
            reachable=False,
            reason="StateDirNotWritable",
            message=f"{self.state_dir} is not a writable folder",
        )

    @hookimpl
    async def list_pods(self, node: NodeHandle) -> Collection[str]:
        return await self._in_thread(_pod_uids, self.state_dir)

    # Pod hooks

    @hookimpl
    async def create_pod(self, node: NodeHandle, pod: Pod) -> None:
        _validate(pod)
        max_pods = self.options.max_pods or DEFAULT_MAX_PODS
        async with self._lock(pod.uid):
            created = await self._in_thread(_write_pod, self.state_dir, pod, max_pods)
        if created:
            node.log.info("local.pod_created", pod=pod.key, pod_uid=pod.uid)
        self._ensure_driver(pod.uid)

    @hookimpl
    async def update_pod(self, node: NodeHandle, pod: Pod) -> None:
        # A running process has nothing to update: a new image or deadline means nothing here.
        node.log.debug("local.pod_update_ignored", pod=pod.key)

    @hookimpl
    async def delete_pod(self, node: NodeHandle, pod: Pod, grace_period_seconds: int) -> None:
        await self._delete(pod.uid, grace_period_seconds)

    @hookimpl
    async def restart_container(self, node: NodeHandle, pod: Pod, container_name: str) -> None:
        if pod.container(container_name) is None:
            node.log.warning("local.restart_unknown_container", pod=pod.key, container=container_name)
            return
        files = self._files(pod.uid, container_name)
        async with self._lock(pod.uid):
            if not await self._in_thread(_prepare_restart, files):
                return
            await self._start(pod.uid, container_name)
        node.log.info("local.container_restarted", pod=pod.key, container=container_name)
        self._ensure_driver(pod.uid)  # a restarted init container lets the sequence go on

    @hookimpl
    async def get_pod_status(self, node: NodeHandle, pod: Pod) -> PodStatusReport | None:
        return await self._in_thread(_read_status, self.pod_dir(pod.uid))

    @hookimpl
    async def get_container_logs(
        self, node: NodeHandle, pod: Pod, container_name: str, options: LogOptions
    ) -> AsyncIterator[LogLine]:
        if pod.container(container_name) is None:
            raise LogsNotAvailable(f"container {container_name!r} is not part of pod {pod.key}")
        files = self._files(pod.uid, container_name)
        key = (pod.uid, container_name)
        path = files.previous_log if options.previous else files.log
        if not await self._in_thread(path.is_file):
            if options.previous:
                raise LogsNotAvailable(
                    f"previous terminated container {container_name!r} in pod {pod.key} not found"
                )
            raise LogsNotAvailable(f"container {container_name!r} in pod {pod.key} has not started")

        def finished() -> bool:
            # A previous instance is over by definition; the current one while no supervisor runs.
            watch = None if options.previous else self._watches.get(key)
            return watch is None or watch.gone.is_set()

        async for line in read_log_file(path, options, finished=finished):
            yield line

    # Running containers

    def _ensure_driver(self, uid: str) -> None:
        if uid not in self._drivers and uid not in self._deletions:
            self._task(self._drivers, uid, self._drive(uid))

    async def _drive(self, uid: str) -> None:
        """Start the pod's containers: init containers one by one, each after the previous one
        succeeded, then the app containers. Works from the files alone, so it also resumes a pod
        after a vkpy restart; a failed init container stops it (restart_container resumes it)."""
        pod_dir = self.pod_dir(uid)
        meta = await self._in_thread(read_json, pod_dir / POD_FILE)
        if meta is None:
            return
        for name in meta["init_containers"]:
            while True:
                async with self._lock(uid):
                    probe = await self._probe_for_start(uid, name)
                    if probe is None:
                        return
                    if probe.exit is not None or (probe.started and not probe.alive):
                        if not probe.succeeded:
                            return
                        break
                    if not probe.started:
                        await self._start(uid, name)
                        watch = self._watches[(uid, name)]
                    else:  # running: started before, perhaps by the previous vkpy
                        assert probe.supervisor is not None
                        watch = self._watch(uid, name, probe.supervisor)
                await watch.gone.wait()
        async with self._lock(uid):
            for name in meta["containers"]:
                probe = await self._probe_for_start(uid, name)
                if probe is None:
                    return
                if not probe.started:
                    await self._start(uid, name)

    async def _probe_for_start(self, uid: str, name: str) -> _Probe | None:
        """The container's probe, or None when the pod is gone or being deleted."""
        files = self._files(uid, name)

        def look() -> _Probe | None:
            if not (files.pod_dir / POD_FILE).exists() or (files.pod_dir / DELETING_FILE).exists():
                return None
            return _probe(files)

        return await self._in_thread(look)

    async def _start(self, uid: str, name: str) -> None:
        """Start a container's supervisor; the caller holds the pod's lock."""
        process, identity, ready = await self._in_thread(_spawn_supervisor, self._files(uid, name))
        watch = self._watch(uid, name, identity, process)
        watch.ready = ready
        asyncio.get_running_loop().add_reader(ready, self._on_started, watch)
        self.node.log.info("local.container_starting", pod_uid=uid, container=name, supervisor=process.pid)

    def _on_started(self, watch: _Watch) -> None:
        # The ready pipe is readable once the program runs (or at EOF if the supervisor failed).
        self._close_ready(watch)
        self.node.report_status(watch.uid)

    def _close_ready(self, watch: _Watch) -> None:
        if watch.ready is not None:
            asyncio.get_running_loop().remove_reader(watch.ready)
            os.close(watch.ready)
            watch.ready = None

    # Watching supervisors

    def _watch(
        self, uid: str, name: str, process: ProcessId, popen: subprocess.Popen[bytes] | None = None
    ) -> _Watch:
        key = (uid, name)
        existing = self._watches.get(key)
        if existing is not None and existing.process == process:
            return existing
        watch = _Watch(uid=uid, container=name, process=process, popen=popen)
        self._watches[key] = watch
        loop = asyncio.get_running_loop()
        try:
            pidfd = os.pidfd_open(process.pid)
        except ProcessLookupError:
            loop.call_soon(self._on_exit, watch)
            return watch
        except (AttributeError, OSError):  # no pidfd on this system: a slow poll will do
            watch.poller = loop.create_task(self._poll_exit(watch))
            return watch
        # The pid may have been recycled before the pidfd pinned it (procfs reads do not block).
        if not process.alive():
            os.close(pidfd)
            loop.call_soon(self._on_exit, watch)
            return watch
        watch.pidfd = pidfd
        loop.add_reader(pidfd, self._on_exit, watch)
        return watch

    async def _poll_exit(self, watch: _Watch) -> None:
        while True:
            await asyncio.sleep(_POLL_SECONDS)
            if not await self._in_thread(watch.process.alive):
                break
        self._on_exit(watch)

    def _unwatch(self, watch: _Watch) -> None:
        self._close_ready(watch)
        if watch.pidfd is not None:
            asyncio.get_running_loop().remove_reader(watch.pidfd)
            os.close(watch.pidfd)
            watch.pidfd = None
        if watch.poller is not None and watch.poller is not asyncio.current_task():
            watch.poller.cancel()

    def _on_exit(self, watch: _Watch) -> None:
        self._unwatch(watch)
        if watch.popen is not None:
            watch.popen.poll()  # reap our own child; adopted supervisors are reaped by init
        if self._watches.get((watch.uid, watch.container)) is watch:
            del self._watches[(watch.uid, watch.container)]
        watch.gone.set()
        self.node.log.info("local.container_ended", pod_uid=watch.uid, container=watch.container)
        self.node.report_status(watch.uid)

    async def _adopt(self, uid: str) -> None:
        """Take over a pod found on disk: watch its live supervisors, resume its start sequence or
        its deletion."""
        pod_dir = self.pod_dir(uid)

        def scan() -> tuple[int | None, list[tuple[str, ProcessId]]]:
            meta = read_json(pod_dir / POD_FILE) or {}
            live = []
            for name in [*meta.get("init_containers", []), *meta.get("containers", [])]:
                probe = _probe(ContainerFiles(pod_dir, name))
                if probe.alive and probe.supervisor is not None:
                    live.append((name, probe.supervisor))
            deleting = read_json(pod_dir / DELETING_FILE)
            return (int(deleting.get("grace", 0)) if deleting is not None else None), live

        grace, live = await self._in_thread(scan)
        for name, process in live:
            self._watch(uid, name, process)
        self.node.log.info("local.pod_adopted", pod_uid=uid, running=[name for name, _ in live])
        if grace is not None:
            await self._delete(uid, grace)
        else:
            self._ensure_driver(uid)

    # Deleting

    async def _delete(self, uid: str, grace: int) -> None:
        async with self._lock(uid):
            if uid in self._deletions:  # already on its way out
                return
            found = await self._in_thread(_begin_delete, self.pod_dir(uid), grace)
            if found is None:
                return
            driver = self._drivers.pop(uid, None)
            if driver is not None:
                driver.cancel()
            live, orphans = found
            for name, process in live:
                watch = self._watch(uid, name, process)
                # Through the pidfd when there is one: it cannot hit a recycled pid.
                if watch.pidfd is not None:
                    with contextlib.suppress(ProcessLookupError):
                        signal.pidfd_send_signal(watch.pidfd, signal.SIGTERM)
                elif process.alive():
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(process.pid, signal.SIGTERM)
            self._task(self._deletions, uid, self._finish_delete(uid, grace, orphans))
        self.node.log.info("local.pod_deleting", pod_uid=uid, grace_period_seconds=grace)

    async def _finish_delete(self, uid: str, grace: int, orphans: list[ProcessId]) -> None:
        """Wait for the supervisors (which enforce the grace period) and orphaned processes to end,
        then remove the pod folder."""
        watches = [w for (pod_uid, _), w in self._watches.items() if pod_uid == uid]
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace

        async def orphan_gone(process: ProcessId) -> None:
            while await self._in_thread(process.alive):
                if loop.time() > deadline:
                    await self._in_thread(_signal_group, process, signal.SIGKILL)
                await asyncio.sleep(0.2)

        waits = [*(w.gone.wait() for w in watches), *(orphan_gone(o) for o in orphans)]
        try:
            async with asyncio.timeout(grace + _KILL_MARGIN_SECONDS):
                await asyncio.gather(*waits)
        except TimeoutError:
            # A supervisor failed to end its container in time: end both ourselves.
            self.node.log.warning("local.delete_forced", pod_uid=uid)
            await self._in_thread(_kill_pod, self.pod_dir(uid), [w.process for w in watches])
        await self._in_thread(_remove_pod_dir, self.state_dir, uid)
        self._locks.pop(uid, None)
        self.node.log.info("local.pod_deleted", pod_uid=uid)
        self.node.report_status(uid)


# --- File work run in threads ----------------------------------------------------------------------


def _writable_dir(path: Path) -> bool:
    return path.is_dir() and os.access(path, os.W_OK)


def _memory_kib() -> int | None:
    try:
        with open("/proc/meminfo", "rb") as meminfo:
            for line in meminfo:
                if line.startswith(b"MemTotal:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def _container_names(pod_dir: Path) -> list[str]:
    meta = read_json(pod_dir / POD_FILE) or {}
    return [*meta.get("init_containers", []), *meta.get("containers", [])]


def _read_status(pod_dir: Path) -> PodStatusReport | None:
    meta = read_json(pod_dir / POD_FILE)
    if meta is None:
        return None
    init_states: dict[str, ContainerState] = {}
    message = ""
    initialized = True
    for name in meta["init_containers"]:
        state = _probe(ContainerFiles(pod_dir, name)).state("PodInitializing")
        init_states[name] = state
        if initialized and isinstance(state, Terminated) and not state.succeeded:
            message = f"init container {name!r} failed with exit code {state.exit_code}"
        initialized = initialized and isinstance(state, Terminated) and state.succeeded
    waiting = "ContainerCreating" if initialized else "PodInitializing"
    states = {name: _probe(ContainerFiles(pod_dir, name)).state(waiting) for name in meta["containers"]}
    return PodStatusReport(containers=states, init_containers=init_states, message=message)


def _prepare_restart(files: ContainerFiles) -> bool:
    """Clear a terminated container's files for a new run; False when it must not restart."""
    if not (files.pod_dir / POD_FILE).exists() or (files.pod_dir / DELETING_FILE).exists():
        return False
    probe = _probe(files)
    if probe.alive:
        return False
    orphan = _main_process(probe)
    if orphan is not None:  # a lost container still running: it must not run twice
        _signal_group(orphan, signal.SIGKILL)
    if files.log.exists():
        files.log.replace(files.previous_log)
    for path in (files.exit, files.pid, files.supervisor, files.grace):
        path.unlink(missing_ok=True)
    return True


def _begin_delete(pod_dir: Path, grace: int) -> tuple[list[tuple[str, ProcessId]], list[ProcessId]] | None:
    """Mark the pod as being deleted, tell each supervisor its grace period and stop lost
    containers. Returns the live supervisors and the lost containers' processes; None when there
    is no such pod."""
    if not (pod_dir / POD_FILE).exists():
        return None
    # Neither this nor the grace files are durable: after a power loss the containers are gone and
    # the core, which still has the pod's deletion (or no pod at all), deletes it again.
    write_json_atomic(pod_dir / DELETING_FILE, {"grace": grace}, durable=False)
    live: list[tuple[str, ProcessId]] = []
    orphans: list[ProcessId] = []
    for name in _container_names(pod_dir):
        files = ContainerFiles(pod_dir, name)
        probe = _probe(files)
        if probe.alive and probe.supervisor is not None:
            write_file_atomic(files.grace, f"{grace}\n".encode(), durable=False)
            live.append((name, probe.supervisor))
        elif probe.exit is None and (orphan := _main_process(probe)) is not None:
            _signal_group(orphan, signal.SIGTERM)  # lost container: no supervisor to do it
            orphans.append(orphan)
    return live, orphans


def _kill_pod(pod_dir: Path, supervisors: list[ProcessId]) -> None:
    for supervisor in supervisors:
        if supervisor.alive():
            with contextlib.suppress(ProcessLookupError):
                os.kill(supervisor.pid, signal.SIGKILL)
    for name in _container_names(pod_dir):
        main = ProcessId.from_json(read_json(ContainerFiles(pod_dir, name).pid))
        if main is not None:
            _signal_group(main, signal.SIGKILL)


def _remove_pod_dir(state_dir: Path, uid: str) -> None:
    # Renamed first: the pod disappears at once for get_pod_status, whatever rmtree takes.
    trash = state_dir / f".deleted-{uid}-{secrets.token_hex(4)}"
    try:
        (state_dir / uid).rename(trash)
    except FileNotFoundError:
        return
    shutil.rmtree(trash, ignore_errors=True)
