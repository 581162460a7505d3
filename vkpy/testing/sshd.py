"""A real OpenSSH sshd for tests, started unprivileged on a free loopback port, and a TCP relay whose
link a test can cut.

``SshServer(workdir).start()`` generates a throw-away host key and a client key (authorized for the
current user), and runs ``/usr/sbin/sshd -D`` with every setting on its command line (no system
config is read). ``TcpRelay(port).start()`` forwards a second loopback port to it: ``cut()`` closes
every relayed connection and refuses new ones (a cable pulled: killing sshd's listener would leave
established sessions alive), ``stall()`` keeps connections open but stops moving bytes (a link that
went silent), ``restore()`` brings the link back.

Plugin authors use it directly or through the fixtures of their own ``conftest.py``.
"""

from __future__ import annotations

import contextlib
import getpass
import os
import shlex
import socket
import subprocess
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path

from vkpy.testing import wait_for
from vkpy.testing.cluster import free_port

SSHD = Path("/usr/sbin/sshd")
SSH_KEYGEN = "ssh-keygen"
SSH = "ssh"
PRIVSEP_DIR = Path("/run/sshd")


def missing() -> str | None:
    """What is missing to run an sshd here (None when nothing is)."""
    if not SSHD.is_file():
        return f"{SSHD} (Debian package openssh-server)"
    for tool in (SSH_KEYGEN, SSH):
        if not any((Path(d) / tool).is_file() for d in os.environ.get("PATH", "").split(os.pathsep) if d):
            return f"{tool} (Debian package openssh-client)"
    if os.geteuid() == 0 and not PRIVSEP_DIR.is_dir():
        try:
            PRIVSEP_DIR.mkdir(mode=0o755, parents=True, exist_ok=True)
        except OSError as exc:
            return f"{PRIVSEP_DIR} (sshd's privilege separation folder): {exc.strerror}"
    return None


def generate_key(path: Path, key_type: str = "ed25519", comment: str = "vkpy-test") -> Path:
    """An unencrypted key pair at ``path`` and ``path.pub``."""
    path.unlink(missing_ok=True)
    Path(f"{path}.pub").unlink(missing_ok=True)
    subprocess.run(
        [SSH_KEYGEN, "-q", "-t", key_type, "-N", "", "-C", comment, "-f", str(path)],
        check=True,
        stdin=subprocess.DEVNULL,
        capture_output=True,
    )
    return path


class SshServer:
    """One sshd accepting the current user with ``client_key`` on ``127.0.0.1:port``."""

    def __init__(
        self,
        workdir: Path,
        *,
        options: Mapping[str, str] | None = None,
        port: int | None = None,
    ) -> None:
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.host = "127.0.0.1"
        self.port = port or free_port()
        self.user = getpass.getuser()
        self.host_key = workdir / "host_ed25519"
        self.client_key = workdir / "client_ed25519"
        self.authorized_keys = workdir / "authorized_keys"
        self.log_path = workdir / "sshd.log"
        self.extra_options = dict(options or {})
        self.process: subprocess.Popen[bytes] | None = None

    # -- keys ------------------------------------------------------------------------------------------

    @property
    def host_public_key(self) -> str:
        """The host key as ``<type> <base64>`` (no comment)."""
        fields = Path(f"{self.host_key}.pub").read_text().split()
        return f"{fields[0]} {fields[1]}"

    def known_hosts_line(self, port: int | None = None, host: str | None = None) -> str:
        """A known_hosts entry for this server as reached at ``host:port`` (a relay's port, say)."""
        port = port or self.port
        host = host or self.host
        pattern = host if port == 22 else f"[{host}]:{port}"
        return f"{pattern} {self.host_public_key}\n"

    def write_known_hosts(self, path: Path, port: int | None = None) -> Path:
        path.write_text(self.known_hosts_line(port))
        path.chmod(0o600)
        return path

    # -- process ---------------------------------------------------------------------------------------

    def argv(self) -> list[str]:
        options = {
            "ListenAddress": self.host,
            "Port": str(self.port),
            "HostKey": str(self.host_key),
            "PidFile": str(self.workdir / "sshd.pid"),
            "AuthorizedKeysFile": str(self.authorized_keys),
            "UsePAM": "no",
            "StrictModes": "no",
            "PasswordAuthentication": "no",
            "KbdInteractiveAuthentication": "no",
            "PermitRootLogin": "yes",
            "Subsystem": "sftp internal-sftp",
            "LogLevel": "VERBOSE",
            **self.extra_options,
        }
        argv = [str(SSHD), "-D", "-e", "-f", "/dev/null"]
        for key, value in options.items():
            argv += ["-o", f"{key}={value}"]
        return argv

    def start(self, timeout: float = 15) -> SshServer:
        reason = missing()
        if reason is not None:
            raise RuntimeError(f"cannot start sshd: missing {reason}")
        if not self.host_key.exists():
            generate_key(self.host_key, comment="vkpy-test-host")
        if not self.client_key.exists():
            generate_key(self.client_key, comment="vkpy-test-client")
            self.authorized_keys.write_text(Path(f"{self.client_key}.pub").read_text())
            self.authorized_keys.chmod(0o600)
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                self.argv(), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, cwd=self.workdir
            )

        def listening() -> bool:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"sshd exited ({self.process.returncode}):\n{self.log_text()[-2000:]}")
            with socket.socket() as sock:
                sock.settimeout(1)
                if sock.connect_ex((self.host, self.port)) != 0:
                    return False
                return sock.recv(4).startswith(b"SSH-")

        try:
            wait_for(listening, timeout=timeout, interval=0.05, what=f"sshd on port {self.port}")
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def __enter__(self) -> SshServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- a client, for test steps on the "device" --------------------------------------------------

    def ssh_argv(self, command: str | Sequence[str]) -> list[str]:
        known = self.workdir / "client_known_hosts"
        if not known.exists():
            self.write_known_hosts(known)
        remote = command if isinstance(command, str) else shlex.join(command)
        return [
            SSH,
            "-q",
            "-F",
            "/dev/null",
            "-i",
            str(self.client_key),
            "-p",
            str(self.port),
            "-o",
            f"UserKnownHostsFile={known}",
            "-o",
            "StrictHostKeyChecking=yes",
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            "BatchMode=yes",
            f"{self.user}@{self.host}",
            remote,
        ]

    def run(
        self, command: str | Sequence[str], *, check: bool = True, timeout: float = 30
    ) -> subprocess.CompletedProcess[str]:
        """Run a command on the "device" with OpenSSH's own client."""
        return subprocess.run(
            self.ssh_argv(command),
            check=check,
            capture_output=True,
            text=True,
            stdin=subprocess.DEVNULL,
            timeout=timeout,
        )


# --- the relay ---------------------------------------------------------------------------------------


class _Pipe:
    """One relayed connection: two sockets and two threads copying between them."""

    def __init__(self, relay: TcpRelay, client: socket.socket, server: socket.socket) -> None:
        self.relay = relay
        self.client = client
        self.server = server
        self.closed = False
        self.threads = [
            threading.Thread(target=self._copy, args=(client, server), daemon=True),
            threading.Thread(target=self._copy, args=(server, client), daemon=True),
        ]

    def start(self) -> None:
        for thread in self.threads:
            thread.start()

    def _copy(self, source: socket.socket, target: socket.socket) -> None:
        try:
            while self._may_flow():
                data = source.recv(65536)
                if not data or not self._may_flow():
                    break
                target.sendall(data)
        except OSError:
            pass
        self.close()

    def _may_flow(self) -> bool:
        # A stalled link moves nothing: bytes wait in the kernel, as on a dead route.
        self.relay._flowing.wait()
        return not self.closed

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        for sock in (self.client, self.server):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                sock.close()
        self.relay._forget(self)


class TcpRelay:
    """Forwards ``127.0.0.1:port`` to ``target_host:target_port``, with a switch to cut the link."""

    def __init__(self, target_port: int, target_host: str = "127.0.0.1", port: int | None = None) -> None:
        self.target = (target_host, target_port)
        self.host = "127.0.0.1"
        self.port = port or free_port()
        self.accepted = 0
        self._pipes: set[_Pipe] = set()
        self._lock = threading.Lock()
        self._flowing = threading.Event()
        self._flowing.set()
        self._listener: socket.socket | None = None
        self._acceptor: threading.Thread | None = None

    @property
    def connections(self) -> int:
        with self._lock:
            return len(self._pipes)

    def start(self) -> TcpRelay:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((self.host, self.port))
        listener.listen(16)
        self._listener = listener
        self._acceptor = threading.Thread(target=self._accept, args=(listener,), daemon=True)
        self._acceptor.start()
        return self

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(self.target, timeout=5)
                server.settimeout(None)
            except OSError:
                client.close()
                continue
            pipe = _Pipe(self, client, server)
            with self._lock:
                self._pipes.add(pipe)
                self.accepted += 1
            pipe.start()

    def _forget(self, pipe: _Pipe) -> None:
        with self._lock:
            self._pipes.discard(pipe)

    def _close_listener(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            with contextlib.suppress(OSError):
                listener.shutdown(socket.SHUT_RDWR)
            listener.close()
        if self._acceptor is not None:
            self._acceptor.join(5)
            self._acceptor = None

    def cut(self) -> None:
        """Drop every relayed connection and refuse new ones until :meth:`restore`."""
        self._close_listener()
        with self._lock:
            pipes = list(self._pipes)
        for pipe in pipes:
            pipe.close()
        self._flowing.set()

    def stall(self) -> None:
        """Keep connections open but move no bytes (new connections are accepted, and stall too)."""
        self._flowing.clear()

    def restore(self) -> None:
        """Bring the link back: bytes flow again, and the port accepts connections again."""
        self._flowing.set()
        if self._listener is None:
            self.start()

    def close(self) -> None:
        self._flowing.set()
        self.cut()

    def __enter__(self) -> TcpRelay:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()
