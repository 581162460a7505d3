"""Messages of the vkpy device protocol: attrs classes, JSON encoding and edge validation.

Every message body is one UTF-8 JSON object (see docs/protocol.md):

* request (host to device): ``{"id": 7, "op": "status", ...fields}``
* reply (device to host): ``{"id": 7, "ok": true, "now": 1234, ...fields}`` or
  ``{"id": 7, "ok": false, "now": 1234, "error": {"code": 3, "name": "no_such_pod", "message": "..."}}``
* event (device to host, unsolicited): ``{"event": "container_exited", "seq": 4, "now": 1234, ...}``

Replies and events from a device are validated field by field; anything that breaks the spec
raises :class:`~vkpy.protocol.errors.MalformedMessage` naming the field. Unknown fields are ignored
so newer devices stay compatible. Device times (``now``, ``started_at``, ``finished_at``) are
integer milliseconds since the device booted.
"""

from __future__ import annotations

import abc
import base64
import binascii
import json
import re
from collections.abc import Iterable, Mapping
from typing import Any, ClassVar, Generic, NoReturn, Self, TypeVar

import attrs

from .errors import MalformedMessage, device_error
from .framing import MAX_MAX_FRAME, MIN_HOST_MAX_FRAME, MIN_MAX_FRAME

PROTOCOL_VERSION = 1
SUPPORTED_VERSIONS: tuple[int, ...] = (1,)
MAX_REQUEST_ID = 2**31 - 1

JSONObject = dict[str, object]

R = TypeVar("R")

_QUANTITY = re.compile(r"^[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:Ki|Mi|Gi|Ti|Pi|Ei|[numkMGTPE]|[eE][+-]?\d+)?$")


def dumps(obj: Mapping[str, object]) -> bytes:
    """Encode a message object as the canonical compact UTF-8 JSON used by vkpy."""
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


def loads(body: bytes, context: str = "message") -> JSONObject:
    """Parse a message body; raises MalformedMessage unless it is a JSON object."""
    try:
        obj = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise MalformedMessage(context, "", f"body is not valid UTF-8 JSON ({exc})") from exc
    except RecursionError:
        # A frame of 64 KiB of "[" nests deeper than the parser's recursion limit.
        raise MalformedMessage(context, "", "body nests too deeply") from None
    if not isinstance(obj, dict):
        raise MalformedMessage(context, "", f"body must be a JSON object, not {_describe(obj)}")
    return obj


# --------------------------------------------------------------------------------------------
# Validation helper


def _describe(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"boolean {str(value).lower()}"
    if isinstance(value, int | float):
        return f"number {value!r}"
    if isinstance(value, str):
        shown = value if len(value) <= 40 else value[:37] + "..."
        return f"string {shown!r}"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


class FieldReader:
    """Reads typed fields out of a decoded JSON object, raising MalformedMessage with the path."""

    def __init__(self, obj: Mapping[str, object], context: str, path: str = "") -> None:
        self.obj = obj
        self.context = context
        self.path = path

    def field_path(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path else key

    def fail(self, key: str, problem: str) -> NoReturn:
        raise MalformedMessage(self.context, self.field_path(key) if key else self.path, problem)

    def has(self, key: str) -> bool:
        return key in self.obj and self.obj[key] is not None

    def _get(self, key: str) -> object:
        if key not in self.obj:
            self.fail(key, "missing")
        return self.obj[key]

    def _wrong(self, key: str, expected: str, value: object) -> NoReturn:
        self.fail(key, f"expected {expected}, got {_describe(value)}")

    def get_str(self, key: str, *, non_empty: bool = False) -> str:
        value = self._get(key)
        if not isinstance(value, str):
            self._wrong(key, "a string", value)
        if non_empty and not value:
            self.fail(key, "must not be empty")
        return value

    def opt_str(self, key: str, default: str | None = None) -> str | None:
        return self.get_str(key) if self.has(key) else default

    def get_int(self, key: str, *, minimum: int | None = None, maximum: int | None = None) -> int:
        value = self._get(key)
        if isinstance(value, bool) or not isinstance(value, int):
            self._wrong(key, "an integer", value)
        if minimum is not None and value < minimum:
            self.fail(key, f"must be >= {minimum}, got {value}")
        if maximum is not None and value > maximum:
            self.fail(key, f"must be <= {maximum}, got {value}")
        return value

    def opt_int(self, key: str, *, minimum: int | None = None) -> int | None:
        return self.get_int(key, minimum=minimum) if self.has(key) else None

    def get_bool(self, key: str, default: bool | None = None) -> bool:
        if default is not None and not self.has(key):
            return default
        value = self._get(key)
        if not isinstance(value, bool):
            self._wrong(key, "a boolean", value)
        return value

    def get_str_list(self, key: str, *, default: tuple[str, ...] | None = None) -> tuple[str, ...]:
        if default is not None and not self.has(key):
            return default
        value = self._get(key)
        if not isinstance(value, list):
            self._wrong(key, "an array of strings", value)
        for index, item in enumerate(value):
            if not isinstance(item, str):
                self.fail(f"{key}[{index}]", f"expected a string, got {_describe(item)}")
        return tuple(value)

    def get_int_list(self, key: str) -> tuple[int, ...]:
        value = self._get(key)
        if not isinstance(value, list):
            self._wrong(key, "an array of integers", value)
        for index, item in enumerate(value):
            if isinstance(item, bool) or not isinstance(item, int):
                self.fail(f"{key}[{index}]", f"expected an integer, got {_describe(item)}")
        return tuple(value)

    def get_str_map(self, key: str, *, allow_pairs: bool = False) -> dict[str, str]:
        """An object of string values (or, with ``allow_pairs``, an array of [name, value])."""
        value = self._get(key)
        if isinstance(value, dict):
            for name, item in value.items():
                if not isinstance(item, str):
                    self.fail(f"{key}.{name}", f"expected a string, got {_describe(item)}")
            return dict(value)
        if allow_pairs and isinstance(value, list):
            result: dict[str, str] = {}
            for index, pair in enumerate(value):
                if (
                    not isinstance(pair, list)
                    or len(pair) != 2
                    or not isinstance(pair[0], str)
                    or not isinstance(pair[1], str)
                ):
                    self.fail(f"{key}[{index}]", "expected a [name, value] pair of strings")
                result[pair[0]] = pair[1]
            return result
        expected = "an object of strings or an array of pairs" if allow_pairs else "an object of strings"
        self._wrong(key, expected, value)

    def get_obj(self, key: str) -> FieldReader:
        value = self._get(key)
        if not isinstance(value, dict):
            self._wrong(key, "an object", value)
        return FieldReader(value, self.context, self.field_path(key))

    def opt_obj(self, key: str) -> FieldReader | None:
        return self.get_obj(key) if self.has(key) else None

    def get_obj_list(self, key: str) -> list[FieldReader]:
        value = self._get(key)
        if not isinstance(value, list):
            self._wrong(key, "an array of objects", value)
        readers = []
        for index, item in enumerate(value):
            item_path = f"{key}[{index}]"
            if not isinstance(item, dict):
                self.fail(item_path, f"expected an object, got {_describe(item)}")
            readers.append(FieldReader(item, self.context, self.field_path(item_path)))
        return readers


# --------------------------------------------------------------------------------------------
# Container specification and status


def _str_tuple(value: Iterable[str]) -> tuple[str, ...]:
    if isinstance(value, str | bytes):
        raise TypeError("expected a sequence of strings, not a single string")
    return tuple(value)


def _env_pairs(value: Mapping[str, str] | Iterable[tuple[str, str]]) -> tuple[tuple[str, str], ...]:
    items = value.items() if isinstance(value, Mapping) else value
    merged: dict[str, str] = {}
    for name, item in items:
        merged[str(name)] = str(item)
    return tuple(merged.items())


def _non_empty(_instance: object, attribute: attrs.Attribute[str], value: str) -> None:
    if not value:
        raise ValueError(f"{attribute.name} must not be empty")


@attrs.frozen
class ContainerSpec:
    """One container of a pod to create: the device runs the program named by ``command[0]``.

    ``env`` accepts a mapping or (name, value) pairs; it is kept as a tuple of pairs (later
    duplicates win) and sent as a JSON object. ``image`` is informational for the device.
    """

    name: str = attrs.field(validator=_non_empty)
    command: tuple[str, ...] = attrs.field(default=(), converter=_str_tuple)
    args: tuple[str, ...] = attrs.field(default=(), converter=_str_tuple)
    env: tuple[tuple[str, str], ...] = attrs.field(default=(), converter=_env_pairs)
    working_dir: str | None = None
    image: str | None = None

    @property
    def argv(self) -> tuple[str, ...]:
        """``command + args``, as the device sees it."""
        return self.command + self.args

    def to_wire(self) -> JSONObject:
        obj: JSONObject = {
            "name": self.name,
            "command": list(self.command),
            "args": list(self.args),
            "env": dict(self.env),
        }
        if self.working_dir is not None:
            obj["working_dir"] = self.working_dir
        if self.image is not None:
            obj["image"] = self.image
        return obj

    @classmethod
    def from_wire(cls, r: FieldReader) -> ContainerSpec:
        return cls(
            name=r.get_str("name", non_empty=True),
            command=r.get_str_list("command", default=()),
            args=r.get_str_list("args", default=()),
            env=r.get_str_map("env", allow_pairs=True) if r.has("env") else {},
            working_dir=r.opt_str("working_dir"),
            image=r.opt_str("image"),
        )


@attrs.frozen
class Waiting:
    """The container has not started (e.g. reason ``ContainerCreating``)."""

    reason: str
    message: str = ""
    STATE: ClassVar[str] = "waiting"


@attrs.frozen
class Running:
    """The container runs since ``started_at`` (device ms since boot)."""

    started_at: int
    STATE: ClassVar[str] = "running"


@attrs.frozen
class Terminated:
    """The container has ended. Times are device ms since boot; ``started_at`` is None if it never ran."""

    exit_code: int
    reason: str
    finished_at: int
    started_at: int | None = None
    message: str = ""
    STATE: ClassVar[str] = "terminated"


ContainerState = Waiting | Running | Terminated


def _state_to_wire(state: ContainerState, obj: JSONObject) -> None:
    obj["state"] = state.STATE
    if isinstance(state, Waiting):
        obj["reason"] = state.reason
        obj["message"] = state.message
    elif isinstance(state, Running):
        obj["started_at"] = state.started_at
    else:
        obj["exit_code"] = state.exit_code
        obj["reason"] = state.reason
        obj["message"] = state.message
        obj["started_at"] = state.started_at
        obj["finished_at"] = state.finished_at


def _terminated_from_wire(r: FieldReader) -> Terminated:
    started = r.opt_int("started_at", minimum=0)
    finished = r.get_int("finished_at", minimum=0)
    if started is not None and finished < started:
        r.fail("finished_at", f"is before started_at ({finished} < {started})")
    return Terminated(
        exit_code=r.get_int("exit_code", minimum=0, maximum=255),
        reason=r.get_str("reason", non_empty=True),
        message=r.opt_str("message") or "",
        started_at=started,
        finished_at=finished,
    )


def _state_from_wire(r: FieldReader) -> ContainerState:
    state = r.get_str("state")
    if state == "waiting":
        return Waiting(reason=r.get_str("reason", non_empty=True), message=r.opt_str("message") or "")
    if state == "running":
        return Running(started_at=r.get_int("started_at", minimum=0))
    if state == "terminated":
        return _terminated_from_wire(r)
    r.fail("state", f"expected one of 'waiting', 'running', 'terminated', got {_describe(state)}")


@attrs.frozen
class ContainerStatus:
    """State of one container as the device reports it. ``restarts`` counts the host's ``restart``
    requests that started it again (devices never restart containers on their own)."""

    name: str
    state: ContainerState
    restarts: int = 0

    def to_wire(self) -> JSONObject:
        obj: JSONObject = {"name": self.name}
        _state_to_wire(self.state, obj)
        obj["restarts"] = self.restarts
        return obj

    @classmethod
    def from_wire(cls, r: FieldReader) -> ContainerStatus:
        return cls(
            name=r.get_str("name", non_empty=True),
            state=_state_from_wire(r),
            restarts=r.opt_int("restarts", minimum=0) or 0,
        )


@attrs.frozen
class PodStatus:
    """A pod the device holds. ``deleting`` is true while a delete waits for its grace period."""

    uid: str
    namespace: str
    name: str
    containers: tuple[ContainerStatus, ...]
    deleting: bool = False

    def container(self, name: str) -> ContainerStatus | None:
        """The status of the container called ``name``, if any."""
        for status in self.containers:
            if status.name == name:
                return status
        return None

    @property
    def finished(self) -> bool:
        """True when every container has terminated."""
        return all(isinstance(c.state, Terminated) for c in self.containers)

    def to_wire(self) -> JSONObject:
        return {
            "uid": self.uid,
            "namespace": self.namespace,
            "name": self.name,
            "deleting": self.deleting,
            "containers": [c.to_wire() for c in self.containers],
        }

    @classmethod
    def from_wire(cls, r: FieldReader) -> PodStatus:
        containers = tuple(ContainerStatus.from_wire(c) for c in r.get_obj_list("containers"))
        names = [c.name for c in containers]
        for index, name in enumerate(names):
            if name in names[:index]:
                r.fail(f"containers[{index}].name", f"duplicate container name {name!r}")
        return cls(
            uid=r.get_str("uid", non_empty=True),
            namespace=r.opt_str("namespace") or "",
            name=r.opt_str("name") or "",
            containers=containers,
            deleting=r.get_bool("deleting", default=False),
        )


# --------------------------------------------------------------------------------------------
# Replies


@attrs.frozen
class HelloReply:
    """The device's side of the handshake."""

    version: int
    device_id: str
    firmware: str
    firmware_version: str
    capabilities: tuple[str, ...]
    capacity: Mapping[str, str]
    max_frame: int
    boot_id: str
    event_seq: int
    now: int
    programs: tuple[str, ...] = ()

    def to_wire(self) -> JSONObject:
        return {
            "version": self.version,
            "device_id": self.device_id,
            "firmware": self.firmware,
            "firmware_version": self.firmware_version,
            "capabilities": list(self.capabilities),
            "capacity": dict(self.capacity),
            "max_frame": self.max_frame,
            "boot_id": self.boot_id,
            "event_seq": self.event_seq,
            "programs": list(self.programs),
        }

    @classmethod
    def from_wire(cls, r: FieldReader) -> HelloReply:
        capacity = r.get_str_map("capacity")
        for key, value in capacity.items():
            if not key:
                r.fail("capacity", "resource names must not be empty")
            if not _QUANTITY.match(value):
                r.fail(f"capacity.{key}", f"{value!r} is not a Kubernetes quantity")
        return cls(
            version=r.get_int("version", minimum=1),
            device_id=r.get_str("device_id", non_empty=True),
            firmware=r.get_str("firmware"),
            firmware_version=r.get_str("firmware_version"),
            capabilities=r.get_str_list("capabilities"),
            capacity=capacity,
            max_frame=r.get_int("max_frame", minimum=MIN_MAX_FRAME, maximum=MAX_MAX_FRAME),
            boot_id=r.get_str("boot_id", non_empty=True),
            event_seq=r.get_int("event_seq", minimum=0),
            programs=r.get_str_list("programs", default=()),
            now=r.get_int("now", minimum=0),
        )


@attrs.frozen
class PingReply:
    now: int

    def to_wire(self) -> JSONObject:
        return {}

    @classmethod
    def from_wire(cls, r: FieldReader) -> PingReply:
        return cls(now=r.get_int("now", minimum=0))


@attrs.frozen
class CreateReply:
    """``created`` is false when the pod already existed (a retransmission or repeated create)."""

    created: bool
    pod: PodStatus
    now: int

    def to_wire(self) -> JSONObject:
        return {"created": self.created, "pod": self.pod.to_wire()}

    @classmethod
    def from_wire(cls, r: FieldReader) -> CreateReply:
        return cls(
            created=r.get_bool("created"),
            pod=PodStatus.from_wire(r.get_obj("pod")),
            now=r.get_int("now", minimum=0),
        )


@attrs.frozen
class DeleteReply:
    """``found``: the device held the pod. ``gone``: it no longer does (else it waits for grace).

    ``pod`` is the pod's last state (None when it was not found).
    """

    found: bool
    gone: bool
    pod: PodStatus | None
    now: int

    def to_wire(self) -> JSONObject:
        return {
            "found": self.found,
            "gone": self.gone,
            "pod": None if self.pod is None else self.pod.to_wire(),
        }

    @classmethod
    def from_wire(cls, r: FieldReader) -> DeleteReply:
        found = r.get_bool("found")
        gone = r.get_bool("gone")
        pod_reader = r.opt_obj("pod")
        if not found and not gone:
            r.fail("gone", "must be true when found is false")
        return cls(
            found=found,
            gone=gone,
            pod=None if pod_reader is None else PodStatus.from_wire(pod_reader),
            now=r.get_int("now", minimum=0),
        )


@attrs.frozen
class ListReply:
    pods: tuple[PodStatus, ...]
    now: int

    def to_wire(self) -> JSONObject:
        return {"pods": [p.to_wire() for p in self.pods]}

    @classmethod
    def from_wire(cls, r: FieldReader) -> ListReply:
        return cls(
            pods=tuple(PodStatus.from_wire(p) for p in r.get_obj_list("pods")),
            now=r.get_int("now", minimum=0),
        )


@attrs.frozen
class StatusReply:
    pod: PodStatus
    now: int

    def to_wire(self) -> JSONObject:
        return {"pod": self.pod.to_wire()}

    @classmethod
    def from_wire(cls, r: FieldReader) -> StatusReply:
        return cls(pod=PodStatus.from_wire(r.get_obj("pod")), now=r.get_int("now", minimum=0))


@attrs.frozen
class LogsReply:
    """A slice of a container's log.

    ``data`` holds the bytes ``[offset, next_offset)``. ``earliest`` is the oldest offset the
    device still holds and ``end`` the total number of bytes the container has written, so the
    bytes ``[requested offset, offset)`` were lost to the device's bounded buffer (see
    :meth:`lost`). ``eof`` is true when the container has terminated and ``next_offset == end``.
    ``restarts`` names the instance of the container whose log this is (its ``restarts`` count;
    None from devices without the ``restart`` capability): each instance has its own log, starting
    at offset 0.
    """

    data: bytes
    offset: int
    next_offset: int
    earliest: int
    end: int
    eof: bool
    now: int
    restarts: int | None = None

    def lost(self, requested_offset: int) -> int:
        """How many bytes from ``requested_offset`` on were overwritten before they were read."""
        return max(0, self.offset - requested_offset)

    def to_wire(self) -> JSONObject:
        obj: JSONObject = {
            "data": base64.b64encode(self.data).decode("ascii"),
            "offset": self.offset,
            "next_offset": self.next_offset,
            "earliest": self.earliest,
            "end": self.end,
            "eof": self.eof,
        }
        if self.restarts is not None:
            obj["restarts"] = self.restarts
        return obj

    @classmethod
    def from_wire(cls, r: FieldReader) -> LogsReply:
        text = r.get_str("data")
        try:
            data = base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            r.fail("data", "is not valid base64")
        offset = r.get_int("offset", minimum=0)
        next_offset = r.get_int("next_offset", minimum=0)
        earliest = r.get_int("earliest", minimum=0)
        end = r.get_int("end", minimum=0)
        if next_offset != offset + len(data):
            r.fail("next_offset", f"must be offset + len(data) = {offset + len(data)}, got {next_offset}")
        if earliest > offset and data:
            r.fail("offset", f"is before earliest ({offset} < {earliest})")
        if next_offset > end:
            r.fail("next_offset", f"is past end ({next_offset} > {end})")
        if earliest > end:
            r.fail("earliest", f"is past end ({earliest} > {end})")
        return cls(
            data=data,
            offset=offset,
            next_offset=next_offset,
            earliest=earliest,
            end=end,
            eof=r.get_bool("eof"),
            now=r.get_int("now", minimum=0),
            restarts=r.opt_int("restarts", minimum=0),
        )


@attrs.frozen
class RestartReply:
    """``restarted`` is false when the device left the container as it was: it was not terminated,
    its ``restarts`` count no longer matched the request's (a retransmission after the restart), or
    the pod is being deleted. ``pod`` is the pod's state after the request."""

    restarted: bool
    pod: PodStatus
    now: int

    def to_wire(self) -> JSONObject:
        return {"restarted": self.restarted, "pod": self.pod.to_wire()}

    @classmethod
    def from_wire(cls, r: FieldReader) -> RestartReply:
        return cls(
            restarted=r.get_bool("restarted"),
            pod=PodStatus.from_wire(r.get_obj("pod")),
            now=r.get_int("now", minimum=0),
        )


Reply = (
    HelloReply | PingReply | CreateReply | DeleteReply | ListReply | StatusReply | LogsReply | RestartReply
)


@attrs.frozen
class ErrorReply:
    """An error reply as a value (for encoding, e.g. by a Python device emulator or tests)."""

    code: int
    name: str
    message: str
    now: int
    details: Mapping[str, object] = attrs.field(factory=dict)

    def to_error_object(self) -> JSONObject:
        obj: JSONObject = {"code": self.code, "name": self.name, "message": self.message}
        obj.update(self.details)
        return obj


# --------------------------------------------------------------------------------------------
# Requests


class Request(abc.ABC, Generic[R]):
    """A request op. ``OP`` is its wire name; :meth:`parse_reply` validates the device's reply."""

    OP: ClassVar[str]

    @abc.abstractmethod
    def to_wire(self) -> JSONObject:
        """The request's fields (without ``id`` and ``op``)."""

    @abc.abstractmethod
    def parse_reply(self, r: FieldReader) -> R:
        """Validate and convert a successful reply's fields."""

    @classmethod
    @abc.abstractmethod
    def from_wire(cls, r: FieldReader) -> Self:
        """Validate a request's fields (device side)."""


@attrs.frozen
class Hello(Request[HelloReply]):
    """Handshake: the versions the host speaks and the largest frame the host accepts."""

    OP: ClassVar[str] = "hello"
    versions: tuple[int, ...] = SUPPORTED_VERSIONS
    max_frame: int = 65536
    host: str = "vkpy"

    def to_wire(self) -> JSONObject:
        return {"versions": list(self.versions), "max_frame": self.max_frame, "host": self.host}

    def parse_reply(self, r: FieldReader) -> HelloReply:
        reply = HelloReply.from_wire(r)
        if reply.version not in self.versions:
            r.fail("version", f"device chose version {reply.version}, not one of {list(self.versions)}")
        return reply

    @classmethod
    def from_wire(cls, r: FieldReader) -> Hello:
        return cls(
            versions=r.get_int_list("versions"),
            max_frame=r.get_int("max_frame", minimum=MIN_HOST_MAX_FRAME, maximum=MAX_MAX_FRAME),
            host=r.opt_str("host") or "",
        )


@attrs.frozen
class Ping(Request[PingReply]):
    OP: ClassVar[str] = "ping"

    def to_wire(self) -> JSONObject:
        return {}

    def parse_reply(self, r: FieldReader) -> PingReply:
        return PingReply.from_wire(r)

    @classmethod
    def from_wire(cls, r: FieldReader) -> Ping:
        return cls()


def _containers_tuple(value: Iterable[ContainerSpec]) -> tuple[ContainerSpec, ...]:
    return tuple(value)


def _containers_valid(_instance: object, _attribute: object, value: tuple[ContainerSpec, ...]) -> None:
    if not value:
        raise ValueError("a pod needs at least one container")
    names = [c.name for c in value]
    if len(set(names)) != len(names):
        raise ValueError(f"container names must be unique: {names}")


@attrs.frozen
class Create(Request[CreateReply]):
    """Create a pod, keyed by ``uid``: repeating it returns the existing pod (``created`` false)."""

    OP: ClassVar[str] = "create"
    uid: str = attrs.field(validator=_non_empty)
    namespace: str
    name: str
    containers: tuple[ContainerSpec, ...] = attrs.field(
        converter=_containers_tuple, validator=_containers_valid
    )

    def to_wire(self) -> JSONObject:
        return {
            "uid": self.uid,
            "namespace": self.namespace,
            "name": self.name,
            "containers": [c.to_wire() for c in self.containers],
        }

    def parse_reply(self, r: FieldReader) -> CreateReply:
        reply = CreateReply.from_wire(r)
        if reply.pod.uid != self.uid:
            r.fail("pod.uid", f"expected {self.uid!r}, got {reply.pod.uid!r}")
        return reply

    @classmethod
    def from_wire(cls, r: FieldReader) -> Create:
        containers = [ContainerSpec.from_wire(c) for c in r.get_obj_list("containers")]
        if not containers:
            r.fail("containers", "a pod needs at least one container")
        seen: set[str] = set()
        for index, container in enumerate(containers):
            if container.name in seen:
                r.fail(f"containers[{index}].name", f"duplicate container name {container.name!r}")
            seen.add(container.name)
        return cls(
            uid=r.get_str("uid", non_empty=True),
            namespace=r.opt_str("namespace") or "",
            name=r.opt_str("name") or "",
            containers=containers,
        )


@attrs.frozen
class Delete(Request[DeleteReply]):
    """Stop a pod's containers (TERM, then KILL after ``grace`` seconds) and forget it."""

    OP: ClassVar[str] = "delete"
    uid: str = attrs.field(validator=_non_empty)
    grace: int = attrs.field(default=0, validator=attrs.validators.ge(0))

    def to_wire(self) -> JSONObject:
        return {"uid": self.uid, "grace": self.grace}

    def parse_reply(self, r: FieldReader) -> DeleteReply:
        return DeleteReply.from_wire(r)

    @classmethod
    def from_wire(cls, r: FieldReader) -> Delete:
        return cls(uid=r.get_str("uid", non_empty=True), grace=r.get_int("grace", minimum=0))


@attrs.frozen
class List(Request[ListReply]):
    """Every pod the device holds (for recovery after a reconnect or a host restart)."""

    OP: ClassVar[str] = "list"

    def to_wire(self) -> JSONObject:
        return {}

    def parse_reply(self, r: FieldReader) -> ListReply:
        return ListReply.from_wire(r)

    @classmethod
    def from_wire(cls, r: FieldReader) -> List:
        return cls()


@attrs.frozen
class Status(Request[StatusReply]):
    OP: ClassVar[str] = "status"
    uid: str = attrs.field(validator=_non_empty)

    def to_wire(self) -> JSONObject:
        return {"uid": self.uid}

    def parse_reply(self, r: FieldReader) -> StatusReply:
        reply = StatusReply.from_wire(r)
        if reply.pod.uid != self.uid:
            r.fail("pod.uid", f"expected {self.uid!r}, got {reply.pod.uid!r}")
        return reply

    @classmethod
    def from_wire(cls, r: FieldReader) -> Status:
        return cls(uid=r.get_str("uid", non_empty=True))


@attrs.frozen
class Logs(Request[LogsReply]):
    """Read up to ``max_bytes`` of a container's log from byte ``offset``; with ``previous``, the
    log of the container's previous instance (devices with the ``restart`` capability)."""

    OP: ClassVar[str] = "logs"
    uid: str = attrs.field(validator=_non_empty)
    container: str = attrs.field(validator=_non_empty)
    offset: int = attrs.field(default=0, validator=attrs.validators.ge(0))
    max_bytes: int = attrs.field(default=4096, validator=attrs.validators.ge(1))
    previous: bool = False

    def to_wire(self) -> JSONObject:
        obj: JSONObject = {
            "uid": self.uid,
            "container": self.container,
            "offset": self.offset,
            "max_bytes": self.max_bytes,
        }
        if self.previous:  # only when asked: a device without the restart capability never sees it
            obj["previous"] = True
        return obj

    def parse_reply(self, r: FieldReader) -> LogsReply:
        reply = LogsReply.from_wire(r)
        if len(reply.data) > self.max_bytes:
            r.fail("data", f"holds {len(reply.data)} bytes, more than max_bytes {self.max_bytes}")
        return reply

    @classmethod
    def from_wire(cls, r: FieldReader) -> Logs:
        return cls(
            uid=r.get_str("uid", non_empty=True),
            container=r.get_str("container", non_empty=True),
            offset=r.get_int("offset", minimum=0),
            max_bytes=r.get_int("max_bytes", minimum=1),
            previous=r.get_bool("previous", default=False),
        )


@attrs.frozen
class Restart(Request[RestartReply]):
    """Start a terminated container again (devices with the ``restart`` capability).

    ``restarts`` is the container's ``restarts`` count as the host last saw it: the device restarts
    the container only while its count still equals it, so a retransmitted restart never starts the
    container twice.
    """

    OP: ClassVar[str] = "restart"
    uid: str = attrs.field(validator=_non_empty)
    container: str = attrs.field(validator=_non_empty)
    restarts: int = attrs.field(default=0, validator=attrs.validators.ge(0))

    def to_wire(self) -> JSONObject:
        return {"uid": self.uid, "container": self.container, "restarts": self.restarts}

    def parse_reply(self, r: FieldReader) -> RestartReply:
        reply = RestartReply.from_wire(r)
        if reply.pod.uid != self.uid:
            r.fail("pod.uid", f"expected {self.uid!r}, got {reply.pod.uid!r}")
        if reply.pod.container(self.container) is None:
            r.fail("pod.containers", f"has no container {self.container!r}")
        return reply

    @classmethod
    def from_wire(cls, r: FieldReader) -> Restart:
        return cls(
            uid=r.get_str("uid", non_empty=True),
            container=r.get_str("container", non_empty=True),
            restarts=r.get_int("restarts", minimum=0),
        )


REQUEST_TYPES: Mapping[str, type[Request[Any]]] = {
    cls.OP: cls for cls in (Hello, Ping, Create, Delete, List, Status, Logs, Restart)
}


# --------------------------------------------------------------------------------------------
# Events


@attrs.frozen
class ContainerExited:
    """Pushed when a container terminates (normally, by a delete, or because it could not run)."""

    NAME: ClassVar[str] = "container_exited"
    seq: int
    now: int
    uid: str
    container: str
    state: Terminated

    def to_wire(self) -> JSONObject:
        obj: JSONObject = {"uid": self.uid, "container": self.container}
        _state_to_wire(self.state, obj)
        del obj["state"]
        return obj

    @classmethod
    def from_wire(cls, r: FieldReader, seq: int, now: int) -> ContainerExited:
        return cls(
            seq=seq,
            now=now,
            uid=r.get_str("uid", non_empty=True),
            container=r.get_str("container", non_empty=True),
            state=_terminated_from_wire(r),
        )


@attrs.frozen
class PodDeleted:
    """Pushed when the device forgets a deleted pod (at once, or after its grace period)."""

    NAME: ClassVar[str] = "pod_deleted"
    seq: int
    now: int
    uid: str

    def to_wire(self) -> JSONObject:
        return {"uid": self.uid}

    @classmethod
    def from_wire(cls, r: FieldReader, seq: int, now: int) -> PodDeleted:
        return cls(seq=seq, now=now, uid=r.get_str("uid", non_empty=True))


@attrs.frozen
class UnknownEvent:
    """An event this host does not know (from a newer device); kept for logging."""

    name: str
    seq: int
    now: int
    fields: Mapping[str, object]

    def to_wire(self) -> JSONObject:
        return dict(self.fields)


Event = ContainerExited | PodDeleted | UnknownEvent

_EVENT_FIELDS = frozenset({"event", "seq", "now"})


# --------------------------------------------------------------------------------------------
# Envelopes


def encode_request(request_id: int, request: Request[Any]) -> bytes:
    """The body of a request frame."""
    if not 1 <= request_id <= MAX_REQUEST_ID:
        raise ValueError(f"request id must be in 1..{MAX_REQUEST_ID}, not {request_id}")
    obj: JSONObject = {"id": request_id, "op": request.OP}
    obj.update(request.to_wire())
    return dumps(obj)


def decode_request(obj: Mapping[str, object]) -> tuple[int, Request[Any]]:
    """Validate a request object (device side, e.g. an emulator); raises MalformedMessage."""
    r = FieldReader(obj, "request")
    request_id = r.get_int("id", minimum=1, maximum=MAX_REQUEST_ID)
    op = r.get_str("op")
    cls = REQUEST_TYPES.get(op)
    if cls is None:
        r.fail("op", f"unknown op {op!r}")
    r.context = f"{op} request"
    try:
        return request_id, cls.from_wire(r)
    except (ValueError, TypeError) as exc:  # an attrs validator the field checks did not cover
        raise MalformedMessage(r.context, "", str(exc)) from exc


def encode_reply(request_id: int, reply: Reply | ErrorReply) -> bytes:
    """The body of a reply frame (success or error)."""
    if isinstance(reply, ErrorReply):
        return dumps({"id": request_id, "ok": False, "now": reply.now, "error": reply.to_error_object()})
    obj: JSONObject = {"id": request_id, "ok": True, "now": reply.now}
    obj.update(reply.to_wire())
    return dumps(obj)


def decode_reply(obj: Mapping[str, object], request: Request[R], request_id: int = 0) -> R:
    """Validate a reply to ``request``; raise the DeviceError subclass for an error reply."""
    r = FieldReader(obj, f"reply to {request.OP}")
    ok = r.get_bool("ok")
    r.get_int("now", minimum=0)
    if not ok:
        err = r.get_obj("error")
        known = {"code", "name", "message"}
        raise device_error(
            err.get_int("code"),
            err.get_str("name"),
            err.opt_str("message") or "",
            op=request.OP,
            request_id=request_id,
            details={k: v for k, v in err.obj.items() if k not in known},
        )
    return request.parse_reply(r)


def encode_event(event: Event) -> bytes:
    """The body of an event frame."""
    name = event.name if isinstance(event, UnknownEvent) else event.NAME
    obj: JSONObject = {"event": name, "seq": event.seq, "now": event.now}
    obj.update(event.to_wire())
    return dumps(obj)


def decode_event(obj: Mapping[str, object]) -> Event:
    """Validate an event object; unknown event names give an :class:`UnknownEvent`."""
    r = FieldReader(obj, "event")
    name = r.get_str("event", non_empty=True)
    r.context = f"{name} event"
    seq = r.get_int("seq", minimum=1)
    now = r.get_int("now", minimum=0)
    if name == ContainerExited.NAME:
        return ContainerExited.from_wire(r, seq, now)
    if name == PodDeleted.NAME:
        return PodDeleted.from_wire(r, seq, now)
    return UnknownEvent(
        name=name, seq=seq, now=now, fields={k: v for k, v in obj.items() if k not in _EVENT_FIELDS}
    )
