"""What a running vkpy process tells its operator: the metric families behind ``/metrics`` and the
checks behind ``/readyz``, read from the live objects when asked (nothing is copied or cached)."""

from __future__ import annotations

import datetime
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Final

from vkpy.kube import now
from vkpy.kubelet.metrics import Check, Family
from vkpy.node.apiclient import ObservedClient
from vkpy.node.credentials import CertificateManager
from vkpy.node.leader import LeaderElector
from vkpy.node.virtual_node import LEASE_DURATION_SECONDS, LEASE_RENEW_INTERVAL, VirtualNode

if TYPE_CHECKING:
    from vkpy.pods.controller import PodController
    from vkpy.watching import Watcher

PHASES: Final = ("Pending", "Running", "Succeeded", "Failed", "Unknown")
# A watch is silent for at most its server timeout (300 s) plus the watchdog (30 s); bookmarks
# usually come every minute.
WATCH_SILENCE: Final = 360.0


def _pods_by_phase(nodes: Iterable[str], pods: PodController | None) -> dict[tuple[str, str], int]:
    counts: dict[tuple[str, str], int] = {(node, phase): 0 for node in nodes for phase in PHASES}
    if pods is None:
        return counts
    for worker in list(pods.workers.values()):
        manifest = worker.last_known or {}
        phase = str((manifest.get("status") or {}).get("phase") or "Pending")
        key = (worker.node.name, phase if phase in PHASES else "Unknown")
        counts[key] = counts.get(key, 0) + 1
    return counts


def node_families(nodes: Mapping[str, VirtualNode], pods: PodController | None) -> list[Family]:
    pods_f = Family("vkpy_pods", "gauge", "Pods on the node, by phase (as the API last saw them).")
    for (node_name, phase), count in sorted(_pods_by_phase(nodes, pods).items()):
        pods_f.add(count, node=node_name, phase=phase)
    ready = Family(
        "vkpy_node_ready", "gauge", "1 when the node reports Ready (device reachable, pods synced)."
    )
    reachable = Family("vkpy_device_reachable", "gauge", "1 when the node's device answers its health check.")
    disconnects = Family("vkpy_device_disconnects_total", "counter", "Times the device became unreachable.")
    reconnects = Family(
        "vkpy_device_reconnects_total", "counter", "Times the device became reachable again after a loss."
    )
    renewals = Family("vkpy_node_lease_renewals_total", "counter", "Successful writes of the node's Lease.")
    last_renew = Family(
        "vkpy_node_lease_last_renew_timestamp_seconds", "gauge", "Unix time of the node's last Lease renewal."
    )
    lag = Family(
        "vkpy_node_lease_renew_lag_seconds",
        "gauge",
        "How late the node's Lease renewal is: seconds since the last one beyond the "
        f"{LEASE_RENEW_INTERVAL:g} s interval (the node turns NotReady once the Lease is "
        f"{LEASE_DURATION_SECONDS} s old).",
    )
    hook_seconds = Family(
        "vkpy_hook_duration_seconds", "histogram", "Time spent in plugin hook calls, by hook and plugin."
    )
    hook_calls = Family(
        "vkpy_hook_calls_total",
        "counter",
        "Plugin hook calls by hook, plugin and outcome (ok, deferred, error).",
    )
    for name, node in sorted(nodes.items()):
        metrics = node.metrics
        ready.add(1 if node.readiness().ready else 0, node=name)
        reachable.add(1 if node.health.reachable else 0, node=name)
        disconnects.add(metrics.device_disconnects, node=name)
        reconnects.add(metrics.device_reconnects, node=name)
        renewals.add(metrics.lease_renewals, node=name)
        if metrics.lease_renewed_wall is not None:
            last_renew.add(metrics.lease_renewed_wall, node=name)
        age = metrics.lease_age()
        if age is not None:
            lag.add(round(max(0.0, age - LEASE_RENEW_INTERVAL), 3), node=name)
        for (hook, plugin), histogram in sorted(metrics.hook_seconds.items()):
            hook_seconds.add_histogram(histogram, node=name, hook=hook, plugin=plugin)
        for (hook, plugin, outcome), count in sorted(metrics.hook_calls.items()):
            hook_calls.add(count, node=name, hook=hook, plugin=plugin, outcome=outcome)
    return [
        pods_f,
        ready,
        reachable,
        disconnects,
        reconnects,
        renewals,
        last_renew,
        lag,
        hook_seconds,
        hook_calls,
    ]


def api_families(clients: Iterable[ObservedClient]) -> list[Family]:
    requests = Family(
        "vkpy_api_requests_total",
        "counter",
        "Kubernetes API requests answered, by identity, method and code.",
    )
    errors = Family(
        "vkpy_api_request_errors_total",
        "counter",
        "Kubernetes API requests that got no answer (connection refused, timeout, TLS...), by identity, "
        "method and error.",
    )
    for client in clients:
        for (method, code), count in sorted(client.stats.responses.items()):
            requests.add(count, identity=client.identity, method=method, code=str(code))
        for (method, error), count in sorted(client.stats.failures.items()):
            errors.add(count, identity=client.identity, method=method, error=error)
    return [requests, errors]


def watch_families(watchers: Sequence[Watcher]) -> list[Family]:
    restarts = Family(
        "vkpy_watch_restarts_total",
        "counter",
        "Watches started again, by watch and reason (expired: 410 Gone, error, disconnected).",
    )
    relists = Family("vkpy_watch_relists_total", "counter", "Full lists of a watched collection.")
    up = Family("vkpy_watch_up", "gauge", "1 while the watch is connected and heard from recently.")
    for watcher in watchers:
        for reason in ("expired", "error", "disconnected"):
            restarts.add(watcher.restarts.get(reason, 0), watch=watcher.name, reason=reason)
        relists.add(watcher.relists, watch=watcher.name)
        up.add(1 if _watch_problem(watcher) is None else 0, watch=watcher.name)
    return [restarts, relists, up]


def leader_families(elector: LeaderElector | None) -> list[Family]:
    if elector is None:
        return []
    leader = Family("vkpy_leader", "gauge", "1 while this replica holds the leader-election Lease.")
    leader.add(1 if elector.is_leader else 0, identity=elector.settings.identity)
    acquired = Family("vkpy_leader_acquisitions_total", "counter", "Times this replica became the leader.")
    acquired.add(elector.transitions, identity=elector.settings.identity)
    return [leader, acquired]


def certificate_families(managers: Iterable[CertificateManager]) -> list[Family]:
    expiry = Family(
        "vkpy_certificate_expiry_timestamp_seconds", "gauge", "Unix time the certificate in use expires."
    )
    renewals = Family(
        "vkpy_certificate_renewals_total",
        "counter",
        "Certificate renewals by outcome (renewed, failed: retried, not_installed: the new one could not "
        "be loaded).",
    )
    for manager in managers:
        labels = {"node": manager.node, "kind": manager.kind.name}
        if manager.current is not None:
            expiry.add(manager.current.info.not_after.timestamp(), **labels)
        for outcome in ("renewed", "failed", "not_installed"):
            renewals.add(manager.renewals.get(outcome, 0), outcome=outcome, **labels)
    return [expiry, renewals]


# -- /readyz ----------------------------------------------------------------------------------------


def _watch_problem(watcher: Watcher) -> str | None:
    if watcher.last_error is not None:
        return f"{watcher.name}: {watcher.last_error}"
    if watcher.last_contact is None:
        return f"{watcher.name}: not listed yet"
    silence = time.monotonic() - watcher.last_contact
    if silence > WATCH_SILENCE:
        return f"{watcher.name}: nothing heard for {silence:.0f} s"
    return None


def api_check(clients: Iterable[ObservedClient]) -> Check:
    problems = [
        f"{client.identity}: {client.stats.last_failure}"
        for client in clients
        if client.stats.last_failure is not None
    ]
    return Check("api", not problems, "; ".join(problems))


def watch_check(pods: PodController | None) -> Check:
    if pods is None:
        return Check("watches", True)
    problems = [p for p in (_watch_problem(w) for w in pods.watchers) if p is not None]
    if not pods.healthy():
        problems.append("a watch task has ended")
    return Check("watches", not problems, "; ".join(problems))


def lease_check(nodes: Mapping[str, VirtualNode]) -> Check:
    problems = []
    for name, node in sorted(nodes.items()):
        age = node.metrics.lease_age()
        if age is None:
            problems.append(f"{name}: no Lease written yet")
        elif age >= LEASE_DURATION_SECONDS:
            problems.append(f"{name}: Lease last renewed {age:.0f} s ago")
    return Check("leases", not problems, "; ".join(problems))


def certificate_check(managers: Iterable[CertificateManager]) -> Check:
    problems = []
    current = now()
    for manager in managers:
        if manager.current is None:
            problems.append(f"{manager.node} {manager.kind.name}: waiting for a certificate")
        elif manager.current.info.not_after <= current:
            when = manager.current.info.not_after.astimezone(datetime.UTC).isoformat()
            problems.append(f"{manager.node} {manager.kind.name}: certificate expired at {when}")
    return Check("certificates", not problems, "; ".join(problems))
