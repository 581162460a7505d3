"""The configuration file's shape: its value formats (durations, Kubernetes quantities, names and labels,
addresses) and the frozen attrs classes a loaded file becomes."""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import attrs

from vkpy.config.convert import InvalidValue, Parse, describe

# --- value formats -------------------------------------------------------------------------------

_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ms|s|m|h)")
_DURATION = re.compile(rf"(?:{_DURATION_PART.pattern})+")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_NUMBER = re.compile(r"\d+(?:\.\d*)?|\.\d+")

# Kubernetes' resource.Quantity grammar: a number, then a binary-SI or decimal-SI suffix or an exponent.
_QUANTITY = re.compile(r"\+?(?:\d+(?:\.\d*)?|\.\d+)(?:[KMGTPE]i|[numkMGTPE]|[eE][+-]?\d+)?")
_DNS_LABEL = r"[a-z0-9](?:[-a-z0-9]*[a-z0-9])?"
_DNS_SUBDOMAIN = re.compile(rf"{_DNS_LABEL}(?:\.{_DNS_LABEL})*")
_NAME_PART = re.compile(r"[A-Za-z0-9](?:[-A-Za-z0-9_.]*[A-Za-z0-9])?")

DURATION_HINT = "a number of seconds, or a string such as 500ms, 10s, 5m, 1h, 1m30s"
QUANTITY_HINT = "a Kubernetes quantity such as 4, 500m, 1.5, 4Gi, 128974848 or 129e6"


def duration(value: Any) -> float:
    """Seconds from a number (seconds) or a string of ``<number><unit>`` parts (ms, s, m, h)."""
    is_number = isinstance(value, int | float) and not isinstance(value, bool)
    if is_number or (isinstance(value, str) and _NUMBER.fullmatch(value.strip())):
        seconds = float(value)
    elif isinstance(value, str) and _DURATION.fullmatch(value.strip()):
        seconds = sum(
            float(number) * _DURATION_UNITS[unit] for number, unit in _DURATION_PART.findall(value.strip())
        )
    else:
        raise InvalidValue(f"expected a duration, got {describe(value)}", hint=DURATION_HINT)
    if seconds < 0 or seconds != seconds or seconds == float("inf"):
        raise InvalidValue(f"a duration must be a finite number of seconds >= 0, got {describe(value)}")
    return seconds


def positive_duration(value: Any) -> float:
    seconds = duration(value)
    if seconds <= 0:
        raise InvalidValue(f"must be longer than zero, got {describe(value)}", hint=DURATION_HINT)
    return seconds


def quantity(value: Any) -> str:
    """A non-negative Kubernetes quantity, kept as the string Kubernetes will parse."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        text = str(value)
    elif isinstance(value, str):
        text = value.strip()
    else:
        raise InvalidValue(f"expected a quantity, got {describe(value)}", hint=QUANTITY_HINT)
    if not _QUANTITY.fullmatch(text):
        message = (
            "must not be negative" if text.startswith("-") else f"not a valid quantity: {describe(value)}"
        )
        raise InvalidValue(message, hint=QUANTITY_HINT)
    return text


def _require_str(value: Any, what: str) -> str:
    if not isinstance(value, str):
        hint = f'put it in quotes: "{value}"' if isinstance(value, int | float | bool) else None
        raise InvalidValue(f"expected {what} (a string), got {describe(value)}", hint=hint)
    return value


def dns_subdomain(value: Any) -> str:
    """A DNS-1123 subdomain, as Kubernetes requires of node names."""
    text = _require_str(value, "a name")
    if len(text) > 253 or not _DNS_SUBDOMAIN.fullmatch(text):
        hint = (
            "at most 253 lowercase letters, digits, '-' and '.', starting and ending with a letter or digit"
        )
        if text.lower() != text and _DNS_SUBDOMAIN.fullmatch(text.lower()):
            hint = f"use lowercase: {text.lower()!r}"
        raise InvalidValue(f"{describe(text)} is not a valid DNS-1123 subdomain", hint=hint)
    return text


def qualified_name(value: Any) -> str:
    """A Kubernetes qualified name (label keys, taint keys, resource names): ``[prefix/]name``."""
    text = _require_str(value, "a key")
    prefix, slash, name = text.rpartition("/")
    problems = []
    if slash and (not prefix or len(prefix) > 253 or not _DNS_SUBDOMAIN.fullmatch(prefix)):
        problems.append("the prefix before '/' must be a lowercase DNS subdomain")
    if not name or len(name) > 63 or not _NAME_PART.fullmatch(name):
        problems.append(
            "the name must be 1-63 letters, digits, '-', '_' or '.', "
            "starting and ending with a letter or digit"
        )
    if problems:
        raise InvalidValue(f"{describe(text)} is not a valid key: {'; '.join(problems)}")
    return text


def label_value(value: Any) -> str:
    """A Kubernetes label value: empty, or up to 63 letters, digits, '-', '_' and '.'."""
    if value is None:
        return ""
    text = _require_str(value, "a label value")
    if text and (len(text) > 63 or not _NAME_PART.fullmatch(text)):
        raise InvalidValue(
            f"{describe(text)} is not a valid label value",
            hint="at most 63 letters, digits, '-', '_' or '.', starting and ending with a letter or digit",
        )
    return text


def ip_address(value: Any) -> str:
    text = _require_str(value, "an IP address")
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        raise InvalidValue(
            f"{describe(text)} is not an IP address", hint="e.g. 0.0.0.0, 192.168.1.10 or ::"
        ) from None


def port(value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise InvalidValue(f"expected a port number, got {describe(value)}")
    if not 1 <= value <= 65535:
        raise InvalidValue(f"a port must be between 1 and 65535, got {value}")
    return value


Duration = Annotated[float, Parse(duration)]
PositiveDuration = Annotated[float, Parse(positive_duration)]
Quantity = Annotated[str, Parse(quantity)]
NodeName = Annotated[str, Parse(dns_subdomain)]
QualifiedName = Annotated[str, Parse(qualified_name)]
LabelValue = Annotated[str, Parse(label_value)]
IPAddress = Annotated[str, Parse(ip_address)]
Port = Annotated[int, Parse(port)]

# --- the file's classes --------------------------------------------------------------------------

LogLevel = Literal["debug", "info", "warning", "error", "critical"]
LogFormat = Literal["auto", "json", "console"]
TaintEffect = Literal["NoSchedule", "PreferNoSchedule", "NoExecute"]
EventLevel = Literal["all", "brief", "warnings"]


@attrs.frozen(kw_only=True)
class LogConfig:
    level: LogLevel = "info"
    format: LogFormat = "auto"


@attrs.frozen(kw_only=True)
class KubeletConfig:
    """The one HTTPS server (logs, exec...) shared by every node of the process."""

    address: IPAddress = "0.0.0.0"  # noqa: S104 - a kubelet listens on every interface by default
    port: Port = 10250
    advertise_address: IPAddress | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    client_ca: Path | None = None
    allow_anonymous: bool = False

    def __attrs_post_init__(self) -> None:
        if (self.tls_cert is None) != (self.tls_key is None):
            missing = "tls_key" if self.tls_key is None else "tls_cert"
            raise InvalidValue("tls_cert and tls_key go together; set both or neither", key=missing)


MIN_CERTIFICATE_SECONDS = 600
"""The shortest certificate lifetime the certificates API accepts (``expirationSeconds``)."""


@attrs.frozen(kw_only=True)
class CertificatesConfig:
    """Node certificates vkpy obtains from the cluster (CertificateSigningRequests) and renews."""

    dir: Path
    bootstrap_kubeconfig: Path | None = None
    expiration: PositiveDuration | None = None
    renew_before: PositiveDuration | None = None
    approval_timeout: PositiveDuration = 3600.0
    serving: bool = True
    serving_names: tuple[str, ...] = ()

    def __attrs_post_init__(self) -> None:
        if self.expiration is not None and self.expiration < MIN_CERTIFICATE_SECONDS:
            raise InvalidValue(
                f"must be at least {MIN_CERTIFICATE_SECONDS}s (the API's minimum), got {self.expiration:g}s",
                key="expiration",
            )
        if (
            self.expiration is not None
            and self.renew_before is not None
            and self.renew_before >= self.expiration
        ):
            raise InvalidValue(
                f"must be shorter than expiration ({self.expiration:g}s), got {self.renew_before:g}s",
                key="renew_before",
            )


@attrs.frozen(kw_only=True)
class LeaderElectionConfig:
    """Several replicas for the same nodes: the one holding a Lease runs them, the others wait."""

    enabled: bool = False
    namespace: NodeName = "vkpy-system"
    name: NodeName = "vkpy"
    identity: str | None = None
    lease_duration: PositiveDuration = 15.0
    renew_interval: PositiveDuration = 2.0

    def __attrs_post_init__(self) -> None:
        if self.renew_interval > self.lease_duration / 3:
            raise InvalidValue(
                f"must be at most a third of lease_duration ({self.lease_duration / 3:g}s), so that two "
                f"renewals can fail before the leader gives up; got {self.renew_interval:g}s",
                key="renew_interval",
            )


@attrs.frozen(kw_only=True)
class MetricsConfig:
    """A plain-HTTP port for /metrics, /healthz and /readyz (the kubelet port serves them too)."""

    address: IPAddress = "0.0.0.0"  # noqa: S104 - a metrics port listens on every interface by default
    port: Port | None = None


@attrs.frozen(kw_only=True)
class Taint:
    key: QualifiedName
    value: LabelValue = ""
    effect: TaintEffect


@attrs.frozen(kw_only=True)
class Backoff:
    """CrashLoopBackOff: the delay before a restart starts at ``initial`` and doubles up to ``max``."""

    initial: PositiveDuration = 10.0
    max: PositiveDuration = 300.0

    def __attrs_post_init__(self) -> None:
        if self.max < self.initial:
            raise InvalidValue(f"must be at least initial ({self.initial:g}s), got {self.max:g}s", key="max")


DEFAULT_TAINTS = (Taint(key="virtual-kubelet.io/provider", value="vkpy", effect="NoSchedule"),)
DEFAULT_CAPACITY = {"cpu": "1", "memory": "1Gi", "pods": "10"}
"""The capacity of a node whose config and device both say nothing."""


@attrs.frozen(kw_only=True)
class NodeConfig:
    """One Node of the cluster, backed by one device reached through ``transport``.

    ``transport_options`` is the node's section under the transport's name, as an instance of the
    transport's ``options_class`` (or the raw mapping when it has none, or when loaded without a
    plugin registry). ``capacity`` None means "as the device reports, else DEFAULT_CAPACITY";
    ``allocatable`` None means "the same as capacity"; ``arch`` None means "as the transport
    reports, else the host's".
    """

    name: NodeName
    transport: str
    transport_options: Any = attrs.field(factory=dict)
    kubeconfig: Path | None = None
    capacity: dict[QualifiedName, Quantity] | None = None
    allocatable: dict[QualifiedName, Quantity] | None = None
    labels: dict[QualifiedName, LabelValue] = attrs.field(factory=dict)
    taints: tuple[Taint, ...] = DEFAULT_TAINTS
    plugins: tuple[str, ...] = ()
    os: LabelValue = "linux"
    arch: LabelValue | None = None
    status_interval: PositiveDuration = 10.0
    restart_backoff: Backoff = attrs.field(factory=Backoff)
    events: EventLevel = "brief"

    def __attrs_post_init__(self) -> None:
        if not self.transport:
            raise InvalidValue("must name a transport", key="transport")
        seen: set[tuple[str, str]] = set()
        for taint in self.taints:
            if (taint.key, taint.effect) in seen:
                raise InvalidValue(f"taint {taint.key}:{taint.effect} is listed twice", key="taints")
            seen.add((taint.key, taint.effect))


@attrs.frozen(kw_only=True)
class VkpyConfig:
    """A whole configuration file: the cluster credentials, logging, the kubelet server, certificates,
    leader election, the metrics port, the nodes."""

    source: Path
    kubeconfig: Path | None = None
    log: LogConfig = attrs.field(factory=LogConfig)
    kubelet: KubeletConfig = attrs.field(factory=KubeletConfig)
    certificates: CertificatesConfig | None = None
    leader_election: LeaderElectionConfig = attrs.field(factory=LeaderElectionConfig)
    metrics: MetricsConfig = attrs.field(factory=MetricsConfig)
    nodes: tuple[NodeConfig, ...]
