"""Getting and keeping a node's certificates: the kubelet's ``--bootstrap-kubeconfig`` and
certificate rotation, for vkpy.

:func:`obtain` makes a key, asks the cluster to sign it and stores the result; ``vkpy certs
request`` and the runtime both use it. A :class:`CertificateManager` keeps one certificate usable
while vkpy runs: it obtains one at start when the folder holds none that fits, and renews it before
it expires, handing the new one to whoever uses it (the node's API client, the kubelet server)."""

from __future__ import annotations

import asyncio
import datetime
import random
from collections.abc import Awaitable, Callable, Sequence
from typing import Final

import attrs
import structlog

from vkpy.kube import KubeClient, now
from vkpy.node.certificates import (
    MIN_EXPIRATION_SECONDS,
    SERVING,
    CertificateInfo,
    CertificateKind,
    CertificateStore,
    StoredCertificate,
    build_csr,
    csr_name,
    identity_problem,
    node_user,
    renewal_time,
)
from vkpy.node.csr import (
    CertificateDenied,
    CertificateFailed,
    CertificateRequestError,
    OnProgress,
    Progress,
    describe,
    request_certificate,
)
from vkpy.watching import Backoff

log = structlog.get_logger("vkpy.certificates")

# A failed renewal is retried, with a new request only when the old one was refused.
RETRY: Final = Backoff(initial=10.0, maximum=300.0)
_NO_PROGRESS: Final[OnProgress] = lambda progress: None  # noqa: E731 - a default callback


@attrs.frozen(kw_only=True)
class CertificatePolicy:
    """How certificates are asked for: the lifetime requested (``None``: the signer's default),
    when to renew (``renew_before`` left; ``None``: at 70-90 % of the lifetime), and how long to
    wait for an approval at start-up."""

    expiration: float | None = None
    renew_before: float | None = None
    approval_timeout: float = 3600.0

    @property
    def expiration_seconds(self) -> int | None:
        if self.expiration is None:
            return None
        return max(MIN_EXPIRATION_SECONDS, int(self.expiration))


def problem(stored: StoredCertificate, kind: CertificateKind, node: str, names: Sequence[str]) -> str | None:
    """Why a stored certificate cannot be used for ``node`` now, or ``None``."""
    info = stored.info
    current = now()
    if kind is SERVING:
        if not info.valid_at(current):
            return f"the serving certificate is valid from {info.not_before} to {info.not_after}"
        if not info.covers(names):
            missing = ", ".join(names)
            return f"the serving certificate does not name all of {missing} (it names {_sans(info)})"
        return None
    return identity_problem(info, node, current)


def _sans(info: CertificateInfo) -> str:
    return ", ".join((*info.ip_addresses, *info.dns_names)) or "nothing"


async def obtain(
    client: KubeClient,
    store: CertificateStore,
    kind: CertificateKind,
    node: str,
    *,
    names: Sequence[str] = (),
    policy: CertificatePolicy,
    timeout: float,
    on_progress: OnProgress = _NO_PROGRESS,
) -> StoredCertificate:
    """Ask for ``node``'s ``kind`` certificate with ``client``'s credentials and store it.

    The key is made here and never leaves the machine; while the request waits it is kept beside
    the certificate (0600), so a second attempt with the same names continues the same request."""
    key = await asyncio.to_thread(store.pending_key, kind)
    name = csr_name(kind, node, key, names)
    request_pem = build_csr(key, node, kind, names)
    try:
        cert_pem = await request_certificate(
            client,
            name=name,
            request_pem=request_pem,
            kind=kind,
            expiration=policy.expiration_seconds,
            timeout=timeout,
            on_progress=on_progress,
        )
    except (CertificateDenied, CertificateFailed):
        await asyncio.to_thread(store.discard_pending, kind)
        raise
    info = CertificateInfo.from_pem(cert_pem)
    if info.common_name != node_user(node) or not info.valid_at(now()):
        # An old request, approved long ago for this key: start over with a new key.
        await asyncio.to_thread(store.discard_pending, kind)
        raise CertificateRequestError(
            f"CertificateSigningRequest {name} holds a certificate for {info.common_name} valid until "
            f"{info.not_after}, which cannot be used now; asking again will make a new request"
        )
    await asyncio.to_thread(store.save, kind, cert_pem, key)
    stored = await asyncio.to_thread(store.load, kind)
    if stored is None:
        raise CertificateRequestError(
            f"the certificate just written to {store.path(kind)} cannot be read back"
        )
    return stored


Requester = Callable[[], Awaitable[KubeClient]]
OnRenewed = Callable[[StoredCertificate], Awaitable[None]]


class CertificateManager:
    """Keeps ``node``'s ``kind`` certificate in ``store`` usable for as long as vkpy runs.

    ``requester`` gives the client to ask with (for a client certificate: the node's own identity
    while it is valid, else the bootstrap credentials; for a serving certificate: the node's own
    identity, since approvers check that a node asks for itself). ``on_renewed`` installs a new
    certificate without a restart."""

    def __init__(
        self,
        *,
        kind: CertificateKind,
        node: str,
        store: CertificateStore,
        policy: CertificatePolicy,
        requester: Requester,
        names: Sequence[str] = (),
        on_renewed: OnRenewed | None = None,
    ) -> None:
        self.kind = kind
        self.node = node
        self.store = store
        self.policy = policy
        self.names = tuple(names)
        self._requester = requester
        self._on_renewed = on_renewed
        self.current: StoredCertificate | None = None
        self.renewals: dict[str, int] = {}
        self._log = log.bind(node=node, certificate=kind.name)

    def set_on_renewed(self, callback: OnRenewed) -> None:
        self._on_renewed = callback

    async def ensure(self) -> StoredCertificate:
        """The stored certificate when it fits, else a new one (waiting for approval up to the
        policy's ``approval_timeout``)."""
        stored = await asyncio.to_thread(self.store.load, self.kind)
        if stored is not None:
            why = problem(stored, self.kind, self.node, self.names)
            if why is None:
                self.current = stored
                self._log.info(
                    "certificate.loaded", path=str(stored.path), not_after=str(stored.info.not_after)
                )
                return stored
            self._log.warning("certificate.unusable", path=str(stored.path), problem=why)
        self.current = await self._obtain(self.policy.approval_timeout, "bootstrap")
        return self.current

    def next_renewal(self, jitter: float | None = None) -> datetime.datetime:
        assert self.current is not None
        before = self.policy.renew_before
        return renewal_time(
            self.current.info,
            datetime.timedelta(seconds=before) if before is not None else None,
            random.random() if jitter is None else jitter,  # noqa: S311 - spreading load, not crypto
        )

    async def run(self) -> None:
        """Renew for ever: at the renewal time, ask for a new certificate and install it. Failures
        are logged and retried; the current certificate stays in use until it expires."""
        attempt = 0
        while True:
            assert self.current is not None
            due = self.next_renewal()
            self._log.info(
                "certificate.renewal_scheduled", at=str(due), not_after=str(self.current.info.not_after)
            )
            await _sleep_until(due)
            while True:
                left = (self.current.info.not_after - now()).total_seconds()
                try:
                    renewed = await self._obtain(max(60.0, left), "renewal")
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    self._count("failed")
                    delay = RETRY.delay(attempt)
                    attempt += 1
                    self._log.error("certificate.renewal_failed", error=str(exc), retry_in=round(delay, 1))
                    await asyncio.sleep(delay)
                    continue
                attempt = 0
                break
            await self._install(renewed)

    async def _install(self, renewed: StoredCertificate) -> None:
        previous, self.current = self.current, renewed
        if self._on_renewed is not None:
            try:
                await self._on_renewed(renewed)
            except Exception as exc:
                # The file is already replaced: the next start uses it; say loudly that this one did not.
                self._count("not_installed")
                self._log.error("certificate.install_failed", error=str(exc), path=str(renewed.path))
                return
        self._count("renewed")
        self._log.info(
            "certificate.renewed",
            serial=f"{renewed.info.serial:x}",
            previous_serial=f"{previous.info.serial:x}" if previous else None,
            not_after=str(renewed.info.not_after),
        )

    def _count(self, outcome: str) -> None:
        self.renewals[outcome] = self.renewals.get(outcome, 0) + 1

    async def _obtain(self, timeout: float, purpose: str) -> StoredCertificate:
        client = await self._requester()
        bound = self._log.bind(purpose=purpose, requester=client.identity)

        def report(progress: Progress) -> None:
            fields = describe(progress)
            if progress.stage == "submitted":
                bound.warning("certificate.approval_needed", **fields)
            elif progress.stage == "waiting":
                bound.info("certificate.awaiting_approval", **fields)
            else:
                bound.info(f"certificate.{progress.stage}", **fields)

        return await obtain(
            client,
            self.store,
            self.kind,
            self.node,
            names=self.names,
            policy=self.policy,
            timeout=timeout,
            on_progress=report,
        )


async def _sleep_until(when: datetime.datetime) -> None:
    # In steps: a suspended laptop or a stepped clock must not make a renewal hours late.
    while True:
        left = (when - now()).total_seconds()
        if left <= 0:
            return
        await asyncio.sleep(min(left, 60.0))
