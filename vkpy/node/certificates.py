"""A node's certificates as files and as X.509: keys, certificate requests, what a certificate says,
whether it is usable, and when to renew it.

Nothing here talks to the API server (that is :mod:`vkpy.node.csr`). The layout of a certificate
folder follows the kubelet's ``/var/lib/kubelet/pki``: each certificate and its key live together
in one PEM file (``kubelet-client-current.pem``), replaced atomically, so a reader never sees a new
certificate with an old key."""

from __future__ import annotations

import base64
import datetime
import hashlib
import ipaddress
import os
import secrets
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Final

import attrs
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

NODE_GROUP: Final = "system:nodes"
NODE_USER_PREFIX: Final = "system:node:"
# The signer caps shorter requests at this (certificates.k8s.io/v1 expirationSeconds minimum).
MIN_EXPIRATION_SECONDS: Final = 600
_CSR_NAME_LIMIT: Final = 253


@attrs.frozen
class CertificateKind:
    """A kind of node certificate: who signs it, what it may be used for, where it is kept."""

    name: str
    signer: str
    usages: tuple[str, ...]
    stem: str
    extended_usage: x509.ObjectIdentifier


CLIENT: Final = CertificateKind(
    "client",
    "kubernetes.io/kube-apiserver-client-kubelet",
    ("digital signature", "client auth"),
    "kubelet-client",
    ExtendedKeyUsageOID.CLIENT_AUTH,
)
SERVING: Final = CertificateKind(
    "serving",
    "kubernetes.io/kubelet-serving",
    ("digital signature", "server auth"),
    "kubelet-server",
    ExtendedKeyUsageOID.SERVER_AUTH,
)


def node_user(node: str) -> str:
    """The user name a node's certificate authenticates as (``system:node:<node>``)."""
    return f"{NODE_USER_PREFIX}{node}"


# -- keys and requests ------------------------------------------------------------------------------


def generate_key() -> ec.EllipticCurvePrivateKey:
    """A new EC P-256 key: small, fast, and accepted by every Kubernetes signer."""
    return ec.generate_private_key(ec.SECP256R1())


def key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def load_key(pem: bytes) -> ec.EllipticCurvePrivateKey:
    key = serialization.load_pem_private_key(pem, password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ValueError("not an EC private key")
    return key


def split_names(names: Iterable[str]) -> tuple[list[str], list[str]]:
    """(IP addresses, DNS names) of ``names``, each kept once, in order."""
    ips: list[str] = []
    dns: list[str] = []
    for name in dict.fromkeys(n.strip() for n in names if n and n.strip()):
        try:
            ips.append(str(ipaddress.ip_address(name)))
        except ValueError:
            dns.append(name)
    return ips, dns


def build_csr(
    key: ec.EllipticCurvePrivateKey, node: str, kind: CertificateKind, names: Sequence[str] = ()
) -> bytes:
    """A PEM certificate request for ``node``'s ``kind`` certificate, as the kubelet makes it:
    subject ``O=system:nodes, CN=system:node:<node>``; a serving request carries ``names`` (IP
    addresses and DNS names) as subject alternative names."""
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, NODE_GROUP),
            x509.NameAttribute(NameOID.COMMON_NAME, node_user(node)),
        ]
    )
    builder = x509.CertificateSigningRequestBuilder().subject_name(subject)
    if kind is SERVING:
        ips, dns = split_names(names)
        if not ips and not dns:
            raise ValueError("a serving certificate needs at least one IP address or DNS name")
        sans: list[x509.GeneralName] = [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips]
        sans += [x509.DNSName(name) for name in dns]
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)


def public_der(key: ec.EllipticCurvePublicKey | ec.EllipticCurvePrivateKey) -> bytes:
    public = key.public_key() if isinstance(key, ec.EllipticCurvePrivateKey) else key
    return public.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def csr_name(
    kind: CertificateKind, node: str, key: ec.EllipticCurvePrivateKey, names: Sequence[str] = ()
) -> str:
    """A CSR name derived from the key and the names asked for: asking again with the same key
    (after a restart) finds the request already made, and perhaps approved, instead of making the
    approver approve twice."""
    ips, dns = split_names(names)
    material = public_der(key) + "\0".join([node, *sorted(ips), *sorted(dns)]).encode()
    digest = hashlib.sha256(material).hexdigest()[:16]
    prefix = f"vkpy-{kind.name}-"
    room = _CSR_NAME_LIMIT - len(prefix) - len(digest) - 1
    return f"{prefix}{node[:room].rstrip('.-')}-{digest}"


def request_key_der(request_pem: bytes) -> bytes | None:
    """The public key of a PEM certificate request, or ``None`` when it is not one vkpy makes."""
    try:
        public = x509.load_pem_x509_csr(request_pem).public_key()
    except ValueError:
        return None
    return public_der(public) if isinstance(public, ec.EllipticCurvePublicKey) else None


# -- what a certificate says ------------------------------------------------------------------------


@attrs.frozen
class CertificateInfo:
    """The facts about a certificate that vkpy acts on."""

    common_name: str
    organizations: tuple[str, ...]
    not_before: datetime.datetime
    not_after: datetime.datetime
    serial: int
    ip_addresses: tuple[str, ...] = ()
    dns_names: tuple[str, ...] = ()
    extended_usages: tuple[x509.ObjectIdentifier, ...] = ()

    @classmethod
    def from_certificate(cls, cert: x509.Certificate) -> CertificateInfo:
        def attribute(oid: x509.ObjectIdentifier) -> list[str]:
            return [str(a.value) for a in cert.subject.get_attributes_for_oid(oid)]

        ips: tuple[str, ...] = ()
        dns: tuple[str, ...] = ()
        try:
            sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
            ips = tuple(str(ip) for ip in sans.get_values_for_type(x509.IPAddress))
            dns = tuple(sans.get_values_for_type(x509.DNSName))
        except x509.ExtensionNotFound:
            pass
        try:
            usages = tuple(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)
        except x509.ExtensionNotFound:
            usages = ()
        names = attribute(NameOID.COMMON_NAME)
        return cls(
            common_name=names[0] if names else "",
            organizations=tuple(attribute(NameOID.ORGANIZATION_NAME)),
            not_before=cert.not_valid_before_utc,
            not_after=cert.not_valid_after_utc,
            serial=cert.serial_number,
            ip_addresses=ips,
            dns_names=dns,
            extended_usages=usages,
        )

    @classmethod
    def from_pem(cls, pem: bytes) -> CertificateInfo:
        """The first certificate of ``pem`` (the leaf of a chain)."""
        return cls.from_certificate(x509.load_pem_x509_certificate(pem))

    @property
    def lifetime(self) -> datetime.timedelta:
        return self.not_after - self.not_before

    def remaining(self, now: datetime.datetime) -> datetime.timedelta:
        return self.not_after - now

    def valid_at(self, now: datetime.datetime) -> bool:
        return self.not_before <= now < self.not_after

    def covers(self, names: Iterable[str]) -> bool:
        """Whether every IP address and DNS name of ``names`` is among the certificate's SANs."""
        ips, dns = split_names(names)
        return set(ips) <= set(self.ip_addresses) and set(dns) <= set(self.dns_names)


def identity_problem(info: CertificateInfo, node: str, now: datetime.datetime) -> str | None:
    """Why a client certificate cannot act for ``node``, or ``None``.

    A certificate of another node is refused here rather than by the API server: the
    NodeRestriction admission plugin lets ``system:node:X`` change only Node X, its Lease and the
    pods bound to X, so every write for ``node`` would fail with a 403 that does not say why. A
    certificate for a user that is not a node (an operator's, a service's) is fine: RBAC decides."""
    if now >= info.not_after:
        return f"the client certificate expired at {_stamp(info.not_after)}"
    if now < info.not_before:
        return f"the client certificate is not valid before {_stamp(info.not_before)} (is the clock right?)"
    is_node = info.common_name.startswith(NODE_USER_PREFIX) or NODE_GROUP in info.organizations
    if is_node and info.common_name != node_user(node):
        return (
            f"the client certificate is for {info.common_name or '(no common name)'!s}, not "
            f"{node_user(node)}: the NodeRestriction admission plugin refuses a node identity every "
            f"change to another node ({node!r}), its Lease and its pods"
        )
    return None


def _stamp(when: datetime.datetime) -> str:
    return when.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# -- when to renew ----------------------------------------------------------------------------------

RENEW_FROM: Final = 0.7
RENEW_UNTIL: Final = 0.9


def renewal_time(
    info: CertificateInfo, renew_before: datetime.timedelta | None, jitter: float
) -> datetime.datetime:
    """When to ask for the next certificate: when less than ``renew_before`` of its life is left,
    or (without it) at a point between 70 % and 90 % of its lifetime picked by ``jitter`` (0..1),
    as the kubelet does, so that many nodes issued together do not all renew together."""
    if renew_before is not None:
        return info.not_after - renew_before
    share = RENEW_FROM + (RENEW_UNTIL - RENEW_FROM) * min(max(jitter, 0.0), 1.0)
    return info.not_before + info.lifetime * share


# -- files ------------------------------------------------------------------------------------------


def write_private(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically, readable by the owner only (0600), never visible
    half-written or with wider permissions."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    scratch = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(scratch, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(scratch, path)
    except BaseException:
        scratch.unlink(missing_ok=True)
        raise


@attrs.frozen
class StoredCertificate:
    """A certificate (with its chain) and its key, as one PEM file holds them."""

    path: Path
    info: CertificateInfo
    cert_pem: bytes
    key: ec.EllipticCurvePrivateKey = attrs.field(repr=False)


def _blocks(pem: bytes) -> list[bytes]:
    blocks: list[bytes] = []
    current: list[bytes] = []
    for line in pem.splitlines(keepends=True):
        if line.startswith(b"-----BEGIN "):
            current = [line]
        elif current:
            current.append(line)
            if line.startswith(b"-----END "):
                blocks.append(b"".join(current))
                current = []
    return blocks


def _matches(cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> bool:
    public = cert.public_key()
    return isinstance(public, ec.EllipticCurvePublicKey) and public_der(public) == public_der(key)


@attrs.frozen
class CertificateStore:
    """One node's certificate folder: ``kubelet-client-current.pem``, ``kubelet-server-current.pem``
    (each the certificate chain, then its key), ``kubeconfig`` (using the client certificate), and
    while a request waits for approval its key (``*.key.pending``), so a restart asks again with
    the same key and finds the same request."""

    directory: Path

    def path(self, kind: CertificateKind) -> Path:
        return self.directory / f"{kind.stem}-current.pem"

    def pending_path(self, kind: CertificateKind) -> Path:
        return self.directory / f"{kind.stem}.key.pending"

    @property
    def kubeconfig(self) -> Path:
        return self.directory / "kubeconfig"

    def load(self, kind: CertificateKind) -> StoredCertificate | None:
        """The stored certificate, or ``None`` when there is none or it is unreadable, damaged, or
        not made for its key."""
        path = self.path(kind)
        try:
            pem = path.read_bytes()
        except OSError:
            return None
        certs = [b for b in _blocks(pem) if b.startswith(b"-----BEGIN CERTIFICATE-----")]
        keys = [b for b in _blocks(pem) if b"PRIVATE KEY-----" in b.splitlines()[0]]
        if not certs or not keys:
            return None
        try:
            cert = x509.load_pem_x509_certificate(certs[0])
            key = load_key(keys[0])
        except ValueError:
            return None
        if not _matches(cert, key):
            return None
        return StoredCertificate(path, CertificateInfo.from_certificate(cert), b"".join(certs), key)

    def save(self, kind: CertificateKind, cert_pem: bytes, key: ec.EllipticCurvePrivateKey) -> Path:
        """Store a newly issued certificate with its key; the pending key is no longer needed."""
        cert = x509.load_pem_x509_certificate(cert_pem)
        if not _matches(cert, key):
            raise ValueError("the issued certificate is not for the key it was requested with")
        path = self.path(kind)
        write_private(path, cert_pem.rstrip(b"\n") + b"\n" + key_pem(key))
        self.pending_path(kind).unlink(missing_ok=True)
        return path

    def pending_key(self, kind: CertificateKind) -> ec.EllipticCurvePrivateKey:
        """The key of the request under way, or a new one (saved before it is used)."""
        path = self.pending_path(kind)
        try:
            return load_key(path.read_bytes())
        except (OSError, ValueError):
            key = generate_key()
            write_private(path, key_pem(key))
            return key

    def discard_pending(self, kind: CertificateKind) -> None:
        """Forget the key of a request that was refused: the next attempt starts afresh."""
        self.pending_path(kind).unlink(missing_ok=True)

    def write_kubeconfig(
        self, node: str, server: str, ca_pem: bytes | None, tls_server_name: str | None
    ) -> Path:
        """A kubeconfig that authenticates as the node with its current client certificate. The
        certificate is named relative to the kubeconfig (both clients resolve it against the
        kubeconfig's folder), so the folder can be moved or mounted elsewhere."""
        cluster: dict[str, str] = {"server": server}
        if ca_pem:
            cluster["certificate-authority-data"] = base64.b64encode(ca_pem).decode()
        if tls_server_name:
            cluster["tls-server-name"] = tls_server_name
        current = self.path(CLIENT).name
        user = node_user(node)
        document = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "cluster", "cluster": cluster}],
            "users": [{"name": user, "user": {"client-certificate": current, "client-key": current}}],
            "contexts": [{"name": "vkpy", "context": {"cluster": "cluster", "user": user}}],
            "current-context": "vkpy",
        }
        write_private(self.kubeconfig, yaml.safe_dump(document, sort_keys=False).encode())
        return self.kubeconfig
