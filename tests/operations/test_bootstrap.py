"""`vkpy run` getting its own certificates (the kubelet's --bootstrap-kubeconfig), renewing them
before they expire without a restart, and refusing credentials that cannot work."""

from __future__ import annotations

import datetime
import os
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from helpers import jsonpath, pod_manifest, probe_calls, wait_node_ready, wait_phase
from ops_support import (
    RunVkpy,
    StartApprover,
    base_config,
    certificate,
    csrs,
    http_get,
    local_node,
    log_events,
    metric,
    served_certificate,
    stable_port,
    wait_until,
)

from vkpy.testing.cluster import ControlPlane
from vkpy.testing.pki import CertPair, write_kubeconfig


@pytest.mark.controllers
def test_vkpy_bootstraps_and_runs_a_pod_on_the_certificates_it_obtained(
    k8s_controllers: ControlPlane,
    k8s_namespace: str,
    bootstrap_kubeconfig: Path,
    approver: StartApprover,
    run_vkpy: RunVkpy,
    tmp_path: Path,
) -> None:
    person = approver("vkpy-")
    pki = tmp_path / "pki"
    config = base_config(k8s_controllers)
    # Only bootstrap credentials (which may ask for certificates and nothing else); no kubeconfig
    # for the nodes, and none to fall back on.
    config["certificates"] = {"dir": str(pki), "bootstrap_kubeconfig": str(bootstrap_kubeconfig)}
    config["nodes"] = [local_node("boot-a", tmp_path / "state")]
    vkpy = run_vkpy(config, env={"KUBECONFIG": str(tmp_path / "no-such-kubeconfig")})

    wait_node_ready(k8s_controllers, "boot-a", timeout=90)
    k8s_controllers.apply(
        pod_manifest("hello", "boot-a", ["sh", "-c", "echo from-the-device"], k8s_namespace)
    )
    wait_phase(k8s_controllers, "hello", k8s_namespace, "Succeeded")
    # kubectl logs goes through the API server, which verifies the serving certificate vkpy got.
    assert k8s_controllers.kubectl("logs", "hello", "-n", k8s_namespace).stdout == "from-the-device\n"

    (client_csr,) = csrs(k8s_controllers, "vkpy-client-boot-a-")
    (serving_csr,) = csrs(k8s_controllers, "vkpy-serving-boot-a-")
    assert client_csr["spec"]["username"] == "system:serviceaccount:vkpy-ops:vkpy-bootstrap"
    assert serving_csr["spec"]["username"] == "system:node:boot-a"
    assert {client_csr["metadata"]["name"], serving_csr["metadata"]["name"]} <= set(person.handled)
    # vkpy said what to run while it waited.
    asked = {e["csr"]: e["approve"] for e in log_events(vkpy.log_text(), "certificate.approval_needed")}
    assert (
        asked[client_csr["metadata"]["name"]]
        == f"kubectl certificate approve {client_csr['metadata']['name']}"
    )

    node_dir = pki / "boot-a"
    assert stat.S_IMODE(node_dir.stat().st_mode) == 0o700
    for name in ("kubeconfig", "kubelet-client-current.pem", "kubelet-server-current.pem"):
        assert stat.S_IMODE((node_dir / name).stat().st_mode) == 0o600
    assert served_certificate(config["kubelet"]["port"]).serial_number == (
        certificate(node_dir / "kubelet-server-current.pem").serial_number
    )

    # A restart finds valid certificates and asks for nothing.
    vkpy.stop()
    again = run_vkpy(config, name="again", env={"KUBECONFIG": str(tmp_path / "no-such-kubeconfig")})
    again.wait_logged('"vkpy.started"', timeout=60)
    assert len(csrs(k8s_controllers, "vkpy-client-boot-a-")) == 1
    assert len(csrs(k8s_controllers, "vkpy-serving-boot-a-")) == 1
    assert log_events(again.log_text(), "certificate.loaded")


@pytest.mark.controllers
def test_certificates_are_renewed_when_their_remaining_life_falls_under_the_threshold(
    k8s_controllers: ControlPlane,
    k8s_namespace: str,
    bootstrap_kubeconfig: Path,
    approver: StartApprover,
    run_vkpy: RunVkpy,
    probe_dir: Path,
    tmp_path: Path,
) -> None:
    person = approver("vkpy-")
    pki = tmp_path / "pki"
    metrics_port = stable_port()
    config = base_config(k8s_controllers)
    # The shortest lifetime the API grants (600 s), renewed once less than 585 s is left: about
    # 15 s after each certificate is issued.
    config["certificates"] = {
        "dir": str(pki),
        "bootstrap_kubeconfig": str(bootstrap_kubeconfig),
        "expiration": "10m",
        "renew_before": "585s",
    }
    config["metrics"] = {"address": "127.0.0.1", "port": metrics_port}
    config["nodes"] = [local_node("renew-a", tmp_path / "state")]
    vkpy = run_vkpy(config)
    client_path = pki / "renew-a" / "kubelet-client-current.pem"
    serving_path = pki / "renew-a" / "kubelet-server-current.pem"
    # Read as soon as they exist: the renewal is due 15 s after issue, and a loaded machine can
    # take longer than that to bring the node and a pod up.
    wait_until(lambda: client_path.exists() and serving_path.exists(), timeout=90, what="certificates")
    first_client, first_serving = certificate(client_path), certificate(serving_path)
    assert first_client.not_valid_after_utc - datetime.datetime.now(datetime.UTC) > datetime.timedelta(
        seconds=560
    )
    wait_node_ready(k8s_controllers, "renew-a", timeout=90)
    k8s_controllers.apply(pod_manifest("long", "renew-a", ["sleep", "300"], k8s_namespace))
    wait_phase(k8s_controllers, "long", k8s_namespace, "Running")

    def renewed(kind: str) -> list[dict[str, object]]:
        return [e for e in log_events(vkpy.log_text(), "certificate.renewed") if e["certificate"] == kind]

    wait_until(lambda: renewed("client") and renewed("serving"), timeout=60, what="both renewals")
    person.pause()  # one renewal each is enough to look at

    # Renewed when less than 585 s was left, not before: the request was made by then.
    client_requests = csrs(k8s_controllers, "vkpy-client-renew-a-")
    renewal = client_requests[1]
    asked_at = datetime.datetime.fromisoformat(
        renewal["metadata"]["creationTimestamp"].replace("Z", "+00:00")
    )
    left_when_asked = (first_client.not_valid_after_utc - asked_at).total_seconds()
    assert 570 <= left_when_asked <= 586, left_when_asked
    # With the node's own identity, as the kubelet renews.
    assert renewal["spec"]["username"] == "system:node:renew-a"

    second_client = certificate(client_path)
    assert second_client.serial_number != first_client.serial_number
    assert second_client.not_valid_after_utc > first_client.not_valid_after_utc
    second_serving = certificate(serving_path)
    assert second_serving.serial_number != first_serving.serial_number
    # New connections to the kubelet port present the new serving certificate.
    assert served_certificate(config["kubelet"]["port"]).serial_number == second_serving.serial_number
    assert log_events(vkpy.log_text(), "api.certificate_rotated")

    # Same process, same pod (never re-created); the node keeps working with the new identity.
    assert vkpy.running
    assert (
        len([c for c in probe_calls(probe_dir, "renew-a", "create_pod") if c["pod"].endswith("/long")]) == 1
    )
    assert jsonpath(k8s_controllers, "pod", "long", "{.status.phase}", k8s_namespace) == "Running"
    k8s_controllers.apply(pod_manifest("after", "renew-a", ["sh", "-c", "echo renewed"], k8s_namespace))
    wait_phase(k8s_controllers, "after", k8s_namespace, "Succeeded")
    assert k8s_controllers.kubectl("logs", "after", "-n", k8s_namespace).stdout == "renewed\n"
    wait_node_ready(k8s_controllers, "renew-a")

    status, text = http_get(f"http://127.0.0.1:{metrics_port}/metrics")
    assert status == 200
    for kind in ("client", "serving"):
        assert (
            metric(text, "vkpy_certificate_renewals_total", node="renew-a", kind=kind, outcome="renewed") or 0
        ) >= 1
        expiry = metric(text, "vkpy_certificate_expiry_timestamp_seconds", node="renew-a", kind=kind)
        assert expiry is not None
        assert expiry > datetime.datetime.now(datetime.UTC).timestamp() + 500
    k8s_controllers.kubectl("delete", "pod", "long", "-n", k8s_namespace, "--grace-period=1", "--wait=true")


# -- credentials that cannot work are refused before anything is sent ------------------------------


def _expired_identity(cluster: ControlPlane, node: str, directory: Path) -> Path:
    """A kubeconfig whose client certificate (signed by the cluster CA) expired an hour ago."""
    ca = cluster.ca
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "system:nodes"),
            x509.NameAttribute(NameOID.COMMON_NAME, f"system:node:{node}"),
        ]
    )
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=2))
        .not_valid_after(now - datetime.timedelta(hours=1))
        .sign(ca.key, hashes.SHA256())
    )
    directory.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = directory / "expired.crt", directory / "expired.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as file:
        file.write(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
    return write_kubeconfig(
        directory / "kubeconfig", cluster.server, ca.files.cert, node, CertPair(cert_path, key_path)
    )


@pytest.mark.parametrize("problem", ["another node's certificate", "an expired certificate"])
def test_credentials_that_cannot_act_for_the_node_are_refused_with_the_reason(
    k8s_cluster: ControlPlane, run_vkpy: RunVkpy, tmp_path: Path, problem: str
) -> None:
    node = "ident-a" if problem.startswith("another") else "ident-b"
    if problem.startswith("another"):
        kubeconfig = k8s_cluster.node_identity("ident-other").kubeconfig
        expected = ["system:node:ident-other, not system:node:ident-a", "NodeRestriction"]
    else:
        kubeconfig = _expired_identity(k8s_cluster, node, tmp_path / "expired")
        expected = ["the client certificate expired at", "vkpy certs request --node ident-b"]
    config = base_config(k8s_cluster, serving=k8s_cluster.serving_certificate("ident"))
    config["nodes"] = [local_node(node, tmp_path / "state", kubeconfig=str(kubeconfig))]
    vkpy = run_vkpy(config)
    assert vkpy.process is not None
    assert vkpy.process.wait(timeout=60) == 2  # a configuration error
    text = vkpy.log_text()
    assert f"nodes[0].kubeconfig ({kubeconfig})" in text
    for words in expected:
        assert words in text
    # Nothing reached the cluster on this node's behalf.
    assert k8s_cluster.kubectl("get", "node", node, check=False).returncode != 0
