"""TLS for the kubelet API: the server context, a self-signed fallback certificate, and who the
caller is according to its client certificate."""

from __future__ import annotations

import datetime
import ipaddress
import os
import ssl
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import attrs
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

_SELF_SIGNED_VALIDITY = datetime.timedelta(days=365)


def server_context(client_ca: Path | None) -> ssl.SSLContext:
    """A TLS 1.2+ server context without its certificate yet (see :func:`load_certificate`).

    With ``client_ca``, client certificates are verified against it but not required: a caller
    without one completes the handshake and gets a readable 401 from the server instead of a TLS
    alert. A certificate from another CA, or one not made for client authentication, still fails
    the handshake."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    # aiohttp speaks HTTP/1.1 only; saying so lets the apiserver's Go client skip trying h2.
    context.set_alpn_protocols(["http/1.1"])
    if client_ca is not None:
        context.load_verify_locations(cafile=client_ca)
        context.verify_mode = ssl.CERT_OPTIONAL
    return context


def load_certificate(context: ssl.SSLContext, cert: Path, key: Path) -> None:
    """Make ``cert``/``key`` the serving certificate of ``context``; connections accepted from now
    on present it, open ones keep theirs.

    The pair is tried on a scratch context first: a failed ``load_cert_chain`` on the live one could
    leave it with the new certificate and the old key. Raises ``OSError`` (unreadable file) or
    ``ssl.SSLError`` (bad PEM, key does not match) with the live context unchanged."""
    ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(cert, key)
    context.load_cert_chain(cert, key)


@attrs.frozen
class PemCertificate:
    """A certificate and its unencrypted private key, PEM-encoded, in memory."""

    cert: bytes
    key: bytes = attrs.field(repr=False)


def self_signed_certificate(hosts: Iterable[str]) -> PemCertificate:
    """A self-signed serving certificate (EC P-256, one year) for ``hosts``: DNS names or IP
    addresses, the first one also being the subject CN. The apiserver accepts it only when it does
    not verify kubelet certificates (no ``--kubelet-certificate-authority``)."""
    names = list(dict.fromkeys(hosts)) or ["localhost"]
    sans: list[x509.GeneralName] = []
    for host in names:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            sans.append(x509.DNSName(host))
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + _SELF_SIGNED_VALIDITY)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .sign(key, hashes.SHA256())
    )
    return PemCertificate(
        cert=cert.public_bytes(serialization.Encoding.PEM),
        key=key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ),
    )


def load_pem_certificate(context: ssl.SSLContext, pem: PemCertificate) -> None:
    """:func:`load_certificate` from memory. ``load_cert_chain`` only reads files, so the pair
    goes through a private temporary directory that is gone when this returns."""
    with tempfile.TemporaryDirectory(prefix="vkpy-kubelet-") as directory:  # created 0700
        cert, key = Path(directory, "tls.crt"), Path(directory, "tls.key")
        for path, data in ((cert, pem.cert), (key, pem.key)):
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as file:
                file.write(data)
        load_certificate(context, cert, key)


def peer_common_name(peercert: Any) -> str | None:
    """The subject CN of a verified client certificate (``SSLObject.getpeercert()``), ``""`` when
    it has none, ``None`` when the caller presented no certificate (anonymous)."""
    if not peercert:
        return None
    for rdn in peercert.get("subject", ()):
        for attribute, value in rdn:
            if attribute == "commonName":
                return str(value)
    return ""
