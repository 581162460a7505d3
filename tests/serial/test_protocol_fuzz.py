"""Property tests of the protocol's codecs (what the serial line carries): round trips of frames and
messages, and fuzzing of every decoder with arbitrary bytes and JSON, which must never raise
anything but the protocol's own errors."""

from __future__ import annotations

import contextlib
import importlib.util
import json
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vkpy.protocol import (
    ContainerExited,
    ContainerSpec,
    ContainerStatus,
    Create,
    CreateReply,
    Delete,
    DeleteReply,
    FrameDecoder,
    FramingError,
    Hello,
    List,
    ListReply,
    Logs,
    LogsReply,
    MalformedMessage,
    Ping,
    PodDeleted,
    PodStatus,
    ProtocolError,
    Restart,
    RestartReply,
    Running,
    Status,
    StatusReply,
    Terminated,
    Waiting,
    cobs_decode,
    cobs_encode,
    decode_event,
    decode_frame,
    decode_reply,
    decode_request,
    encode_event,
    encode_frame,
    encode_reply,
    encode_request,
)
from vkpy.protocol.messages import loads

DEVICE = Path(__file__).resolve().parents[2] / "examples" / "device" / "vkpy_device.py"
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _device_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("vkpy_reference_device_fuzz", DEVICE)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


device = _device_module()

# --- strategies ------------------------------------------------------------------------------------

# Kubernetes strings are valid Unicode: no lone surrogates (they cannot be UTF-8 encoded).
UNICODE = st.characters(exclude_categories=["Cs"])
texts = st.text(UNICODE, max_size=24)
names = st.text(UNICODE, min_size=1, max_size=16)
times = st.integers(min_value=0, max_value=2**40)
counts = st.integers(min_value=0, max_value=2**31)


@st.composite
def container_specs(draw: st.DrawFn, name: str) -> ContainerSpec:
    return ContainerSpec(
        name=name,
        command=draw(st.lists(texts, max_size=4)),
        args=draw(st.lists(texts, max_size=4)),
        env=draw(st.dictionaries(names, texts, max_size=4)),
        working_dir=draw(st.none() | texts),
        image=draw(st.none() | texts),
    )


@st.composite
def creates(draw: st.DrawFn) -> Create:
    container_names = draw(st.lists(names, min_size=1, max_size=3, unique=True))
    return Create(
        uid=draw(names),
        namespace=draw(texts),
        name=draw(texts),
        containers=[draw(container_specs(n)) for n in container_names],
    )


requests = st.one_of(
    st.builds(
        Hello,
        versions=st.lists(st.integers(1, 9), min_size=1, max_size=3).map(tuple),
        max_frame=st.integers(1024, 1 << 20),
        host=texts,
    ),
    st.builds(Ping),
    creates(),
    st.builds(Delete, uid=names, grace=st.integers(0, 10**6)),
    st.builds(List),
    st.builds(Status, uid=names),
    st.builds(
        Logs,
        uid=names,
        container=names,
        offset=counts,
        max_bytes=st.integers(1, 10**6),
        previous=st.booleans(),
    ),
    st.builds(Restart, uid=names, container=names, restarts=counts),
)


@st.composite
def states(draw: st.DrawFn) -> Waiting | Running | Terminated:
    kind = draw(st.sampled_from(["waiting", "running", "terminated"]))
    if kind == "waiting":
        return Waiting(reason=draw(names), message=draw(texts))
    if kind == "running":
        return Running(started_at=draw(times))
    started = draw(st.none() | times)
    finished = draw(times) + (started or 0)
    return Terminated(
        exit_code=draw(st.integers(0, 255)),
        reason=draw(names),
        finished_at=finished,
        started_at=started,
        message=draw(texts),
    )


@st.composite
def pod_statuses(draw: st.DrawFn, uid: str | None = None) -> PodStatus:
    container_names = draw(st.lists(names, max_size=3, unique=True))
    return PodStatus(
        uid=uid if uid is not None else draw(names),
        namespace=draw(texts),
        name=draw(texts),
        containers=tuple(ContainerStatus(n, draw(states()), draw(counts)) for n in container_names),
        deleting=draw(st.booleans()),
    )


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**60), 2**60) | st.floats(allow_nan=False) | texts,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(texts, children, max_size=4),
    max_leaves=20,
)


@st.composite
def reply_pairs(draw: st.DrawFn) -> tuple[Any, Any]:
    """A request and a valid reply to it."""
    now = draw(times)
    uid = draw(names)
    kind = draw(st.sampled_from(["create", "delete", "list", "status", "logs", "restart"]))
    if kind == "create":
        request = Create(uid=uid, namespace="", name="", containers=[ContainerSpec("main")])
        return request, CreateReply(created=draw(st.booleans()), pod=draw(pod_statuses(uid)), now=now)
    if kind == "delete":
        found = draw(st.booleans())
        pod = draw(pod_statuses(uid)) if found else None
        return Delete(uid=uid), DeleteReply(
            found=found, gone=not found or draw(st.booleans()), pod=pod, now=now
        )
    if kind == "list":
        return List(), ListReply(pods=tuple(draw(st.lists(pod_statuses(), max_size=3))), now=now)
    if kind == "status":
        return Status(uid=uid), StatusReply(pod=draw(pod_statuses(uid)), now=now)
    if kind == "restart":
        others = [c for c in draw(pod_statuses(uid)).containers if c.name != "main"]
        pod = PodStatus(uid, "", "", (*others, ContainerStatus("main", draw(states()), draw(counts))))
        return Restart(uid=uid, container="main"), RestartReply(
            restarted=draw(st.booleans()), pod=pod, now=now
        )
    payload = draw(st.binary(max_size=600))
    offset = draw(counts)
    logs_request = Logs(uid=uid, container="main", offset=offset, max_bytes=max(1, len(payload)))
    reply = LogsReply(
        data=payload,
        offset=offset,
        next_offset=offset + len(payload),
        earliest=draw(st.integers(0, offset)),
        end=offset + len(payload) + draw(st.integers(0, 100)),
        eof=draw(st.booleans()),
        now=now,
        restarts=draw(st.none() | counts),
    )
    return logs_request, reply


@st.composite
def valid_objects(draw: st.DrawFn) -> dict[str, Any]:
    """A decoded message of any kind, valid to start with."""
    kind = draw(st.sampled_from(["request", "reply", "error", "event"]))
    if kind == "request":
        return loads(encode_request(draw(st.integers(1, 2**31 - 1)), draw(requests)))
    if kind == "reply":
        return loads(encode_reply(1, draw(reply_pairs())[1]))
    if kind == "error":
        error = {"code": draw(st.integers(-5, 200)), "name": draw(texts), "message": draw(texts)}
        return {"id": 1, "ok": False, "now": draw(times), "error": error}
    state = draw(states())
    if isinstance(state, Terminated) and draw(st.booleans()):
        return loads(encode_event(ContainerExited(seq=1, now=5, uid="u", container="main", state=state)))
    return loads(encode_event(PodDeleted(seq=2, now=6, uid="u")))


@st.composite
def mutated_objects(draw: st.DrawFn) -> dict[str, Any]:
    """A valid message with a few fields deleted or replaced by anything, at any depth: the
    fuzzing then reaches deep into the validators."""
    obj = draw(valid_objects())
    for _ in range(draw(st.integers(1, 4))):
        target: Any = obj
        while True:
            values = target.values() if isinstance(target, dict) else target
            children = [v for v in values if isinstance(v, dict | list) and v]
            if not children or not draw(st.booleans()):
                break
            target = draw(st.sampled_from(children))
        if isinstance(target, dict) and target:
            key = draw(st.sampled_from(sorted(target)))
            if draw(st.booleans()):
                del target[key]
            else:
                target[key] = draw(json_values)
        elif isinstance(target, list) and target:
            target[draw(st.integers(0, len(target) - 1))] = draw(json_values)
    return obj


# --- round trips -----------------------------------------------------------------------------------


@FUZZ
@given(st.binary(max_size=2000))
def test_cobs_round_trip_has_no_zero_and_bounded_overhead(data: bytes) -> None:
    encoded = cobs_encode(data)
    assert 0 not in encoded
    assert len(encoded) <= len(data) + 1 + len(data) // 254
    assert cobs_decode(encoded) == data
    assert device.cobs_encode(data) == encoded
    assert device.cobs_decode(encoded) == data


@FUZZ
@given(st.binary(min_size=1, max_size=2000))
def test_frame_round_trip_in_both_implementations(body: bytes) -> None:
    frame = encode_frame(body)
    assert frame.endswith(b"\x00")
    assert 0 not in frame[:-1]
    assert decode_frame(frame) == body
    assert device.encode_frame(body) == frame
    assert device.decode_frame(frame[:-1]) == body


@FUZZ
@given(st.lists(st.binary(min_size=1, max_size=300), max_size=8), st.data())
def test_frames_split_anywhere_come_out_whole_and_in_order(bodies: list[bytes], data: st.DataObject) -> None:
    stream = b"".join(b"\x00" + encode_frame(body) for body in bodies)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=10)))
    chunks = [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True)]
    decoder = FrameDecoder(4096)
    reader = device.FrameReader(4096)
    got = [body for chunk in chunks for body in decoder.feed(chunk)]
    got_by_device = [body for chunk in chunks for body in reader.feed(chunk)]
    assert got == bodies
    assert got_by_device == bodies
    assert decoder.dropped == {}


@FUZZ
@given(requests, st.integers(1, 2**31 - 1))
def test_every_request_round_trips(request: Any, request_id: int) -> None:
    body = encode_request(request_id, request)
    assert decode_request(loads(body)) == (request_id, request)
    assert json.loads(device.decode_frame(device.encode_frame(body)[:-1])) == json.loads(body)


@FUZZ
@given(reply_pairs())
def test_every_reply_round_trips(pair: tuple[Any, Any]) -> None:
    request, reply = pair
    assert decode_reply(loads(encode_reply(7, reply)), request, 7) == reply


@FUZZ
@given(names, names, states().filter(lambda s: isinstance(s, Terminated)), counts, times)
def test_events_round_trip(uid: str, container: str, state: Any, seq: int, now: int) -> None:
    for event in (
        ContainerExited(seq=seq + 1, now=now, uid=uid, container=container, state=state),
        PodDeleted(seq=seq + 1, now=now, uid=uid),
    ):
        assert decode_event(loads(encode_event(event))) == event


# --- fuzzing: nothing but the protocol's own errors ------------------------------------------------


@FUZZ
@given(st.binary(max_size=3000))
def test_decode_frame_raises_only_framing_errors(data: bytes) -> None:
    try:
        body = decode_frame(data)
    except FramingError:
        return
    assert encode_frame(body)[:-1] == data or decode_frame(encode_frame(body)) == body


@FUZZ
@given(st.lists(st.binary(max_size=700), max_size=12), st.integers(256, 2048))
def test_the_stream_decoders_never_raise_and_never_buffer_without_bound(
    chunks: list[bytes], limit: int
) -> None:
    decoder = FrameDecoder(limit, on_drop=lambda reason, size: None)
    reader = device.FrameReader(limit)
    for chunk in chunks:
        for body in decoder.feed(chunk):
            assert encode_frame(body)  # an intact frame: its CRC held
        reader.feed(chunk)
        assert decoder.pending <= limit
        assert len(reader.buf) <= limit


@FUZZ
@given(st.binary(max_size=500))
def test_loads_raises_only_malformed_message(body: bytes) -> None:
    try:
        obj = loads(body)
    except MalformedMessage:
        return
    assert isinstance(obj, dict)


@FUZZ
@given(mutated_objects())
def test_decode_event_raises_only_protocol_errors(obj: dict[str, Any]) -> None:
    with contextlib.suppress(ProtocolError):
        decode_event(obj)


@FUZZ
@given(mutated_objects(), requests)
def test_decode_reply_raises_only_protocol_errors(obj: dict[str, Any], request: Any) -> None:
    with contextlib.suppress(ProtocolError):
        decode_reply(obj, request, 1)


@FUZZ
@given(mutated_objects())
def test_decode_request_raises_only_protocol_errors(obj: dict[str, Any]) -> None:
    with contextlib.suppress(ProtocolError):
        decode_request(obj)


@FUZZ
@given(mutated_objects())
def test_the_reference_device_answers_anything_without_crashing(obj: dict[str, Any]) -> None:
    target = device.Device()
    target.handle_body(json.dumps({"id": 1, "op": "hello", "versions": [1], "max_frame": 65536}).encode())
    target.handle_body(json.dumps(obj).encode())
    for frame in target.take_output():
        reply = loads(decode_frame(frame))
        assert "id" in reply or "event" in reply


@pytest.mark.parametrize(
    "body",
    [b"[" * 100_000, b'{"a":' * 50_000, b"1e999999", b'{"id": NaN}', b"\xff\xfe", b'"\\ud800"'],
    ids=["deep-array", "deep-object", "huge-float", "nan", "not-utf8", "lone-surrogate"],
)
def test_hostile_bodies_are_malformed_messages(body: bytes) -> None:
    try:
        obj = loads(body)
    except MalformedMessage:
        return
    # Parsed: the validators must still refuse it with the protocol's own error.
    with pytest.raises(ProtocolError):
        decode_reply(obj, Ping(), 1)
