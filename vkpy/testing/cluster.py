"""A real Kubernetes control plane on loopback: etcd, kube-apiserver, and on request the scheduler and
controller-manager, with a throw-away PKI. Used by the pytest plugin, the demo and the benchmarks."""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import signal
import socket
import ssl
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import attrs

from vkpy.testing import binaries
from vkpy.testing.pki import CertificateAuthority, CertPair, write_kubeconfig, write_service_account_keys

_PR_SET_PDEATHSIG = 1


class KubectlError(subprocess.CalledProcessError):
    """kubectl failed; unlike its base class, the message carries kubectl's own words."""

    def __str__(self) -> str:
        args = " ".join(str(a) for a in self.cmd[2:]) if isinstance(self.cmd, list) else str(self.cmd)
        return f"kubectl {args} failed (exit {self.returncode}): {(self.stderr or '').strip()}"


class ClusterError(RuntimeError):
    """The control plane could not be started; the message names the component and its log."""


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _die_with_parent() -> None:
    # Children get SIGKILL if the test process dies hard, so no component outlives a crashed run.
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


@attrs.define
class Component:
    name: str
    process: subprocess.Popen[bytes]
    log: Path

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self, timeout: float = 10) -> None:
        if self.process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()


@attrs.frozen
class NodeIdentity:
    """Credentials of a kubelet for one node: `system:node:<name>` in group `system:nodes`."""

    name: str
    kubeconfig: Path
    client: CertPair


@attrs.define
class ControlPlane:
    """A running control plane. Start with :meth:`start`, stop with :meth:`stop` (or as a context)."""

    workdir: Path
    bin_dir: Path
    ca: CertificateAuthority
    server: str
    admin_kubeconfig: Path
    components: dict[str, Component] = attrs.Factory(dict)
    _service_account_keys: CertPair | None = None
    _etcd_url: str = ""

    # -- lifecycle ---------------------------------------------------------------------------------
    @classmethod
    def start(cls, workdir: Path, *, controllers: bool = False) -> ControlPlane:
        bin_dir = binaries.ensure_built()
        workdir.mkdir(parents=True, exist_ok=True)
        pki = workdir / "pki"
        ca = CertificateAuthority.create(pki, "cluster-ca")
        api_port = free_port()
        server = f"https://127.0.0.1:{api_port}"
        admin = ca.issue(pki, "admin", "vkpy-admin", ["system:masters"], client=True)
        plane = cls(
            workdir=workdir,
            bin_dir=bin_dir,
            ca=ca,
            server=server,
            admin_kubeconfig=write_kubeconfig(
                workdir / "admin.kubeconfig", server, ca.files.cert, "admin", admin
            ),
        )
        try:
            plane._start_etcd()
            plane._start_apiserver(api_port)
            if controllers:
                plane.start_controllers()
        except BaseException:
            plane.stop()
            raise
        return plane

    def stop(self) -> None:
        for component in reversed(list(self.components.values())):
            component.stop()

    def __enter__(self) -> ControlPlane:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _spawn(self, name: str, argv: Sequence[str]) -> Component:
        log = self.workdir / f"{name}.log"
        with log.open("ab") as out:
            process = subprocess.Popen(
                [str(self.bin_dir / argv[0]), *argv[1:]],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=self.workdir,
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )
        component = Component(name, process, log)
        self.components[name] = component
        return component

    def _wait(self, component: Component, ready: Any, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if component.process.poll() is not None:
                raise ClusterError(
                    f"{component.name} exited with {component.process.returncode} while starting; "
                    f"log {component.log}:\n{component.log_tail()}"
                )
            if ready():
                return
            time.sleep(0.1)
        raise ClusterError(
            f"{component.name} not ready after {timeout:.0f} s; log {component.log}:\n{component.log_tail()}"
        )

    def _start_etcd(self) -> None:
        client_port, peer_port = free_port(), free_port()
        self._etcd_url = f"http://127.0.0.1:{client_port}"
        peer = f"http://127.0.0.1:{peer_port}"
        etcd = self._spawn(
            "etcd",
            [
                "etcd",
                "--name=vkpy",
                f"--data-dir={self.workdir / 'etcd-data'}",
                f"--listen-client-urls={self._etcd_url}",
                f"--advertise-client-urls={self._etcd_url}",
                f"--listen-peer-urls={peer}",
                f"--initial-advertise-peer-urls={peer}",
                f"--initial-cluster=vkpy={peer}",
                "--unsafe-no-fsync",
                "--log-level=warn",
            ],
        )
        self._wait(etcd, lambda: _http_ok(f"{self._etcd_url}/health"))

    def _start_apiserver(self, port: int) -> None:
        pki = self.workdir / "pki"
        serving = self.ca.issue(
            pki,
            "apiserver",
            "kube-apiserver",
            server=True,
            dns_names=["localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc"],
            ip_addresses=["127.0.0.1", "10.0.0.1"],
        )
        kubelet_client = self.ca.issue(
            pki, "apiserver-kubelet-client", "kube-apiserver-kubelet-client", ["system:masters"], client=True
        )
        self._service_account_keys = sa = write_service_account_keys(pki)
        apiserver = self._spawn(
            "kube-apiserver",
            [
                "kube-apiserver",
                f"--etcd-servers={self._etcd_url}",
                "--bind-address=127.0.0.1",
                "--advertise-address=127.0.0.1",
                f"--secure-port={port}",
                f"--cert-dir={pki}",
                f"--tls-cert-file={serving.cert}",
                f"--tls-private-key-file={serving.key}",
                f"--client-ca-file={self.ca.files.cert}",
                # Populates the CA bundle the scheduler and controller-manager look for; no client
                # holds a front-proxy certificate, so it grants nothing.
                f"--requestheader-client-ca-file={self.ca.files.cert}",
                "--requestheader-allowed-names=front-proxy-client",
                "--requestheader-username-headers=X-Remote-User",
                "--requestheader-group-headers=X-Remote-Group",
                "--requestheader-extra-headers-prefix=X-Remote-Extra-",
                f"--service-account-key-file={sa.cert}",
                f"--service-account-signing-key-file={sa.key}",
                "--service-account-issuer=https://kubernetes.default.svc",
                "--service-cluster-ip-range=10.0.0.0/24",
                "--authorization-mode=Node,RBAC",
                "--enable-admission-plugins=NodeRestriction",
                f"--kubelet-client-certificate={kubelet_client.cert}",
                f"--kubelet-client-key={kubelet_client.key}",
                f"--kubelet-certificate-authority={self.ca.files.cert}",
                "--kubelet-preferred-address-types=InternalIP,Hostname",
                "--allow-privileged=true",
                "--profiling=false",
                "--endpoint-reconciler-type=none",
                # ConfigMap watches go straight to etcd, so a test can provoke "410 Gone" by
                # compacting etcd (compact_etcd); every other resource keeps the watch cache.
                "--watch-cache-sizes=configmaps#0",
                "--v=1",
            ],
        )
        self._wait(apiserver, lambda: self._get_ok("/readyz"))

    def start_controllers(self) -> None:
        """Start kube-controller-manager and kube-scheduler (idempotent)."""
        if "kube-controller-manager" in self.components and "kube-scheduler" in self.components:
            return
        pki = self.workdir / "pki"
        assert self._service_account_keys is not None
        cm_cert = self.ca.issue(pki, "controller-manager", "system:kube-controller-manager", client=True)
        cm_kubeconfig = write_kubeconfig(
            self.workdir / "controller-manager.kubeconfig", self.server, self.ca.files.cert, "cm", cm_cert
        )
        sched_cert = self.ca.issue(pki, "scheduler", "system:kube-scheduler", client=True)
        sched_kubeconfig = write_kubeconfig(
            self.workdir / "scheduler.kubeconfig", self.server, self.ca.files.cert, "scheduler", sched_cert
        )
        cm_port, sched_port = free_port(), free_port()
        cm = self._spawn(
            "kube-controller-manager",
            [
                "kube-controller-manager",
                f"--kubeconfig={cm_kubeconfig}",
                f"--authentication-kubeconfig={cm_kubeconfig}",
                f"--authorization-kubeconfig={cm_kubeconfig}",
                "--bind-address=127.0.0.1",
                f"--secure-port={cm_port}",
                f"--cert-dir={pki}",
                f"--cluster-signing-cert-file={self.ca.files.cert}",
                f"--cluster-signing-key-file={self.ca.files.key}",
                f"--service-account-private-key-file={self._service_account_keys.key}",
                f"--root-ca-file={self.ca.files.cert}",
                "--use-service-account-credentials=true",
                "--leader-elect=false",
                "--node-monitor-period=2s",
                "--node-monitor-grace-period=20s",
                "--profiling=false",
                "--v=1",
            ],
        )
        sched = self._spawn(
            "kube-scheduler",
            [
                "kube-scheduler",
                f"--kubeconfig={sched_kubeconfig}",
                f"--authentication-kubeconfig={sched_kubeconfig}",
                f"--authorization-kubeconfig={sched_kubeconfig}",
                "--bind-address=127.0.0.1",
                f"--secure-port={sched_port}",
                "--leader-elect=false",
                "--profiling=false",
                "--v=1",
            ],
        )
        self._wait(cm, lambda: _component_healthy(cm_port))
        self._wait(sched, lambda: _component_healthy(sched_port))
        # The default ServiceAccount shows the controller-manager is reconciling, not just serving.
        self._wait(cm, lambda: self._get_ok("/api/v1/namespaces/default/serviceaccounts/default"))

    # -- clients -----------------------------------------------------------------------------------
    def _ssl_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(self.ca.files.cert))
        pki = self.workdir / "pki"
        context.load_cert_chain(pki / "admin.crt", pki / "admin.key")
        return context

    def _get_ok(self, path: str) -> bool:
        try:
            with urllib.request.urlopen(  # noqa: S310 - fixed https URL on loopback
                self.server + path, context=self._ssl_context(), timeout=5
            ) as response:
                return bool(response.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def kubectl(
        self,
        *args: str,
        kubeconfig: Path | None = None,
        input: str | None = None,
        check: bool = True,
        timeout: float = 60,
    ) -> subprocess.CompletedProcess[str]:
        """Run the cluster's kubectl as a user would; raise with its stderr when it fails."""
        argv = [str(self.bin_dir / "kubectl"), f"--kubeconfig={kubeconfig or self.admin_kubeconfig}", *args]
        proc = subprocess.run(argv, input=input, capture_output=True, text=True, timeout=timeout)
        if check and proc.returncode != 0:
            raise KubectlError(proc.returncode, argv, proc.stdout, proc.stderr)
        return proc

    def kubectl_json(self, *args: str, kubeconfig: Path | None = None) -> Any:
        return json.loads(self.kubectl(*args, "-o", "json", kubeconfig=kubeconfig).stdout)

    def apply(self, manifest: str, kubeconfig: Path | None = None) -> str:
        return self.kubectl("apply", "-f", "-", input=manifest, kubeconfig=kubeconfig).stdout

    # -- identities --------------------------------------------------------------------------------
    def node_identity(self, node_name: str) -> NodeIdentity:
        """A kubelet client identity for `node_name`, as the seed's CSR flow would produce."""
        directory = self.workdir / "nodes" / node_name
        client = self.ca.issue(
            directory, "kubelet-client", f"system:node:{node_name}", ["system:nodes"], client=True
        )
        kubeconfig = write_kubeconfig(
            directory / "kubeconfig", self.server, self.ca.files.cert, f"system:node:{node_name}", client
        )
        return NodeIdentity(node_name, kubeconfig, client)

    def serving_certificate(self, name: str, ip_addresses: Sequence[str] = ("127.0.0.1",)) -> CertPair:
        """A kubelet API serving certificate that the apiserver verifies."""
        return self.ca.issue(
            self.workdir / "serving",
            f"{name}-{uuid.uuid4().hex[:6]}",
            name,
            server=True,
            dns_names=["localhost", name],
            ip_addresses=ip_addresses,
        )

    def create_namespace(self, name: str) -> None:
        """A namespace with its default ServiceAccount (which the controller-manager may be creating
        at the same moment, or not running to create at all)."""
        self.kubectl("create", "namespace", name)
        made = self.kubectl("create", "serviceaccount", "default", "-n", name, check=False)
        if made.returncode != 0 and "already exists" not in made.stderr:
            raise KubectlError(
                made.returncode, ["kubectl", "", "create", "serviceaccount"], made.stdout, made.stderr
            )

    def compact_etcd(self) -> int:
        """Compact etcd's history up to now: watches from an older resourceVersion get 410 Gone."""

        def post(path: str, body: dict[str, Any]) -> Any:
            request = urllib.request.Request(  # noqa: S310 - fixed http URL on loopback
                self._etcd_url + path, data=json.dumps(body).encode()
            )
            with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310 - loopback http
                return json.loads(response.read())

        revision = int(post("/v3/kv/range", {"key": "AA=="})["header"]["revision"])
        post("/v3/kv/compaction", {"revision": str(revision), "physical": True})
        return revision

    def log_tails(self, lines: int = 30) -> Iterator[tuple[str, str]]:
        for component in self.components.values():
            yield component.name, component.log_tail(lines)


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:  # noqa: S310 - loopback http
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def _component_healthy(port: int) -> bool:
    # The components serve /healthz with a self-signed certificate they make at start; this probe on
    # loopback only asks "is it up", so it does not verify that certificate.
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    try:
        with urllib.request.urlopen(
            f"https://127.0.0.1:{port}/healthz", context=context, timeout=2
        ) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False
