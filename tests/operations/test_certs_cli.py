"""`vkpy certs request`: the seed's openssl + CSR + `kubectl certificate approve` flow as one command,
against a real API server whose controller-manager signs kubelet certificates."""

from __future__ import annotations

import json
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from ops_support import Approver, StartApprover, certificate, csr, csrs, service_account_kubeconfig, vkpy_cli

from vkpy.testing.cluster import ControlPlane

pytestmark = pytest.mark.controllers


def test_request_prints_the_approve_command_and_writes_a_working_node_identity(
    k8s_controllers: ControlPlane, bootstrap_kubeconfig: Path, approver: StartApprover, tmp_path: Path
) -> None:
    kubectl_user = approver("vkpy-")  # a person running `kubectl certificate approve` when asked
    out = tmp_path / "pki" / "certs-a"
    result = vkpy_cli(
        "certs",
        "request",
        "--node",
        "certs-a",
        "--ip",
        "127.0.0.1",
        "--dns",
        "certs-a.lab",
        "--out",
        str(out),
        "--kubeconfig",
        str(bootstrap_kubeconfig),
        "--timeout",
        "90",
    )
    assert result.returncode == 0, result.stdout + result.stderr
    client_csr = next(n for n in kubectl_user.handled if n.startswith("vkpy-client-certs-a-"))
    serving_csr = next(n for n in kubectl_user.handled if n.startswith("vkpy-serving-certs-a-"))
    # The exact commands a person would paste, in the order they are needed.
    assert f"    kubectl certificate approve {client_csr}\n" in result.stdout
    assert f"    kubectl certificate approve {serving_csr}\n" in result.stdout
    assert result.stdout.index(client_csr) < result.stdout.index(serving_csr)

    files = sorted(p.name for p in out.iterdir())
    assert files == ["kubeconfig", "kubelet-client-current.pem", "kubelet-server-current.pem"]
    for path in out.iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    assert stat.S_IMODE(out.stat().st_mode) == 0o700

    # The kubeconfig authenticates as the node, which the API server confirms.
    whoami = json.loads(
        k8s_controllers.kubectl("auth", "whoami", "-o", "json", kubeconfig=out / "kubeconfig").stdout
    )
    assert whoami["status"]["userInfo"]["username"] == "system:node:certs-a"
    assert "system:nodes" in whoami["status"]["userInfo"]["groups"]

    client = certificate(out / "kubelet-client-current.pem")
    assert client.subject.rfc4514_string() == "CN=system:node:certs-a,O=system:nodes"
    serving = certificate(out / "kubelet-server-current.pem")
    sans = serving.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(ip) for ip in sans.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    assert sans.get_values_for_type(x509.DNSName) == ["certs-a.lab"]

    # The requests as the cluster recorded them: the client one from the bootstrap identity, the
    # serving one from the node itself, each with the kubelet's signer and usages; the key never left.
    client_obj, serving_obj = csr(k8s_controllers, client_csr), csr(k8s_controllers, serving_csr)
    assert client_obj["spec"]["signerName"] == "kubernetes.io/kube-apiserver-client-kubelet"
    assert sorted(client_obj["spec"]["usages"]) == ["client auth", "digital signature"]
    assert client_obj["spec"]["username"] == "system:serviceaccount:vkpy-ops:vkpy-bootstrap"
    assert serving_obj["spec"]["signerName"] == "kubernetes.io/kubelet-serving"
    assert sorted(serving_obj["spec"]["usages"]) == ["digital signature", "server auth"]
    assert serving_obj["spec"]["username"] == "system:node:certs-a"
    assert "PRIVATE KEY" not in json.dumps([client_obj, serving_obj])
    assert not list(out.glob("*.pending"))

    shown = vkpy_cli("certs", "show", str(out))
    assert shown.returncode == 0
    assert "CN=system:node:certs-a, O=system:nodes" in shown.stdout
    assert "127.0.0.1, certs-a.lab" in shown.stdout


def test_a_denied_request_says_so_with_the_reason(
    k8s_controllers: ControlPlane, bootstrap_kubeconfig: Path, approver: StartApprover, tmp_path: Path
) -> None:
    approver("vkpy-client-certs-denied-", verb="deny")
    out = tmp_path / "certs-denied"
    result = vkpy_cli(
        "certs",
        "request",
        "--node",
        "certs-denied",
        "--out",
        str(out),
        "--kubeconfig",
        str(bootstrap_kubeconfig),
        "--timeout",
        "60",
    )
    assert result.returncode == 1
    assert "was denied" in result.stderr
    # kubectl certificate deny's own reason and message, passed on.
    assert "KubectlDeny: This CSR was denied by kubectl certificate deny." in result.stderr
    # Nothing usable is left behind, and the next attempt will make a fresh key and request.
    assert not (out / "kubelet-client-current.pem").exists()
    assert not list(out.glob("*.pending"))


def test_an_unapproved_request_times_out_naming_the_command(
    k8s_controllers: ControlPlane, bootstrap_kubeconfig: Path, tmp_path: Path
) -> None:
    out = tmp_path / "certs-late"
    result = vkpy_cli(
        "certs",
        "request",
        "--node",
        "certs-late",
        "--out",
        str(out),
        "--client-only",
        "--kubeconfig",
        str(bootstrap_kubeconfig),
        "--timeout",
        "2s",
    )
    assert result.returncode == 1
    (pending,) = csrs(k8s_controllers, "vkpy-client-certs-late-")
    name = pending["metadata"]["name"]
    assert (
        f"was not approved within 2 s: approve it with `kubectl certificate approve {name}`" in result.stderr
    )
    # Asking again continues the same request (same key): approving once is enough.
    again = vkpy_cli(
        "certs",
        "request",
        "--node",
        "certs-late",
        "--out",
        str(out),
        "--client-only",
        "--kubeconfig",
        str(bootstrap_kubeconfig),
        "--timeout",
        "1s",
    )
    assert f"Submitted CertificateSigningRequest {name} " in again.stdout
    assert len(csrs(k8s_controllers, "vkpy-client-certs-late-")) == 1


def test_a_request_nobody_may_make_says_which_right_is_missing(
    k8s_cluster: ControlPlane, tmp_path: Path
) -> None:
    nobody = service_account_kubeconfig(k8s_cluster, tmp_path, "vkpy-ops", "nobody")
    result = vkpy_cli(
        "certs",
        "request",
        "--node",
        "certs-nobody",
        "--out",
        str(tmp_path / "out"),
        "--kubeconfig",
        str(nobody),
        "--timeout",
        "5",
    )
    assert result.returncode == 1
    assert "may not create CertificateSigningRequests" in result.stderr
    assert "system:node-bootstrapper" in result.stderr


@pytest.fixture(scope="module")
def unsigned_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    """etcd and an API server, no controller-manager: requests get approved but nobody signs."""
    plane = ControlPlane.start(tmp_path_factory.mktemp("no-signer"))
    try:
        yield plane
    finally:
        plane.stop()


def test_an_approved_request_nobody_signs_names_the_missing_signer(
    unsigned_cluster: ControlPlane, tmp_path: Path
) -> None:
    person = Approver(unsigned_cluster, "vkpy-client-certs-unsigned-").start()
    try:
        result = vkpy_cli(
            "certs",
            "request",
            "--node",
            "certs-unsigned",
            "--out",
            str(tmp_path / "out"),
            "--client-only",
            "--kubeconfig",
            str(unsigned_cluster.admin_kubeconfig),
            "--timeout",
            "4s",
        )
    finally:
        person.stop()
    assert person.handled, "the request was never approved"
    assert result.returncode == 1
    assert "Approved (KubectlApprove" in result.stdout
    assert "was approved" in result.stderr
    assert "nobody signed it" in result.stderr
    assert "--cluster-signing-cert-file" in result.stderr
