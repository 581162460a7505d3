"""Leader election on a coordination.k8s.io Lease, as client-go's leaderelection does it, so that of
several vkpy replicas for the same nodes exactly one runs them.

Safety rests on three rules. A Lease is taken or renewed only by an update carrying the
resourceVersion that was read, so two replicas never both succeed. A replica judges another's lease
expired by its own clock, ``lease_duration`` after it last saw the record change (never by the
other's timestamps, which another clock wrote). And the leader gives up (``LeadershipLost``) when it
could not renew for ``renew_deadline``, which is shorter than ``lease_duration``: it has stopped
before any standby may start."""

from __future__ import annotations

import asyncio
import socket
import time
import uuid
from typing import Any, Final

import attrs
import structlog

from vkpy.errors import VkpyError
from vkpy.kube import JSON, KubeClient, KubeError, micro_time, now

log = structlog.get_logger("vkpy.leader")

LEASES: Final = "/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases"


class LeadershipLost(VkpyError):
    """This replica is no longer the leader and must stop acting for the nodes."""


def default_identity() -> str:
    """The host name (a pod's name in a Deployment) and a random suffix, unique per process."""
    return f"{socket.gethostname()}_{uuid.uuid4().hex[:8]}"


@attrs.frozen(kw_only=True)
class ElectionSettings:
    namespace: str
    name: str
    identity: str
    lease_duration: float = 15.0
    renew_interval: float = 2.0

    @property
    def renew_deadline(self) -> float:
        """How long the leader keeps trying to renew before it steps down: two thirds of the lease
        (client-go's 10 s for 15 s), leaving the rest as margin for stopping."""
        return self.lease_duration * 2 / 3


@attrs.frozen
class _Observed:
    holder: str
    duration: float
    renew_time: str
    transitions: int


class LeaderElector:
    """Campaigns for, holds and releases one Lease. ``is_leader`` says whether this process holds it
    (as far as it knows: see the module's rules)."""

    def __init__(self, client: KubeClient, settings: ElectionSettings) -> None:
        self.client = client
        self.settings = settings
        self.is_leader = False
        self.transitions = 0
        self.last_renewed: float | None = None
        self.leader: str | None = None
        self._observed: _Observed | None = None
        self._observed_at = 0.0
        self._log = log.bind(lease=f"{settings.namespace}/{settings.name}", identity=settings.identity)

    @property
    def _collection(self) -> str:
        return LEASES.format(namespace=self.settings.namespace)

    @property
    def _path(self) -> str:
        return f"{self._collection}/{self.settings.name}"

    async def acquire(self) -> None:
        """Return once this process is the leader; until then, try every ``renew_interval``."""
        announced = False
        while True:
            try:
                if await self._try_acquire_or_renew():
                    self.is_leader = True
                    self.transitions += 1
                    self._log.info("leader.acquired", previous=self._previous_holder)
                    return
            except KubeError as exc:
                self._log.warning("leader.campaign_failed", status=exc.status, error=exc.message)
            except (OSError, TimeoutError) as exc:
                self._log.warning("leader.campaign_failed", error=repr(exc))
            if not announced and self.leader:
                self._log.info("leader.standby", leader=self.leader)
                announced = True
            await asyncio.sleep(self.settings.renew_interval)

    async def hold(self) -> None:
        """Renew until leadership is lost; then raise :class:`LeadershipLost`. Never returns."""
        settings = self.settings
        last_success = time.monotonic()
        while True:
            await asyncio.sleep(settings.renew_interval)
            error = ""
            try:
                if await self._try_acquire_or_renew():
                    last_success = time.monotonic()
                    continue
                error = f"the lease is held by {self.leader}"
            except KubeError as exc:
                error = f"{exc.status} {exc.message}"
            except (OSError, TimeoutError) as exc:
                error = repr(exc)
            if self._observed is not None and self._observed.holder not in ("", settings.identity):
                self.is_leader = False
                raise LeadershipLost(f"another replica ({self._observed.holder}) took the lease")
            if time.monotonic() - last_success >= settings.renew_deadline:
                self.is_leader = False
                raise LeadershipLost(
                    f"could not renew the lease for {settings.renew_deadline:.0f} s (last error: {error})"
                )
            self._log.warning("leader.renew_failed", error=error)

    async def release(self) -> None:
        """Give the lease up at once (on a clean shutdown) so that a standby need not wait for it
        to expire."""
        if not self.is_leader:
            return
        self.is_leader = False
        try:
            lease = await self.client.get(self._path)
            spec = lease.get("spec", {})
            if spec.get("holderIdentity") != self.settings.identity:
                return
            stamp = micro_time(now())
            lease["spec"] = {**spec, "holderIdentity": "", "leaseDurationSeconds": 1, "renewTime": stamp}
            await self.client.put(self._path, lease)
            self._log.info("leader.released")
        except Exception as exc:
            self._log.warning("leader.release_failed", error=str(exc))

    # -- one round -------------------------------------------------------------------------------

    @property
    def _previous_holder(self) -> str | None:
        return self._observed.holder if self._observed else None

    def _observe(self, spec: JSON) -> _Observed:
        observed = _Observed(
            holder=str(spec.get("holderIdentity") or ""),
            duration=float(spec.get("leaseDurationSeconds") or self.settings.lease_duration),
            renew_time=str(spec.get("renewTime") or ""),
            transitions=int(spec.get("leaseTransitions") or 0),
        )
        if observed != self._observed:
            self._observed, self._observed_at = observed, time.monotonic()
        self.leader = observed.holder or None
        return observed

    def _record(self, acquire_time: str, transitions: int) -> dict[str, Any]:
        return {
            "holderIdentity": self.settings.identity,
            "leaseDurationSeconds": max(1, round(self.settings.lease_duration)),
            "acquireTime": acquire_time,
            "renewTime": micro_time(now()),
            "leaseTransitions": transitions,
        }

    async def _try_acquire_or_renew(self) -> bool:
        me = self.settings.identity
        try:
            lease = await self.client.get(self._path)
        except KubeError as exc:
            if not exc.not_found:
                raise
            stamp = micro_time(now())
            body = {
                "apiVersion": "coordination.k8s.io/v1",
                "kind": "Lease",
                "metadata": {"name": self.settings.name, "namespace": self.settings.namespace},
                "spec": self._record(stamp, 0),
            }
            try:
                created = await self.client.create(self._collection, body)
            except KubeError as create_exc:
                if create_exc.conflict:
                    return False
                raise
            self._observe(created.get("spec", {}))
            self.last_renewed = time.monotonic()
            return True
        spec = lease.get("spec", {}) or {}
        observed = self._observe(spec)
        held_by_other = observed.holder not in ("", me)
        if held_by_other and time.monotonic() < self._observed_at + observed.duration:
            return False
        if observed.holder == me:
            acquire_time = str(spec.get("acquireTime") or micro_time(now()))
            transitions = observed.transitions
        else:
            acquire_time = micro_time(now())
            transitions = observed.transitions + 1
        lease["spec"] = {**spec, **self._record(acquire_time, transitions)}
        try:
            updated = await self.client.put(self._path, lease)  # carries the resourceVersion read
        except KubeError as exc:
            if exc.conflict:
                return False
            raise
        self._observe(updated.get("spec", {}))
        self.last_renewed = time.monotonic()
        return True
