"""Pure logic behind operations: the metrics text, /readyz's answer, certificate facts, files and
renewal times, and the new configuration keys' validation."""

from __future__ import annotations

import datetime
import stat
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.x509.oid import NameOID

from vkpy.config import ConfigValidationError, build_config
from vkpy.kubelet.metrics import Check, Family, Histogram, NodeMetrics, readyz_text, render
from vkpy.node.certificates import (
    CLIENT,
    SERVING,
    CertificateInfo,
    CertificateStore,
    build_csr,
    csr_name,
    generate_key,
    identity_problem,
    renewal_time,
)

NOW = datetime.datetime(2026, 6, 1, 12, 0, tzinfo=datetime.UTC)


# -- metrics ----------------------------------------------------------------------------------------


def test_histograms_are_cumulative_and_end_with_inf() -> None:
    histogram = Histogram(buckets=(0.1, 1.0))
    for value in (0.05, 0.5, 0.5, 3.0):
        histogram.observe(value)
    family = Family("vkpy_x_seconds", "histogram", "X.")
    family.add_histogram(histogram, hook="create_pod")
    assert render([family]).splitlines() == [
        "# HELP vkpy_x_seconds X.",
        "# TYPE vkpy_x_seconds histogram",
        'vkpy_x_seconds_bucket{hook="create_pod",le="0.1"} 1',
        'vkpy_x_seconds_bucket{hook="create_pod",le="1"} 3',
        'vkpy_x_seconds_bucket{hook="create_pod",le="+Inf"} 4',
        'vkpy_x_seconds_sum{hook="create_pod"} 4.05',
        'vkpy_x_seconds_count{hook="create_pod"} 4',
    ]


def test_label_values_are_escaped_and_empty_histograms_left_out() -> None:
    gauge = Family("vkpy_g", "gauge", "G.")
    gauge.add(1.5, watch='pods:a"b\\c\nd')
    assert render([gauge, Family("vkpy_h", "histogram", "H.")]) == (
        '# HELP vkpy_g G.\n# TYPE vkpy_g gauge\nvkpy_g{watch="pods:a\\"b\\\\c\\nd"} 1.5\n'
    )


def test_node_metrics_record_hooks_devices_and_leases() -> None:
    metrics = NodeMetrics()
    metrics.observe_hook("create_pod", "probe", 0.002, "deferred")
    metrics.observe_hook("create_pod", "probe", 0.004, "error")
    metrics.device_health_changed(False)
    metrics.device_health_changed(True)
    assert metrics.lease_age() is None
    metrics.lease_renewed()
    assert metrics.hook_seconds[("create_pod", "probe")].count == 2
    assert metrics.hook_calls[("create_pod", "probe", "error")] == 1
    assert (metrics.device_disconnects, metrics.device_reconnects) == (1, 1)
    age = metrics.lease_age()
    assert age is not None
    assert 0 <= age < 1


def test_readyz_lists_every_check_and_fails_if_one_fails() -> None:
    ready, body = readyz_text([Check("api", True), Check("leases", False, "n1: Lease last renewed 45 s ago")])
    assert not ready
    assert body == ("[+]api ok\n[-]leases failed: n1: Lease last renewed 45 s ago\nreadyz check failed\n")
    assert readyz_text([Check("api", True)]) == (True, "[+]api ok\nreadyz check passed\n")


# -- certificates -----------------------------------------------------------------------------------


def _info(cn: str, orgs: tuple[str, ...] = ("system:nodes",), days: int = 1) -> CertificateInfo:
    return CertificateInfo(
        common_name=cn,
        organizations=orgs,
        not_before=NOW - datetime.timedelta(hours=1),
        not_after=NOW + datetime.timedelta(days=days),
        serial=1,
    )


@pytest.mark.parametrize(
    ("info", "problem"),
    [
        (_info("system:node:n1"), None),
        (_info("jane", ("developers",)), None),  # not a node identity: RBAC decides
        (_info("system:node:n2"), "is for system:node:n2, not system:node:n1"),
        (_info("n2", ("system:nodes",)), "is for n2, not system:node:n1"),
        (_info("system:node:n1", days=-1), "expired at"),
    ],
)
def test_identity_problems_name_what_is_wrong(info: CertificateInfo, problem: str | None) -> None:
    found = identity_problem(info, "n1", NOW)
    if problem is None:
        assert found is None
    else:
        assert found is not None
        assert problem in found


def test_renewal_time_honours_the_threshold_or_the_kubelets_window() -> None:
    info = CertificateInfo(
        "system:node:n1", ("system:nodes",), NOW, NOW + datetime.timedelta(seconds=1000), 1
    )
    assert renewal_time(info, datetime.timedelta(seconds=300), jitter=0.5) == NOW + datetime.timedelta(
        seconds=700
    )
    assert renewal_time(info, None, jitter=0.0) == NOW + datetime.timedelta(seconds=700)
    assert renewal_time(info, None, jitter=1.0) == NOW + datetime.timedelta(seconds=900)
    assert renewal_time(info, None, jitter=7.0) == NOW + datetime.timedelta(seconds=900)


def test_requests_carry_the_node_identity_and_the_serving_names() -> None:
    key = generate_key()
    request = x509.load_pem_x509_csr(build_csr(key, "n1", SERVING, ["10.0.0.5", "n1.lab", "10.0.0.5"]))
    assert request.subject.rfc4514_string() == "CN=system:node:n1,O=system:nodes"
    sans = request.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(ip) for ip in sans.get_values_for_type(x509.IPAddress)] == ["10.0.0.5"]
    assert sans.get_values_for_type(x509.DNSName) == ["n1.lab"]
    client = x509.load_pem_x509_csr(build_csr(key, "n1", CLIENT))
    with pytest.raises(x509.ExtensionNotFound):
        client.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    with pytest.raises(ValueError, match="at least one IP address or DNS name"):
        build_csr(key, "n1", SERVING, [])


def test_request_names_are_stable_per_key_and_fit_the_api() -> None:
    key, other = generate_key(), generate_key()
    assert csr_name(CLIENT, "n1", key) == csr_name(CLIENT, "n1", key)
    assert csr_name(CLIENT, "n1", key) != csr_name(CLIENT, "n1", other)
    assert csr_name(SERVING, "n1", key, ["10.0.0.1"]) != csr_name(SERVING, "n1", key, ["10.0.0.2"])
    long = csr_name(CLIENT, "a" * 253, key)
    assert len(long) <= 253
    assert long.startswith("vkpy-client-aaa")


def _sign(key: Any, issuer_key: Any, cn: str) -> bytes:
    from cryptography.hazmat.primitives import serialization

    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW)
        .not_valid_after(NOW + datetime.timedelta(days=1))
        .sign(issuer_key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM)


def test_the_store_keeps_certificate_and_key_together_privately(tmp_path: Path) -> None:
    store = CertificateStore(tmp_path / "pki" / "n1")
    key = store.pending_key(CLIENT)
    assert store.pending_key(CLIENT).private_numbers() == key.private_numbers()  # reused, not remade
    assert stat.S_IMODE(store.pending_path(CLIENT).stat().st_mode) == 0o600
    assert store.load(CLIENT) is None

    with pytest.raises(ValueError, match="not for the key"):
        store.save(CLIENT, _sign(generate_key(), key, "system:node:n1"), key)
    path = store.save(CLIENT, _sign(key, key, "system:node:n1"), key)
    assert not store.pending_path(CLIENT).exists()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(store.directory.stat().st_mode) == 0o700
    loaded = store.load(CLIENT)
    assert loaded is not None
    assert loaded.info.common_name == "system:node:n1"

    # A damaged file is "no certificate", never an exception.
    path.write_bytes(path.read_bytes()[:200])
    assert store.load(CLIENT) is None

    kubeconfig = yaml.safe_load(
        store.write_kubeconfig("n1", "https://10.0.0.1:6443", b"CA", None).read_text()
    )
    user = kubeconfig["users"][0]
    assert user["name"] == "system:node:n1"
    assert user["user"] == {
        "client-certificate": "kubelet-client-current.pem",
        "client-key": "kubelet-client-current.pem",
    }
    assert kubeconfig["clusters"][0]["cluster"]["certificate-authority-data"] == "Q0E="
    assert stat.S_IMODE(store.kubeconfig.stat().st_mode) == 0o600


# -- configuration ----------------------------------------------------------------------------------


def _config(tmp_path: Path, **top: Any) -> Any:
    raw = {"nodes": [{"name": "n1", "transport": "local"}], **top}
    return build_config(raw, tmp_path / "vkpy.yaml")


def test_the_operations_keys_have_working_defaults(tmp_path: Path) -> None:
    config = _config(tmp_path)
    assert config.certificates is None
    assert not config.leader_election.enabled
    assert config.leader_election.lease_duration == 15.0
    assert config.metrics.port is None
    config = _config(
        tmp_path,
        certificates={"dir": "pki", "expiration": "24h", "renew_before": "6h"},
        leader_election={"enabled": True, "lease_duration": "30s", "renew_interval": "5s"},
        metrics={"port": 9090},
    )
    assert config.certificates.dir == tmp_path / "pki"
    assert config.certificates.renew_before == 6 * 3600
    assert config.leader_election.renew_interval == 5.0
    assert config.metrics.port == 9090


@pytest.mark.parametrize(
    ("top", "message"),
    [
        (
            {"certificates": {"dir": "pki", "expiration": "5m"}},
            "certificates.expiration: must be at least 600s",
        ),
        (
            {"certificates": {"dir": "pki", "expiration": "1h", "renew_before": "2h"}},
            "certificates.renew_before: must be shorter than expiration (3600s)",
        ),
        ({"certificates": {"expiration": "1h"}}, "certificates.dir: missing required key"),
        (
            {"certificates": {"dir": "pki", "bootstrap_kubeconfig": "nope.kubeconfig"}},
            "certificates.bootstrap_kubeconfig: no such file",
        ),
        (
            {"leader_election": {"enabled": True, "lease_duration": "6s", "renew_interval": "3s"}},
            "leader_election.renew_interval: must be at most a third of lease_duration (2s)",
        ),
        ({"metrics": {"port": 70000}}, "metrics.port: a port must be between 1 and 65535"),
    ],
)
def test_the_operations_keys_are_validated(tmp_path: Path, top: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigValidationError) as caught:
        _config(tmp_path, **top)
    assert message in str(caught.value)
