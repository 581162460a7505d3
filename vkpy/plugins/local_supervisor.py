"""The supervisor of one container of the ``local`` transport, and the files it shares with it.

``python -m vkpy.plugins.local_supervisor <pod folder> <container>`` runs detached from vkpy (in its
own session), so containers outlive a vkpy restart. It runs the program described in
``<container>.spec.json``, writes its output to ``<container>.log`` in the CRI format, its pid to
``<container>.pid`` and, when it ends, its exit to ``<container>.exit``. SIGTERM stops the container
as the kubelet does: SIGTERM to its process group, SIGKILL once the grace period (read from
``<container>.grace``) is over.

The files are the whole contract with the transport, which may be a later vkpy process: keep them
compatible.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import signal
import subprocess
import sys
import threading
import traceback
from pathlib import Path
from typing import IO, Any

import attrs

from vkpy.logs import format_cri_line

DEFAULT_GRACE_SECONDS = 30.0
MAX_RECORD_BYTES = 16 * 1024  # containerd's limit: longer lines are split into P records
DRAIN_SECONDS = 2.0  # how long output is still read once the container's processes are killed

# Exit codes for a program that could not be started, as container runtimes report them.
EXIT_CANNOT_RUN = 128
EXIT_NOT_FOUND = 127
EXIT_NOT_EXECUTABLE = 126


@attrs.frozen
class ContainerFiles:
    """Where one container's files live in its pod folder."""

    pod_dir: Path
    name: str

    def _file(self, suffix: str) -> Path:
        return self.pod_dir / f"{self.name}{suffix}"

    @property
    def spec(self) -> Path:
        """What to run: argv, env, working_dir (written by the transport; may hold secrets)."""
        return self._file(".spec.json")

    @property
    def log(self) -> Path:
        return self._file(".log")

    @property
    def previous_log(self) -> Path:
        return self._file(".previous.log")

    @property
    def supervisor(self) -> Path:
        """The supervisor's identity (written by the transport once it has started it)."""
        return self._file(".supervisor")

    @property
    def pid(self) -> Path:
        """The container's main process and its start time (written by the supervisor)."""
        return self._file(".pid")

    @property
    def exit(self) -> Path:
        """How the container ended (written by the supervisor, last)."""
        return self._file(".exit")

    @property
    def grace(self) -> Path:
        """The grace period for the next SIGTERM, in seconds (written by the transport)."""
        return self._file(".grace")


def now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def write_file_atomic(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Replace ``path`` with ``data`` so that a reader sees the old or the new file, never half."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, mode)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def write_json_atomic(path: Path, value: dict[str, Any]) -> None:
    write_file_atomic(path, json.dumps(value, sort_keys=True).encode() + b"\n")


def read_json(path: Path) -> dict[str, Any] | None:
    """The JSON object in ``path``, or None when it is missing or unreadable."""
    try:
        value = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def _boot_id() -> str | None:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return None


def _start_ticks(pid: int) -> int | None:
    """The process's start time in clock ticks since boot, or None when it is gone or a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return None
    # The command name (field 2) may contain spaces and parentheses: split after the last ')'.
    fields = stat[stat.rfind(b")") + 2 :].split()
    if len(fields) < 20 or fields[0] == b"Z":
        return None
    return int(fields[19])


@attrs.frozen
class ProcessId:
    """A process, identified so that a recycled pid (or a reboot) is not mistaken for it."""

    pid: int
    start_ticks: int | None = None
    boot_id: str | None = None

    @classmethod
    def of(cls, pid: int) -> ProcessId:
        return cls(pid=pid, start_ticks=_start_ticks(pid), boot_id=_boot_id())

    @classmethod
    def from_json(cls, value: dict[str, Any] | None) -> ProcessId | None:
        if value is None or not isinstance(value.get("pid"), int):
            return None
        return cls(pid=value["pid"], start_ticks=value.get("start_ticks"), boot_id=value.get("boot_id"))

    def to_json(self) -> dict[str, Any]:
        return {"pid": self.pid, "start_ticks": self.start_ticks, "boot_id": self.boot_id}

    def alive(self) -> bool:
        if not Path("/proc/self/stat").exists():  # no procfs: trust the pid alone
            try:
                os.kill(self.pid, 0)
            except ProcessLookupError:
                return False
            except PermissionError:
                return True
            return True
        if self.boot_id is not None and self.boot_id != _boot_id():
            return False
        ticks = _start_ticks(self.pid)
        return ticks is not None and (self.start_ticks is None or ticks == self.start_ticks)


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


def _cri_records(time: datetime.datetime, stream: str, data: bytes) -> bytes:
    """CRI records for ``data``, splitting lines longer than MAX_RECORD_BYTES into P records."""
    out = []
    for line in data.splitlines(keepends=True):
        while len(line) > MAX_RECORD_BYTES:
            out.append(format_cri_line(time, stream, line[:MAX_RECORD_BYTES]))
            line = line[MAX_RECORD_BYTES:]
        out.append(format_cri_line(time, stream, line))
    return b"".join(out)


class Supervisor:
    """Runs one container to its end; its threads copy output and carry out a SIGTERM."""

    def __init__(self, files: ContainerFiles, ready_fd: int | None = None) -> None:
        self.files = files
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
        with contextlib.suppress(OSError, ValueError):
            grace = max(0.0, float(self.files.grace.read_text().strip()))
        self.spawn_decided.wait()
        self._killpg(signal.SIGTERM)
        if not self.exited.wait(grace):
            self.killed_after = grace
            self._killpg(signal.SIGKILL)

    def _write(self, data: bytes) -> None:
        with self.write_lock:
            view = memoryview(data)
            while view:
                view = view[os.write(self.log_fd, view) :]

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
                self._write(_cri_records(time, stream, pending[:cut]))
                pending = pending[cut:]
        if pending:
            self._write(_cri_records(now(), stream, pending))

    def _finish(self, exit_code: int, reason: str, message: str) -> int:
        record = _exit_record(exit_code, reason, message, self.started_at, now())
        write_json_atomic(self.files.exit, record)
        return 0

    def _spawn(self, spec: dict[str, Any]) -> tuple[int, str] | None:
        """Start the program; on failure, the exit code and message to report."""
        argv: list[str] = list(spec.get("argv") or [])
        cwd: str = spec.get("working_dir") or str(self.files.pod_dir)
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
        spec = read_json(self.files.spec)
        if spec is None:
            return self._finish(EXIT_CANNOT_RUN, "ContainerCannotRun", f"{self.files.spec} is unreadable")
        self.log_fd = os.open(self.files.log, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
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
        write_json_atomic(
            self.files.pid,
            {**ProcessId.of(child.pid).to_json(), "pgid": child.pid, "started_at": _iso(self.started_at)},
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vkpy.plugins.local_supervisor")
    parser.add_argument("pod_dir", type=Path)
    parser.add_argument("container")
    parser.add_argument("--ready-fd", type=int, help="written to and closed once the program runs")
    args = parser.parse_args(argv)
    supervisor = Supervisor(ContainerFiles(args.pod_dir, args.container), args.ready_fd)
    try:
        return supervisor.run()
    except Exception as exc:
        # Leave an exit record rather than a container the transport would have to call lost.
        traceback.print_exc()
        supervisor._killpg(signal.SIGKILL)
        with contextlib.suppress(OSError):
            supervisor._finish(EXIT_CANNOT_RUN, "SupervisorFailed", f"{type(exc).__name__}: {exc}")
        return 1


if __name__ == "__main__":
    sys.exit(main())
