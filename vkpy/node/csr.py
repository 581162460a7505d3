"""Asking the cluster for a certificate: submit a CertificateSigningRequest, wait for a person (or an
approver) to approve it and for the controller-manager to sign it, and say plainly what went wrong
when it does not happen."""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import Callable
from typing import Any, Final, Literal

import attrs
import structlog

from vkpy.errors import VkpyError
from vkpy.kube import JSON, KubeClient, KubeError
from vkpy.node.certificates import CertificateKind, request_key_der

log = structlog.get_logger("vkpy.certificates")

CSR_PATH: Final = "/apis/certificates.k8s.io/v1/certificatesigningrequests"
# After approval the signer usually answers within a second; past this, nobody is signing.
SIGNING_GRACE: Final = 30.0
_POLL_FIRST: Final = 0.5
_POLL_MAX: Final = 2.0
_PROGRESS_EVERY: Final = 15.0


class CertificateRequestError(VkpyError):
    """A certificate could not be obtained; the message says why and what to do."""


class CertificateDenied(CertificateRequestError):
    """Somebody denied the request (``kubectl certificate deny``)."""


class CertificateFailed(CertificateRequestError):
    """The signer refused to sign the approved request."""


class SignerMissing(CertificateRequestError):
    """The request was approved but nobody signed it: no signing controller runs."""


class ApprovalTimeout(CertificateRequestError):
    """Nobody approved the request in time."""


Stage = Literal["submitted", "waiting", "approved", "issued"]


@attrs.frozen
class Progress:
    """What happened to a request: ``submitted`` (the approve command is worth showing),
    ``waiting`` (every few seconds, with ``elapsed``), ``approved`` (``message`` says by what),
    ``issued``."""

    stage: Stage
    name: str
    elapsed: float = 0.0
    message: str = ""

    @property
    def approve_command(self) -> str:
        return f"kubectl certificate approve {self.name}"


OnProgress = Callable[[Progress], None]


def _ignore(progress: Progress) -> None:
    """No progress reporting."""


def csr_object(name: str, request_pem: bytes, kind: CertificateKind, expiration: int | None) -> JSON:
    spec: JSON = {
        "request": base64.b64encode(request_pem).decode(),
        "signerName": kind.signer,
        "usages": list(kind.usages),
    }
    if expiration is not None:
        spec["expirationSeconds"] = int(expiration)
    return {
        "apiVersion": "certificates.k8s.io/v1",
        "kind": "CertificateSigningRequest",
        "metadata": {"name": name, "labels": {"app.kubernetes.io/managed-by": "vkpy"}},
        "spec": spec,
    }


def _condition(csr: JSON, kind: str) -> JSON | None:
    for condition in csr.get("status", {}).get("conditions") or []:
        if condition.get("type") == kind and condition.get("status", "True") == "True":
            return dict(condition)
    return None


def _because(condition: JSON) -> str:
    reason = condition.get("reason") or "no reason given"
    message = condition.get("message")
    return f"{reason}: {message}" if message else str(reason)


def _same_key(existing: JSON, body: JSON) -> bool:
    # An ECDSA signature differs on every signing: compare the keys, not the requests' bytes.
    def key(csr: JSON) -> bytes | None:
        try:
            return request_key_der(base64.b64decode(csr.get("spec", {}).get("request") or ""))
        except ValueError:
            return None

    mine = key(body)
    return (
        mine is not None
        and key(existing) == mine
        and (existing.get("spec", {}).get("signerName") == body["spec"]["signerName"])
    )


async def submit(client: KubeClient, body: JSON) -> JSON:
    """Create the request, or find the one made earlier with the same key (same name)."""
    name = body["metadata"]["name"]
    try:
        return await client.create(CSR_PATH, body)
    except KubeError as exc:
        if exc.conflict:
            existing = await client.get(f"{CSR_PATH}/{name}")
            if _same_key(existing, body):
                return existing
            raise CertificateRequestError(
                f"a different CertificateSigningRequest named {name} already exists: delete it with "
                f"`kubectl delete csr {name}` and try again"
            ) from exc
        if exc.status == 403:
            raise CertificateRequestError(
                f"the credentials used ({client.identity}) may not create CertificateSigningRequests: "
                f"{exc.message}. Bootstrap credentials need create and get on "
                "certificatesigningrequests (for example the system:node-bootstrapper ClusterRole)"
            ) from exc
        raise CertificateRequestError(f"cannot create CertificateSigningRequest {name}: {exc}") from exc


async def request_certificate(
    client: KubeClient,
    *,
    name: str,
    request_pem: bytes,
    kind: CertificateKind,
    expiration: int | None = None,
    timeout: float = 300.0,
    on_progress: OnProgress = _ignore,
) -> bytes:
    """Submit a request named ``name`` and wait until it is issued; return the certificate (PEM).

    Raises :class:`CertificateDenied`, :class:`CertificateFailed`, :class:`SignerMissing` (approved
    but still unsigned after ``timeout``, or after ``min(timeout, SIGNING_GRACE)`` when the approval
    came late) or :class:`ApprovalTimeout`."""
    await submit(client, csr_object(name, request_pem, kind, expiration))
    on_progress(Progress("submitted", name))
    started = time.monotonic()
    deadline = started + timeout
    approved_at: float | None = None
    next_report = started + _PROGRESS_EVERY
    interval = _POLL_FIRST
    while True:
        try:
            csr = await client.get(f"{CSR_PATH}/{name}")
        except KubeError as exc:
            if exc.not_found:
                raise CertificateRequestError(
                    f"CertificateSigningRequest {name} was deleted before it was issued"
                ) from exc
            if exc.status == 403:
                raise CertificateRequestError(
                    f"the credentials used ({client.identity}) may not read CertificateSigningRequest "
                    f"{name}: {exc.message}; they need get on certificatesigningrequests"
                ) from exc
            raise
        now = time.monotonic()
        certificate = csr.get("status", {}).get("certificate")
        if certificate:
            on_progress(Progress("issued", name, now - started))
            return base64.b64decode(certificate)
        denied = _condition(csr, "Denied")
        if denied is not None:
            raise CertificateDenied(f"CertificateSigningRequest {name} was denied ({_because(denied)})")
        failed = _condition(csr, "Failed")
        if failed is not None:
            raise CertificateFailed(
                f"the signer {kind.signer} refused CertificateSigningRequest {name} ({_because(failed)})"
            )
        approved = _condition(csr, "Approved")
        if approved is not None and approved_at is None:
            approved_at = now
            # A late approval still leaves the signer its time (the timeout's, at most the grace).
            deadline = max(deadline, now + min(SIGNING_GRACE, timeout))
            on_progress(Progress("approved", name, now - started, _because(approved)))
        if now >= deadline:
            raise _timed_out(name, kind, timeout, approved_at is not None, now - (approved_at or now))
        if now >= next_report:
            next_report = now + _PROGRESS_EVERY
            on_progress(Progress("approved" if approved_at else "waiting", name, now - started))
        await asyncio.sleep(min(interval, max(0.0, deadline - now)))
        interval = min(_POLL_MAX, interval * 2)


def _timed_out(name: str, kind: CertificateKind, timeout: float, approved: bool, since: float) -> Exception:
    if approved:
        return SignerMissing(
            f"CertificateSigningRequest {name} was approved {since:.0f} s ago but nobody signed it: the "
            f"cluster has no signer for {kind.signer}. The controller-manager signs kubelet certificates "
            "only when it runs with --cluster-signing-cert-file and --cluster-signing-key-file (or "
            f"--cluster-signing-{'kubelet-client' if kind.name == 'client' else 'kubelet-serving'}"
            "-cert-file/-key-file)"
        )
    return ApprovalTimeout(
        f"CertificateSigningRequest {name} was not approved within {timeout:.0f} s: approve it with "
        f"`kubectl certificate approve {name}` (it stays pending; asking again with the same key "
        "waits for the same request)"
    )


def describe(progress: Progress) -> dict[str, Any]:
    """Log fields for a progress report."""
    fields: dict[str, Any] = {"csr": progress.name, "elapsed": round(progress.elapsed, 1)}
    if progress.stage in ("submitted", "waiting"):
        fields["approve"] = progress.approve_command
    if progress.message:
        fields["approval"] = progress.message
    return fields
