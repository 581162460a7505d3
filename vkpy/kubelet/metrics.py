"""Metrics in the Prometheus text format, without a client library: a few counters, gauges and
histograms do not justify a dependency, and keeping them in plain objects (one per node, one per
API client, one per server) leaves no global registry to reset between tests or runtimes.

:class:`KubeletMetrics` counts the kubelet API's own requests; :class:`NodeMetrics` is one node's
registry (hook latencies, device connection changes, lease renewals); :class:`Family` and
:func:`render` turn any of them into the exposition format."""

from __future__ import annotations

import collections
import math
import time
from collections.abc import Iterable, Mapping
from typing import Final, Literal

import attrs

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# Hook calls range from a microsecond (a plugin deferring) to a minute (a device flashing firmware).
HOOK_BUCKETS: Final = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)

Kind = Literal["counter", "gauge", "histogram"]


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _number(value: float) -> str:
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if math.isnan(value):
        return "NaN"
    return str(int(value)) if float(value).is_integer() and abs(value) < 1e15 else repr(float(value))


@attrs.define
class Family:
    """One metric family: its samples are ``(suffix, labels, value)``, the suffix being ``""`` or,
    for a histogram, ``_bucket``, ``_sum`` and ``_count``."""

    name: str
    kind: Kind
    help: str
    samples: list[tuple[str, dict[str, str], float]] = attrs.field(factory=list)

    def add(self, value: float, **labels: str) -> None:
        self.samples.append(("", labels, value))

    def add_histogram(self, histogram: Histogram, **labels: str) -> None:
        self.samples.extend(histogram.samples(labels))


def render(families: Iterable[Family]) -> str:
    """The exposition text of ``families``; a family without samples is left out."""
    lines: list[str] = []
    for family in families:
        if not family.samples and family.kind == "histogram":
            continue
        lines.append(f"# HELP {family.name} {family.help}")
        lines.append(f"# TYPE {family.name} {family.kind}")
        for suffix, labels, value in family.samples:
            text = ",".join(f'{key}="{_escape(str(label))}"' for key, label in labels.items())
            selector = f"{{{text}}}" if text else ""
            lines.append(f"{family.name}{suffix}{selector} {_number(value)}")
    return "\n".join(lines) + "\n" if lines else ""


@attrs.define
class Histogram:
    """Cumulative buckets, as Prometheus expects them."""

    buckets: tuple[float, ...] = HOOK_BUCKETS
    counts: list[int] = attrs.field(init=False, factory=list)
    sum: float = 0.0
    count: int = 0

    def __attrs_post_init__(self) -> None:
        self.counts = [0] * len(self.buckets)

    def observe(self, value: float) -> None:
        self.sum += value
        self.count += 1
        for index, bound in enumerate(self.buckets):
            if value <= bound:
                self.counts[index] += 1

    def samples(self, labels: Mapping[str, str]) -> list[tuple[str, dict[str, str], float]]:
        out: list[tuple[str, dict[str, str], float]] = [
            ("_bucket", {**labels, "le": _number(bound)}, count)
            for bound, count in zip(self.buckets, self.counts, strict=True)
        ]
        out.append(("_bucket", {**labels, "le": "+Inf"}, self.count))
        out.append(("_sum", dict(labels), self.sum))
        out.append(("_count", dict(labels), self.count))
        return out


@attrs.define
class KubeletMetrics:
    """Counters of one :class:`~vkpy.kubelet.server.KubeletServer`. ``route`` is a route name we chose
    (``containerLogs``, ``pods``, ``other``...), never a raw path: pod names would make every series
    unique."""

    requests: collections.Counter[tuple[str, int]] = attrs.field(factory=collections.Counter)
    log_bytes: int = 0
    log_streams: int = 0

    def count_request(self, route: str, code: int) -> None:
        self.requests[(route, code)] += 1

    def families(self) -> list[Family]:
        requests = Family(
            "vkpy_kubelet_requests_total", "counter", "Requests to the kubelet API, by route and status code."
        )
        for (route, code), count in sorted(self.requests.items()):
            requests.add(count, route=route, code=str(code))
        log_bytes = Family("vkpy_kubelet_log_bytes_total", "counter", "Container log bytes sent to clients.")
        log_bytes.add(self.log_bytes)
        streams = Family("vkpy_kubelet_log_streams", "gauge", "Container log responses being streamed now.")
        streams.add(self.log_streams)
        return [requests, log_bytes, streams]

    def render(self) -> str:
        return render(self.families())


@attrs.define
class NodeMetrics:
    """One node's registry, filled by the code that does the work (hook dispatch, the device health
    check, the lease loop) and read when ``/metrics`` is scraped."""

    hook_seconds: dict[tuple[str, str], Histogram] = attrs.field(factory=dict)
    hook_calls: collections.Counter[tuple[str, str, str]] = attrs.field(factory=collections.Counter)
    device_disconnects: int = 0
    device_reconnects: int = 0
    lease_renewals: int = 0
    lease_renewed_at: float | None = None
    lease_renewed_wall: float | None = None

    def observe_hook(self, hook: str, plugin: str, seconds: float, outcome: str) -> None:
        """One hook call: ``outcome`` is ``ok``, ``deferred`` (the plugin left it to the next) or
        ``error``."""
        key = (hook, plugin)
        histogram = self.hook_seconds.get(key)
        if histogram is None:
            histogram = self.hook_seconds[key] = Histogram()
        histogram.observe(seconds)
        self.hook_calls[(hook, plugin, outcome)] += 1

    def device_health_changed(self, reachable: bool) -> None:
        if reachable:
            self.device_reconnects += 1
        else:
            self.device_disconnects += 1

    def lease_renewed(self) -> None:
        self.lease_renewals += 1
        self.lease_renewed_at = time.monotonic()
        self.lease_renewed_wall = time.time()

    def lease_age(self) -> float | None:
        """Seconds since the node's Lease was last written, or ``None`` before the first time."""
        return None if self.lease_renewed_at is None else time.monotonic() - self.lease_renewed_at


@attrs.frozen
class Check:
    """One line of ``/readyz``: a named condition, whether it holds, and why not."""

    name: str
    ok: bool
    message: str = ""


def readyz_text(checks: Iterable[Check]) -> tuple[bool, str]:
    """Whether every check holds, and the answer body in the API server's verbose ``/readyz``
    style (``[+]name ok`` / ``[-]name failed: why``)."""
    lines: list[str] = []
    ready = True
    for check in checks:
        if check.ok:
            lines.append(f"[+]{check.name} ok")
        else:
            ready = False
            lines.append(f"[-]{check.name} failed: {check.message}")
    lines.append("readyz check passed" if ready else "readyz check failed")
    return ready, "\n".join(lines) + "\n"
