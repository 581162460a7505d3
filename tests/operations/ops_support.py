"""Helpers for the operations tests: a person approving (or denying) certificate requests with kubectl
in the background, vkpy configurations, and reading the metrics port."""

from __future__ import annotations

import contextlib
import json
import random
import re
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cryptography import x509

from vkpy.testing.cluster import ControlPlane
from vkpy.testing.pki import write_kubeconfig
from vkpy.testing.runner import VkpyProcess

ROOT = Path(__file__).resolve().parents[2]


StartApprover = Callable[..., "Approver"]
RunVkpy = Callable[..., VkpyProcess]


def service_account_kubeconfig(
    cluster: ControlPlane, directory: Path, namespace: str, name: str, cluster_role: str | None = None
) -> Path:
    """A ServiceAccount (bound to ``cluster_role`` when given) and a kubeconfig with its token."""
    cluster.kubectl("create", "namespace", namespace, check=False)
    cluster.kubectl("create", "serviceaccount", name, "-n", namespace, check=False)
    if cluster_role is not None:
        cluster.kubectl(
            "create",
            "clusterrolebinding",
            f"{namespace}-{name}",
            f"--clusterrole={cluster_role}",
            f"--serviceaccount={namespace}:{name}",
            check=False,
        )
    token = cluster.kubectl("create", "token", name, "-n", namespace, "--duration=4h").stdout.strip()
    directory.mkdir(parents=True, exist_ok=True)
    return write_kubeconfig(
        directory / f"{name}.kubeconfig", cluster.server, cluster.ca.files.cert, name, token=token
    )


class Approver:
    """Does what the seed's operator does by hand: waits for CertificateSigningRequests and runs
    ``kubectl certificate approve <name>`` (or ``deny``) on each pending one whose name starts with
    ``prefix``. ``pause()`` stops acting (requests then stay pending)."""

    def __init__(self, cluster: ControlPlane, prefix: str, verb: str = "approve") -> None:
        self.cluster = cluster
        self.prefix = prefix
        self.verb = verb
        self.handled: list[str] = []
        self.seen: dict[str, dict[str, Any]] = {}
        self._active = threading.Event()
        self._active.set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"approver-{prefix}", daemon=True)

    def start(self) -> Approver:
        self._thread.start()
        return self

    def pause(self) -> None:
        self._active.clear()

    def resume(self) -> None:
        self._active.set()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _loop(self) -> None:
        while not self._stop.is_set():
            if self._active.is_set():
                self._round()
            self._stop.wait(0.3)

    def _round(self) -> None:
        listing = self.cluster.kubectl("get", "csr", "-o", "json", check=False)
        if listing.returncode != 0:
            return
        for csr in json.loads(listing.stdout).get("items", []):
            name = csr["metadata"]["name"]
            if not name.startswith(self.prefix):
                continue
            self.seen[name] = csr
            conditions = {c["type"] for c in csr.get("status", {}).get("conditions") or []}
            if conditions & {"Approved", "Denied", "Failed"} or name in self.handled:
                continue
            if not self._active.is_set():
                return
            done = self.cluster.kubectl("certificate", self.verb, name, check=False)
            if done.returncode == 0:
                self.handled.append(name)


def csr(cluster: ControlPlane, name: str) -> dict[str, Any]:
    return dict(cluster.kubectl_json("get", "csr", name))


def csrs(cluster: ControlPlane, prefix: str) -> list[dict[str, Any]]:
    items = cluster.kubectl_json("get", "csr")["items"]
    return sorted(
        (item for item in items if item["metadata"]["name"].startswith(prefix)),
        key=lambda item: item["metadata"]["creationTimestamp"],
    )


def certificate(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def served_certificate(port: int, host: str = "127.0.0.1") -> x509.Certificate:
    """The certificate a TLS server on ``port`` presents now (a new connection)."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with (
        socket.create_connection((host, port), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname=host) as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der)


def vkpy_cli(
    *args: str, timeout: float = 120, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "vkpy", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )


_handed_out: set[int] = set()


def stable_port() -> int:
    """A free port below the ephemeral range (32768+ on Linux): a port picked there can be taken as a
    source port by any outgoing connection before the server binds it, which happens when many
    processes start at once. A port is never handed out twice in one test run: a test that starts
    fifteen processes at once would otherwise, now and then, give two of them the same port before
    either has bound it."""
    while True:
        port = random.randint(20000, 32000)
        if port in _handed_out:
            continue
        _handed_out.add(port)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port


def local_node(name: str, state_root: Path, **overrides: Any) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "name": name,
        "transport": "local",
        "local": {"state_dir": str(state_root / name)},
        "capacity": {"cpu": "4", "memory": "4Gi", "pods": "20"},
        "plugins": ["probe"],
        "status_interval": "2s",
        "restart_backoff": {"initial": "1s", "max": "4s"},
    }
    entry.update(overrides)
    return entry


def base_config(
    cluster: ControlPlane, *, serving: Any | None = None, port: int | None = None
) -> dict[str, Any]:
    """A config with a kubelet server the API server verifies (``serving`` from
    ``cluster.serving_certificate``) or, without it, none (certificates: obtains one)."""
    kubelet: dict[str, Any] = {
        "address": "127.0.0.1",
        "port": port or stable_port(),
        "client_ca": str(cluster.ca.files.cert),
    }
    if serving is not None:
        kubelet["tls_cert"] = str(serving.cert)
        kubelet["tls_key"] = str(serving.key)
    return {"log": {"level": "debug", "format": "json"}, "kubelet": kubelet}


def http_get(url: str, timeout: float = 5) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return int(response.status), response.read().decode()
    except urllib.error.HTTPError as exc:
        return int(exc.code), exc.read().decode()


def metric(text: str, name: str, **labels: str) -> float | None:
    """The value of the sample ``name{labels...}`` (labels matched as a subset), or None."""
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        match = re.match(r"([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})? (\S+)$", line)
        if not match or match.group(1) != name:
            continue
        found = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', match.group(3) or ""))
        if all(found.get(k) == v for k, v in labels.items()):
            return float(match.group(4))
    return None


def log_events(text: str, event: str) -> list[dict[str, Any]]:
    """The JSON log lines of vkpy whose ``event`` is ``event``."""
    out = []
    for line in text.splitlines():
        if f'"{event}"' not in line:
            continue
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if entry.get("event") == event:
            out.append(entry)
    return out


def wait_until(condition: Callable[[], Any], timeout: float, what: str, interval: float = 0.3) -> Any:
    from vkpy.testing import wait_for

    return wait_for(condition, timeout=timeout, interval=interval, what=what)


def elapsed_since(start: float) -> float:
    return time.monotonic() - start


class Relay:
    """A TCP relay to the API server that a test can cut (every connection drops, new ones are
    refused) and restore on the same port: a network outage between vkpy and the cluster."""

    def __init__(self, target_port: int, target_host: str = "127.0.0.1") -> None:
        self.target = (target_host, target_port)
        self.port = stable_port()
        self._server: socket.socket | None = None
        self._sockets: set[socket.socket] = set()
        self._lock = threading.Lock()

    def start(self) -> Relay:
        server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind(("127.0.0.1", self.port))
        server.listen(64)
        self._server = server
        threading.Thread(target=self._accept, args=(server,), daemon=True).start()
        return self

    def _accept(self, server: socket.socket) -> None:
        while True:
            try:
                client, _ = server.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            with self._lock:
                self._sockets.update((client, upstream))
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for end in (source, sink):
                with contextlib.suppress(OSError):
                    end.shutdown(socket.SHUT_RDWR)
                end.close()

    def cut(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        with self._lock:
            doomed, self._sockets = self._sockets, set()
        for sock in doomed:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def restore(self) -> None:
        self.start()
