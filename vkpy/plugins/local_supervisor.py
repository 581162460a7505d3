"""The supervisor of one container of the ``local`` transport, and the files it shares with it.

The supervisor of ``<container>`` in ``<pod folder>`` runs detached from vkpy (in its own session),
so containers outlive a vkpy restart. It runs the program described in ``<container>.spec.json``,
writes its output to ``<container>.log`` in the CRI format, its pid to ``<container>.pid`` and, when
it ends, its exit to ``<container>.exit``. SIGTERM stops the container as the kubelet does: SIGTERM
to its process group, SIGKILL once the grace period (read from ``<container>.grace``) is over.

The files are the whole contract with the transport, which may be a later vkpy process: keep them
compatible.

One supervisor starts for every container, so its start-up is a cost paid per pod: this module
imports a few standard modules only (not attrs, typing, pathlib, argparse, nor the vkpy package),
and the transport starts it with :data:`SUPERVISOR_COMMAND` (isolated mode, no site-packages). A
supervisor then uses about a third of the CPU it did through ``python -m``, which imports vkpy,
pluggy and attrs (50-70 ms instead of 120-230 ms for a container running ``true``, measured on a
2-core machine). ``python -m vkpy.plugins.local_supervisor <pod folder> <container>`` still works.
"""

from __future__ import annotations

import contextlib
import datetime
import functools
import json
import os
import signal
import subprocess
import sys
import threading

# typing costs a supervisor's start ~7 ms of CPU: its names are needed by the type checker only.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import IO, Any

    StrPath = str | os.PathLike[str]

DEFAULT_GRACE_SECONDS = 30.0
MAX_RECORD_BYTES = 16 * 1024  # containerd's limit: longer lines are split into P records
DRAIN_SECONDS = 2.0  # how long output is still read once the container's processes are killed

# Exit codes for a program that could not be started, as container runtimes report them.
EXIT_CANNOT_RUN = 128
EXIT_NOT_FOUND = 127
EXIT_NOT_EXECUTABLE = 126

# A container's files in its pod folder are named ``<container><suffix>``.
SPEC_SUFFIX = ".spec.json"
"""What to run: argv, env, working_dir (written by the transport; may hold secrets)."""
LOG_SUFFIX = ".log"
PREVIOUS_LOG_SUFFIX = ".previous.log"
SUPERVISOR_SUFFIX = ".supervisor"
"""The supervisor's identity (written by the transport once it has started it)."""
PID_SUFFIX = ".pid"
"""The container's main process and its start time (written by the supervisor)."""
EXIT_SUFFIX = ".exit"
"""How the container ended (written by the supervisor, last)."""
GRACE_SUFFIX = ".grace"
"""The grace period for the next SIGTERM, in seconds (written by the transport)."""

_HERE = os.path.dirname(os.path.abspath(__file__))
SUPERVISOR_COMMAND = (
    sys.executable,
    *("-I", "-S"),  # no site-packages, .pth hooks, PYTHON* variables, nor the pod folder on sys.path
    "-c",
    # Imported as a top-level module from its own folder, appended after the standard library so
    # that no module there can shadow a standard one. Run as a script it would be compiled at every
    # start (5 ms); imported, its cached bytecode is used.
    f"import sys; sys.path.append({_HERE!r}); import local_supervisor; sys.exit(local_supervisor.main())",
)
"""The command before ``<pod folder> <container> [--ready-fd=N]`` that starts a supervisor."""


def now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def container_file(pod_dir: StrPath, container: str, suffix: str) -> str:
    return os.path.join(pod_dir, container + suffix)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def fsync_path(path: StrPath) -> None:
    """Flush a file or a folder (its entries) to the disk."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_file_atomic(path: StrPath, data: bytes, *, durable: bool, mode: int = 0o600) -> None:
    """Replace ``path`` with ``data`` so that a reader sees the old or the new file, never half.

    ``durable`` also makes the new file survive a power loss (a file and a folder fsync). Without
    it, a power loss may leave the new file empty or missing: :func:`read_json` then answers None.
    Each caller says which it needs."""
    path = os.fspath(path)
    folder, name = os.path.split(path)
    tmp = os.path.join(folder, f".{name}.{os.getpid()}.{threading.get_ident()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, mode)
    try:
        try:
            _write_all(fd, data)
            if durable:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    if durable:
        fsync_path(folder or ".")


def write_json_atomic(path: StrPath, value: dict[str, Any], *, durable: bool) -> None:
    write_file_atomic(path, json.dumps(value, sort_keys=True).encode() + b"\n", durable=durable)


def read_json(path: StrPath) -> dict[str, Any] | None:
    """The JSON object in ``path``, or None when it is missing or unreadable."""
    try:
        with open(path, "rb") as file:
            value = json.loads(file.read())
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


@functools.cache  # it cannot change while this process runs
def boot_id() -> str | None:
    try:
        with open("/proc/sys/kernel/random/boot_id") as file:
            return file.read().strip()
    except OSError:
        return None


def start_ticks(pid: int) -> int | None:
    """The process's start time in clock ticks since boot, or None when it is gone or a zombie."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as file:
            stat = file.read()
    except OSError:
        return None
    # The command name (field 2) may contain spaces and parentheses: split after the last ')'.
    fields = stat[stat.rfind(b")") + 2 :].split()
    if len(fields) < 20 or fields[0] == b"Z":
        return None
    return int(fields[19])


def process_record(pid: int) -> dict[str, Any]:
    """A process as the files identify it, so that a recycled pid (or a reboot) is not mistaken
    for it: read back by ``ProcessId.from_json`` in the transport."""
    return {"pid": pid, "start_ticks": start_ticks(pid), "boot_id": boot_id()}


def _iso(time: datetime.datetime | None) -> str | None:
    return time.isoformat() if time is not None else None


def _exit_record(
    exit_code: int,
    reason: str,
    message: str,
    started_at: datetime.datetime | None,
    finished_at: datetime.datetime,
) -> dict[str, Any]:
    return {
        "exit_code": exit_code,
        "reason": reason,
        "message": message,
        "started_at": _iso(started_at),
        "finished_at": _iso(finished_at),
    }


def cri_records(time: datetime.datetime, stream: str, data: bytes) -> bytes:
    """CRI records for ``data`` read at ``time``: an ``F`` record per complete line, a ``P`` record
    for a trailing piece and for each 16 KiB piece of a longer line.

    The format of ``vkpy.logs.format_cri_line`` (the tests hold them equal), written here again so
    that a supervisor does not import vkpy."""
    t = time.astimezone(datetime.UTC) if time.tzinfo is not None else time
    # Fixed width (nine fraction digits, as containerd writes) keeps files sortable and greppable.
    prefix = f"{t:%Y-%m-%dT%H:%M:%S}.{t.microsecond:06d}000Z {stream}".encode("ascii")
    out = []
    for line in data.splitlines(keepends=True):
        while len(line) > MAX_RECORD_BYTES:
            out.append(prefix + b" P " + line[:MAX_RECORD_BYTES] + b"\n")
            line = line[MAX_RECORD_BYTES:]
        if line.endswith(b"\n"):
            out.append(prefix + b" F " + line)
        elif line:
            out.append(prefix + b" P " + line + b"\n")
    return b"".join(out)


class Supervisor:
    """Runs one container to its end; its threads copy output and carry out a SIGTERM."""

    def __init__(self, pod_dir: str, name: str, ready_fd: int | None = None) -> None:
        self.pod_dir = pod_dir
        self.spec_path = container_file(pod_dir, name, SPEC_SUFFIX)
        self.log_path = container_file(pod_dir, name, LOG_SUFFIX)
        self.pid_path = container_file(pod_dir, name, PID_SUFFIX)
        self.exit_path = container_file(pod_dir, name, EXIT_SUFFIX)
        self.grace_path = container_file(pod_dir, name, GRACE_SUFFIX)
        self.ready_fd = ready_fd
        self.child: subprocess.Popen[bytes] | None = None
        self.started_at: datetime.datetime | None = None
        self.killed_after: float | None = None
        # Reaping and signalling the process group are serialised: once the group leader is
        # reaped its pid may be recycled, and a late killpg would hit a stranger.
        self.reap_lock = threading.Lock()
        self.reaped = False
        self.stop_requested = threading.Event()
        self.spawn_decided = threading.Event()
        self.exited = threading.Event()
        self.write_lock = threading.Lock()
        self.log_fd = -1

    def _signal_ready(self) -> None:
        # The transport listens on this pipe to push the Running state without polling.
        if self.ready_fd is not None:
            with contextlib.suppress(OSError):
                os.write(self.ready_fd, b"started\n")
                os.close(self.ready_fd)
            self.ready_fd = None

    def _on_sigterm(self, signum: int, frame: object) -> None:
        self.stop_requested.set()

    def _killpg(self, sig: signal.Signals) -> None:
        with self.reap_lock:
            if self.child is None or self.reaped:
                return
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.child.pid, sig)

    def _terminator(self) -> None:
        self.stop_requested.wait()
        grace = DEFAULT_GRACE_SECONDS
        with contextlib.suppress(OSError, ValueError), open(self.grace_path) as file:
            grace = max(0.0, float(file.read().strip()))
        self.spawn_decided.wait()
        self._killpg(signal.SIGTERM)
        if not self.exited.wait(grace):
            self.killed_after = grace
            self._killpg(signal.SIGKILL)

    def _write(self, data: bytes) -> None:
        with self.write_lock:
            _write_all(self.log_fd, data)

    def _pump(self, pipe: IO[bytes], stream: str) -> None:
        fd = pipe.fileno()
        pending = b""
        while chunk := os.read(fd, 65536):
            # The time a line was read is its log time, as a container runtime records it.
            time = now()
            pending += chunk
            cut = pending.rfind(b"\n") + 1
            if cut == 0 and len(pending) >= MAX_RECORD_BYTES:
                cut = len(pending)
            if cut:
                self._write(cri_records(time, stream, pending[:cut]))
                pending = pending[cut:]
        if pending:
            self._write(cri_records(now(), stream, pending))

    def _finish(self, exit_code: int, reason: str, message: str) -> int:
        record = _exit_record(exit_code, reason, message, self.started_at, now())
        # Durable: how a container ended cannot be observed again, and a container that completed
        # must not be reported lost (or run again) after a power loss. Paid once per container, in
        # this process, not in vkpy.
        write_json_atomic(self.exit_path, record, durable=True)
        return 0

    def _spawn(self, spec: dict[str, Any]) -> tuple[int, str] | None:
        """Start the program; on failure, the exit code and message to report."""
        argv: list[str] = list(spec.get("argv") or [])
        cwd: str = spec.get("working_dir") or self.pod_dir
        if not argv:
            return EXIT_CANNOT_RUN, (
                "the container has neither command nor args: the local transport runs a program "
                "given by its argv, it cannot run an image"
            )
        if not os.path.isdir(cwd):
            return EXIT_CANNOT_RUN, f"working directory {cwd!r} does not exist"
        try:
            self.child = subprocess.Popen(
                argv,
                env=spec.get("env") or {},
                cwd=cwd,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                process_group=0,  # its own group, so that a stop reaches everything it started
            )
        except FileNotFoundError:
            where = "in $PATH" if "/" not in argv[0] else ""
            return EXIT_NOT_FOUND, f'exec: "{argv[0]}": executable file not found {where}'.strip()
        except PermissionError:
            return EXIT_NOT_EXECUTABLE, f'exec: "{argv[0]}": permission denied'
        except OSError as exc:
            return EXIT_CANNOT_RUN, f'exec: "{argv[0]}": {exc.strerror or exc}'
        return None

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self._on_sigterm)
        threading.Thread(target=self._terminator, daemon=True).start()
        spec = read_json(self.spec_path)
        if spec is None:
            return self._finish(EXIT_CANNOT_RUN, "ContainerCannotRun", f"{self.spec_path} is unreadable")
        self.log_fd = os.open(self.log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
        if self.stop_requested.is_set():
            self.spawn_decided.set()
            return self._finish(128 + signal.SIGTERM, "Error", "stopped before it started")
        self.started_at = now()
        failure = self._spawn(spec)
        self.spawn_decided.set()
        if failure is not None or self.child is None:
            code, message = failure or (EXIT_CANNOT_RUN, "not started")
            self.started_at = None
            return self._finish(code, "ContainerCannotRun", message)
        child = self.child
        # Not durable: it describes a live process, which a power loss ends anyway (the boot id
        # then tells the transport so); without it, the container is simply reported as lost.
        write_json_atomic(
            self.pid_path,
            {**process_record(child.pid), "pgid": child.pid, "started_at": _iso(self.started_at)},
            durable=False,
        )
        assert child.stdout is not None
        assert child.stderr is not None
        pumps = [
            threading.Thread(target=self._pump, args=(child.stdout, "stdout"), daemon=True),
            threading.Thread(target=self._pump, args=(child.stderr, "stderr"), daemon=True),
        ]
        for pump in pumps:
            pump.start()
        self._signal_ready()
        # Wait without reaping, so that the group can still be killed safely.
        os.waitid(os.P_PID, child.pid, os.WEXITED | os.WNOWAIT)
        self.exited.set()
        with self.reap_lock:
            # Like a container runtime, the container ends with its main process: kill what it
            # left behind, which would otherwise hold the output pipes open.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(child.pid, signal.SIGKILL)
            returncode = child.wait()
            self.reaped = True
        for pump in pumps:
            pump.join(DRAIN_SECONDS)
        return self._finish(*self._describe(returncode))

    def _describe(self, returncode: int) -> tuple[int, str, str]:
        if returncode >= 0:
            return returncode, "Completed" if returncode == 0 else "Error", ""
        signum = -returncode
        try:
            name = signal.Signals(signum).name
        except ValueError:
            name = f"signal {signum}"
        message = f"killed by {name}"
        if self.killed_after is not None and signum == signal.SIGKILL:
            message = f"killed by SIGKILL after the grace period of {self.killed_after:g}s"
        return 128 + signum, "Error", message


USAGE = """usage: python -m vkpy.plugins.local_supervisor POD_DIR CONTAINER [--ready-fd=N]

Runs CONTAINER of the local transport's pod in POD_DIR to its end. --ready-fd: a pipe written to
and closed once the program runs."""


def _parse(argv: list[str]) -> tuple[str, str, int | None] | None:
    # Not argparse: the transport alone writes this command line, and every supervisor would pay
    # argparse's import.
    positional = [arg for arg in argv if not arg.startswith("--ready-fd=")]
    ready = [arg.removeprefix("--ready-fd=") for arg in argv if arg.startswith("--ready-fd=")]
    if len(positional) != 2 or len(ready) > 1 or not all(fd.isdigit() for fd in ready):
        return None
    return positional[0], positional[1], int(ready[0]) if ready else None


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if "-h" in args or "--help" in args:
        print(USAGE)
        return 0
    parsed = _parse(args)
    if parsed is None:
        print(f"{USAGE}\n\nerror: bad arguments {args}", file=sys.stderr)
        return 2
    supervisor = Supervisor(*parsed)
    try:
        return supervisor.run()
    except Exception as exc:
        # Leave an exit record rather than a container the transport would have to call lost.
        import traceback  # only on this path: it costs every supervisor's start otherwise

        traceback.print_exc()
        supervisor._killpg(signal.SIGKILL)
        with contextlib.suppress(OSError):
            supervisor._finish(EXIT_CANNOT_RUN, "SupervisorFailed", f"{type(exc).__name__}: {exc}")
        return 1


if __name__ == "__main__":
    sys.exit(main())
