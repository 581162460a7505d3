"""Message classes: encoding, decoding, and clear errors for malformed device messages."""

from __future__ import annotations

import copy
import json
from types import ModuleType
from typing import Any

import pytest

from vkpy.protocol import (
    CapacityExceeded,
    ContainerExited,
    ContainerSpec,
    ContainerStatus,
    Create,
    CreateReply,
    Delete,
    DeleteReply,
    DeviceError,
    ErrorCode,
    ErrorReply,
    Hello,
    HelloReply,
    List,
    ListReply,
    Logs,
    LogsReply,
    MalformedMessage,
    NoSuchPod,
    Ping,
    PingReply,
    PodDeleted,
    PodStatus,
    Request,
    Restart,
    RestartReply,
    Running,
    Status,
    StatusReply,
    Terminated,
    UnknownEvent,
    UnsupportedVersion,
    Waiting,
    decode_event,
    decode_reply,
    decode_request,
    encode_event,
    encode_reply,
    encode_request,
)
from vkpy.protocol.errors import DEVICE_ERRORS
from vkpy.protocol.messages import loads

UID = "6f1c2a9e-3b4d-4e5f-8a7b-1c2d3e4f5a6b"

POD = PodStatus(
    uid=UID,
    namespace="default",
    name="demo",
    containers=(
        ContainerStatus("a", Waiting(reason="ContainerCreating")),
        ContainerStatus("b", Running(started_at=100)),
        ContainerStatus(
            "c", Terminated(exit_code=3, reason="Error", message="boom", started_at=100, finished_at=250)
        ),
        ContainerStatus("d", Terminated(exit_code=127, reason="ProgramNotFound", finished_at=90)),
    ),
)

SPEC = ContainerSpec(
    "main",
    command=["count", "3"],
    args=["0.5"],
    env={"A": "1", "B": "two"},
    working_dir="/data",
    image="example/counter:1",
)

REQUESTS: list[Request[Any]] = [
    Hello(versions=(1, 2), max_frame=4096, host="test"),
    Ping(),
    Create(
        uid=UID, namespace="default", name="demo", containers=[SPEC, ContainerSpec("side", command=["echo"])]
    ),
    Delete(uid=UID, grace=30),
    List(),
    Status(uid=UID),
    Logs(uid=UID, container="main", offset=10, max_bytes=100),
    Logs(uid=UID, container="main", offset=0, max_bytes=100, previous=True),
    Restart(uid=UID, container="c", restarts=2),
]

HELLO_REPLY = HelloReply(
    version=1,
    device_id="dev-1",
    firmware="fw",
    firmware_version="1.2.3",
    capabilities=("events", "logs"),
    capacity={"cpu": "500m", "memory": "256Ki", "pods": "4"},
    max_frame=2048,
    boot_id="abc",
    event_seq=7,
    now=1000,
    programs=("echo",),
)

REPLIES: list[tuple[Request[Any], Any]] = [
    (REQUESTS[0], HELLO_REPLY),
    (Ping(), PingReply(now=5)),
    (REQUESTS[2], CreateReply(created=True, pod=POD, now=6)),
    (REQUESTS[3], DeleteReply(found=True, gone=False, pod=POD, now=7)),
    (REQUESTS[3], DeleteReply(found=False, gone=True, pod=None, now=7)),
    (List(), ListReply(pods=(POD, PodStatus(uid="x", namespace="", name="", containers=())), now=8)),
    (Status(uid=UID), StatusReply(pod=POD, now=9)),
    (
        REQUESTS[6],
        LogsReply(data=b"\x00\xff line\n", offset=12, next_offset=20, earliest=12, end=40, eof=False, now=10),
    ),
    (
        REQUESTS[7],
        LogsReply(data=b"old\n", offset=0, next_offset=4, earliest=0, end=4, eof=True, now=11, restarts=1),
    ),
    (REQUESTS[8], RestartReply(restarted=True, pod=POD, now=12)),
]


def wire(body: bytes) -> dict[str, Any]:
    obj = json.loads(body)
    assert isinstance(obj, dict)
    return obj


@pytest.mark.parametrize("request_", REQUESTS, ids=lambda r: r.OP)
def test_request_round_trip(request_: Request[Any]) -> None:
    body = encode_request(42, request_)
    obj = wire(body)
    assert obj["id"] == 42
    assert obj["op"] == request_.OP
    assert list(obj)[:2] == ["id", "op"]
    assert decode_request(obj) == (42, request_)


@pytest.mark.parametrize(("request_", "reply"), REPLIES, ids=lambda x: type(x).__name__)
def test_reply_round_trip(request_: Request[Any], reply: Any) -> None:
    body = encode_reply(9, reply)
    obj = wire(body)
    assert list(obj)[:3] == ["id", "ok", "now"]
    assert decode_reply(obj, request_, 9) == reply


def test_event_round_trip() -> None:
    exited = ContainerExited(
        seq=3,
        now=500,
        uid=UID,
        container="main",
        state=Terminated(exit_code=0, reason="Completed", started_at=100, finished_at=400),
    )
    deleted = PodDeleted(seq=4, now=501, uid=UID)
    for event in (exited, deleted):
        obj = wire(encode_event(event))
        assert list(obj)[:3] == ["event", "seq", "now"]
        assert decode_event(obj) == event
    unknown = decode_event({"event": "battery_low", "seq": 5, "now": 9, "percent": 7})
    assert unknown == UnknownEvent(name="battery_low", seq=5, now=9, fields={"percent": 7})


def test_error_replies_raise_the_matching_exception() -> None:
    body = encode_reply(12, ErrorReply(code=3, name="no_such_pod", message="no pod with uid x", now=1))
    with pytest.raises(NoSuchPod) as info:
        decode_reply(wire(body), Status(uid="x"), 12)
    error = info.value
    assert (error.code, error.name, error.message, error.op, error.request_id) == (
        3,
        "no_such_pod",
        "no pod with uid x",
        "status",
        12,
    )
    assert "no_such_pod" in str(error)
    assert "'status'" in str(error)

    body = encode_reply(
        1, ErrorReply(code=9, name="unsupported_version", message="v1 only", now=1, details={"versions": [1]})
    )
    with pytest.raises(UnsupportedVersion) as version_info:
        decode_reply(wire(body), Hello(versions=(2,)), 1)
    assert version_info.value.details == {"versions": [1]}

    body = encode_reply(1, ErrorReply(code=6, name="capacity_exceeded", message="full", now=1))
    with pytest.raises(CapacityExceeded):
        decode_reply(wire(body), REQUESTS[2], 1)

    body = encode_reply(1, ErrorReply(code=150, name="vendor_thing", message="?", now=1))
    with pytest.raises(DeviceError) as generic:
        decode_reply(wire(body), Ping(), 1)
    assert type(generic.value) is DeviceError
    assert generic.value.code == 150


def test_error_codes_agree_with_device_program(device_module: ModuleType) -> None:
    assert {code.value: code.wire_name for code in ErrorCode} == device_module.ERROR_NAMES
    assert set(DEVICE_ERRORS) == set(device_module.ERROR_NAMES)
    assert ErrorCode.NO_SUCH_POD.wire_name == "no_such_pod"


def _reply(request_: Request[Any], reply: Any) -> dict[str, Any]:
    return wire(encode_reply(5, reply))


def _mutate(obj: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    """Set (or, with value ..., delete) the field at a dotted path such as pod.containers.0.state."""
    obj = copy.deepcopy(obj)
    *parents, last = path.split(".")
    target: Any = obj
    for part in parents:
        target = target[int(part)] if isinstance(target, list) else target[part]
    key: Any = int(last) if isinstance(target, list) else last
    if value is ...:
        del target[key]
    else:
        target[key] = value
    return obj


STATUS_OBJ = _reply(Status(uid=UID), StatusReply(pod=POD, now=9))
HELLO_OBJ = _reply(REQUESTS[0], HELLO_REPLY)
LOGS_REQ = Logs(uid=UID, container="main", offset=0, max_bytes=4)
LOGS_OBJ = _reply(
    LOGS_REQ, LogsReply(data=b"abc", offset=0, next_offset=3, earliest=0, end=3, eof=True, now=1)
)

MALFORMED: list[tuple[str, Request[Any], dict[str, Any], str, str]] = [
    ("missing pod", Status(uid=UID), _mutate(STATUS_OBJ, "pod", ...), "pod", "missing"),
    ("missing now", Status(uid=UID), _mutate(STATUS_OBJ, "now", ...), "now", "missing"),
    (
        "ok not boolean",
        Status(uid=UID),
        _mutate(STATUS_OBJ, "ok", "yes"),
        "ok",
        "expected a boolean, got string 'yes'",
    ),
    (
        "unknown state",
        Status(uid=UID),
        _mutate(STATUS_OBJ, "pod.containers.1.state", "sleeping"),
        "pod.containers[1].state",
        "expected one of 'waiting', 'running', 'terminated', got string 'sleeping'",
    ),
    (
        "exit code as string",
        Status(uid=UID),
        _mutate(STATUS_OBJ, "pod.containers.2.exit_code", "3"),
        "pod.containers[2].exit_code",
        "expected an integer, got string '3'",
    ),
    (
        "exit code as float",
        Status(uid=UID),
        _mutate(STATUS_OBJ, "pod.containers.2.exit_code", 3.0),
        "pod.containers[2].exit_code",
        "expected an integer, got number 3.0",
    ),
    (
        "exit code out of range",
        Status(uid=UID),
        _mutate(STATUS_OBJ, "pod.containers.2.exit_code", 300),
        "pod.containers[2].exit_code",
        "must be <= 255",
    ),
    (
        "finished before started",
        Status(uid=UID),
        _mutate(STATUS_OBJ, "pod.containers.2.finished_at", 50),
        "pod.containers[2].finished_at",
        "is before started_at",
    ),
    (
        "running without started_at",
        Status(uid=UID),
        _mutate(STATUS_OBJ, "pod.containers.1.started_at", ...),
        "pod.containers[1].started_at",
        "missing",
    ),
    (
        "duplicate container",
        Status(uid=UID),
        _mutate(STATUS_OBJ, "pod.containers.1.name", "a"),
        "pod.containers[1].name",
        "duplicate container name 'a'",
    ),
    (
        "containers not an array",
        Status(uid=UID),
        _mutate(STATUS_OBJ, "pod.containers", {}),
        "pod.containers",
        "expected an array of objects, got object",
    ),
    ("wrong pod", Status(uid="other"), STATUS_OBJ, "pod.uid", f"expected 'other', got '{UID}'"),
    (
        "bad quantity",
        REQUESTS[0],
        _mutate(HELLO_OBJ, "capacity.memory", "lots"),
        "capacity.memory",
        "'lots' is not a Kubernetes quantity",
    ),
    (
        "capacity not strings",
        REQUESTS[0],
        _mutate(HELLO_OBJ, "capacity.pods", 4),
        "capacity.pods",
        "expected a string",
    ),
    ("tiny max_frame", REQUESTS[0], _mutate(HELLO_OBJ, "max_frame", 16), "max_frame", "must be >= 256"),
    ("version not offered", REQUESTS[0], _mutate(HELLO_OBJ, "version", 3), "version", "not one of [1, 2]"),
    ("empty device id", REQUESTS[0], _mutate(HELLO_OBJ, "device_id", ""), "device_id", "must not be empty"),
    (
        "capabilities",
        REQUESTS[0],
        _mutate(HELLO_OBJ, "capabilities", ["x", 1]),
        "capabilities[1]",
        "expected a string",
    ),
    ("bad base64", LOGS_REQ, _mutate(LOGS_OBJ, "data", "!!!"), "data", "is not valid base64"),
    (
        "next_offset",
        LOGS_REQ,
        _mutate(LOGS_OBJ, "next_offset", 5),
        "next_offset",
        "must be offset + len(data) = 3",
    ),
    (
        "too much data",
        Logs(uid=UID, container="main", max_bytes=2),
        LOGS_OBJ,
        "data",
        "more than max_bytes 2",
    ),
    ("past end", LOGS_REQ, _mutate(LOGS_OBJ, "end", 1), "next_offset", "is past end"),
    (
        "found false gone false",
        Delete(uid=UID),
        {"id": 5, "ok": True, "now": 1, "found": False, "gone": False, "pod": None},
        "gone",
        "must be true when found is false",
    ),
    (
        "error without code",
        Ping(),
        {"id": 5, "ok": False, "now": 1, "error": {"name": "x"}},
        "error.code",
        "missing",
    ),
    (
        "error not object",
        Ping(),
        {"id": 5, "ok": False, "now": 1, "error": "bad"},
        "error",
        "expected an object",
    ),
]


@pytest.mark.parametrize(
    ("case", "request_", "obj", "field", "problem"), MALFORMED, ids=[m[0] for m in MALFORMED]
)
def test_malformed_replies_name_the_field(
    case: str, request_: Request[Any], obj: dict[str, Any], field: str, problem: str
) -> None:
    with pytest.raises(MalformedMessage) as info:
        decode_reply(obj, request_, 5)
    error = info.value
    assert error.field == field, case
    assert problem in error.problem, case
    assert str(error).startswith(f"reply to {request_.OP}: field {field!r}: ")


def test_malformed_events_and_bodies() -> None:
    with pytest.raises(MalformedMessage, match="container_exited event: field 'seq': missing"):
        decode_event({"event": "container_exited", "now": 1, "uid": "u", "container": "c"})
    with pytest.raises(MalformedMessage, match="field 'exit_code': missing"):
        decode_event(
            {"event": "container_exited", "seq": 1, "now": 1, "uid": "u", "container": "c", "finished_at": 1}
        )
    with pytest.raises(MalformedMessage, match="must be a JSON object, not array"):
        loads(b"[1,2]")
    with pytest.raises(MalformedMessage, match="not valid UTF-8 JSON"):
        loads(b'{"id":')
    with pytest.raises(MalformedMessage, match="not valid UTF-8 JSON"):
        loads(b'{"a":"\xff"}')


def test_decode_request_validation() -> None:
    with pytest.raises(MalformedMessage, match="field 'op': unknown op 'fly'"):
        decode_request({"id": 1, "op": "fly"})
    with pytest.raises(MalformedMessage, match="field 'id': must be >= 1"):
        decode_request({"id": 0, "op": "ping"})
    with pytest.raises(MalformedMessage, match=r"create request: field 'containers\[0\].env\[0\]'"):
        decode_request({"id": 1, "op": "create", "uid": "u", "containers": [{"name": "c", "env": [["A"]]}]})
    # env as pairs is accepted and equals env as an object
    _, as_pairs = decode_request(
        {"id": 1, "op": "create", "uid": "u", "containers": [{"name": "c", "env": [["A", "1"], ["A", "2"]]}]}
    )
    _, as_object = decode_request(
        {"id": 1, "op": "create", "uid": "u", "containers": [{"name": "c", "env": {"A": "2"}}]}
    )
    assert as_pairs == as_object


def test_container_spec_conversions() -> None:
    spec = ContainerSpec("c", command=("sleep",), args=["1"], env=[("X", "1"), ("Y", "2"), ("X", "3")])
    assert spec.env == (("X", "3"), ("Y", "2"))
    assert spec.argv == ("sleep", "1")
    assert spec.to_wire() == {"name": "c", "command": ["sleep"], "args": ["1"], "env": {"X": "3", "Y": "2"}}
    with pytest.raises(TypeError):
        ContainerSpec("c", command="sleep 1")
    with pytest.raises(ValueError, match="must not be empty"):
        ContainerSpec("")


def test_request_validation() -> None:
    with pytest.raises(ValueError, match="at least one container"):
        Create(uid="u", namespace="", name="", containers=[])
    with pytest.raises(ValueError, match="unique"):
        Create(uid="u", namespace="", name="", containers=[ContainerSpec("a"), ContainerSpec("a")])
    with pytest.raises(ValueError, match="'grace' must be >= 0"):
        Delete(uid="u", grace=-1)
    with pytest.raises(ValueError, match="'max_bytes' must be >= 1"):
        Logs(uid="u", container="c", max_bytes=0)
    with pytest.raises(ValueError, match="request id"):
        encode_request(0, Ping())
    with pytest.raises(ValueError, match="request id"):
        encode_request(2**31, Ping())


def test_pod_helpers_and_lost_bytes() -> None:
    assert POD.container("b") == ContainerStatus("b", Running(started_at=100))
    assert POD.container("zzz") is None
    assert not POD.finished
    reply = LogsReply(data=b"xyz", offset=100, next_offset=103, earliest=100, end=103, eof=False, now=1)
    assert reply.lost(40) == 60
    assert reply.lost(100) == 0
    assert reply.lost(200) == 0


def test_optional_fields_stay_off_the_wire_unless_used() -> None:
    # Devices without the restart capability never see `previous`; old hosts ignore `restarts`.
    assert "previous" not in wire(encode_request(1, Logs(uid=UID, container="main")))
    assert wire(encode_request(1, Logs(uid=UID, container="main", previous=True)))["previous"] is True
    plain = LogsReply(data=b"", offset=0, next_offset=0, earliest=0, end=0, eof=False, now=1)
    assert "restarts" not in wire(encode_reply(1, plain))
    numbered = LogsReply(data=b"", offset=0, next_offset=0, earliest=0, end=0, eof=False, now=1, restarts=3)
    assert wire(encode_reply(1, numbered))["restarts"] == 3


def test_restart_replies_and_requests_are_validated() -> None:
    request = Restart(uid=UID, container="c", restarts=0)
    reply = wire(encode_reply(3, RestartReply(restarted=False, pod=POD, now=1)))
    assert decode_reply(reply, request, 3) == RestartReply(restarted=False, pod=POD, now=1)
    with pytest.raises(MalformedMessage, match="has no container 'zz'"):
        decode_reply(reply, Restart(uid=UID, container="zz"), 3)
    other = wire(encode_reply(3, RestartReply(restarted=True, pod=PodStatus("x", "", "", ()), now=1)))
    with pytest.raises(MalformedMessage, match=r"field 'pod\.uid'"):
        decode_reply(other, request, 3)
    with pytest.raises(MalformedMessage, match="field 'restarts': missing"):
        decode_request({"id": 1, "op": "restart", "uid": "u", "container": "c"})
    with pytest.raises(ValueError, match="'restarts' must be >= 0"):
        Restart(uid="u", container="c", restarts=-1)
    with pytest.raises(MalformedMessage, match="field 'containers': a pod needs at least one container"):
        decode_request({"id": 1, "op": "create", "uid": "u", "containers": []})
    with pytest.raises(MalformedMessage, match=r"field 'containers\[1\].name': duplicate"):
        decode_request({"id": 1, "op": "create", "uid": "u", "containers": [{"name": "a"}, {"name": "a"}]})
