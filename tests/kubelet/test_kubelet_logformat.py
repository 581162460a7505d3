"""Timestamps, the byte limit, the metrics text and the TLS helpers (pure logic)."""

from __future__ import annotations

import datetime
import ipaddress
import ssl

from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from kubelet_support import Pki

from vkpy import LogLine
from vkpy.kubelet import self_signed_certificate
from vkpy.kubelet.logformat import ByteBudget, render_line, rfc3339_nano
from vkpy.kubelet.metrics import KubeletMetrics
from vkpy.kubelet.tls import peer_common_name, server_context

UTC = datetime.UTC


def test_rfc3339_nano_is_fixed_width_utc() -> None:
    assert rfc3339_nano(datetime.datetime(2026, 11, 28, 8, 0, 0, 123456, tzinfo=UTC)) == (
        "2026-11-28T08:00:00.123456000Z"
    )
    assert (
        rfc3339_nano(datetime.datetime(2026, 11, 28, 8, 0, 0, tzinfo=UTC)) == "2026-11-28T08:00:00.000000000Z"
    )


def test_rfc3339_nano_converts_offsets_and_takes_naive_as_utc() -> None:
    plus_one = datetime.timezone(datetime.timedelta(hours=1))
    assert rfc3339_nano(datetime.datetime(2026, 11, 28, 9, 0, 0, 5, tzinfo=plus_one)) == (
        "2026-11-28T08:00:00.000005000Z"
    )
    assert rfc3339_nano(datetime.datetime(2026, 11, 28, 8, 0, 0)) == "2026-11-28T08:00:00.000000000Z"


def test_rfc3339_nano_pads_early_years() -> None:
    assert rfc3339_nano(datetime.datetime(1, 1, 1, tzinfo=UTC)) == "0001-01-01T00:00:00.000000000Z"


def test_render_line() -> None:
    line = LogLine(time=datetime.datetime(2026, 11, 28, 8, 0, 0, 1000, tzinfo=UTC), data=b"hi\n")
    assert render_line(line, timestamps=False) == b"hi\n"
    assert render_line(line, timestamps=True) == b"2026-11-28T08:00:00.001000000Z hi\n"


def test_byte_budget_without_limit_passes_everything() -> None:
    budget = ByteBudget(None)
    assert budget.take(b"x" * 1000) == b"x" * 1000
    assert not budget.exhausted


def test_byte_budget_cuts_at_exactly_the_limit() -> None:
    budget = ByteBudget(8)
    assert budget.take(b"hello\n") == b"hello\n"
    assert (budget.remaining, budget.exhausted) == (2, False)
    assert budget.take(b"world\n") == b"wo"
    assert budget.exhausted
    assert budget.take(b"more") == b""


def test_byte_budget_exact_fit_is_exhausted() -> None:
    budget = ByteBudget(3)
    assert budget.take(b"abc") == b"abc"
    assert budget.exhausted


def test_metrics_text() -> None:
    metrics = KubeletMetrics()
    metrics.count_request("pods", 200)
    metrics.count_request("containerLogs", 404)
    metrics.count_request("pods", 200)
    metrics.log_bytes = 12
    metrics.log_streams = 1
    text = metrics.render()
    assert 'vkpy_kubelet_requests_total{route="pods",code="200"} 2\n' in text
    assert 'vkpy_kubelet_requests_total{route="containerLogs",code="404"} 1\n' in text
    assert "# TYPE vkpy_kubelet_requests_total counter\n" in text
    assert "vkpy_kubelet_log_bytes_total 12\n" in text
    assert "# TYPE vkpy_kubelet_log_streams gauge\nvkpy_kubelet_log_streams 1\n" in text
    assert text.endswith("\n")


def test_self_signed_certificate_names_its_hosts() -> None:
    pem = self_signed_certificate(["10.0.0.7", "device-gw", "localhost", "device-gw"])
    cert = x509.load_pem_x509_certificate(pem.cert)
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "10.0.0.7"
    assert cert.issuer == cert.subject
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("10.0.0.7")]
    assert sans.get_values_for_type(x509.DNSName) == ["device-gw", "localhost"]
    usage = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(usage) == [ExtendedKeyUsageOID.SERVER_AUTH]
    assert b"PRIVATE KEY" in pem.key
    assert "PRIVATE" not in repr(pem)


def test_self_signed_certificate_without_hosts_is_for_localhost() -> None:
    cert = x509.load_pem_x509_certificate(self_signed_certificate([]).cert)
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "localhost"


def test_server_context_settings(pki: Pki) -> None:
    anonymous = server_context(None)
    assert anonymous.minimum_version == ssl.TLSVersion.TLSv1_2
    assert anonymous.verify_mode == ssl.CERT_NONE
    verifying = server_context(pki.ca.files.cert)
    assert verifying.minimum_version == ssl.TLSVersion.TLSv1_2
    # Optional, not required: the server answers a missing certificate with a 401 itself.
    assert verifying.verify_mode == ssl.CERT_OPTIONAL


def test_peer_common_name() -> None:
    assert peer_common_name(None) is None
    assert peer_common_name({}) is None
    subject = ((("organizationName", "system:masters"),), (("commonName", "kube-apiserver"),))
    assert peer_common_name({"subject": subject}) == "kube-apiserver"
    assert peer_common_name({"subject": ((("organizationName", "x"),),)}) == ""
