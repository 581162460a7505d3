"""The test vectors printed in docs/protocol.md match the code, byte for byte, in both directions."""

from __future__ import annotations

import json
import re
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from vkpy.protocol import (
    DeviceError,
    FrameDecoder,
    Request,
    cobs_decode,
    cobs_encode,
    crc32,
    decode_event,
    decode_frame,
    decode_reply,
    decode_request,
    encode_event,
    encode_frame,
    encode_reply,
    encode_request,
)

VECTOR = re.compile(
    r"### (?P<title>V\d+: [^\n]+)\n\n"
    r"Body \((?P<size>\d+) bytes\), CRC-32 `0x(?P<crc>[0-9a-f]{8})`:\n\n"
    r"```json\n(?P<body>[^\n]+)\n```\n\n"
    r"Frame \((?P<frame_size>\d+) bytes with the delimiter\):\n\n"
    r"```hex\n(?P<hex>[0-9a-f \n]+?)\n```"
)
COBS_ROW = re.compile(r"^\| `(?P<data>[0-9A-F ]+)` \| `(?P<cobs>[0-9A-F ]+)` \|$", re.MULTILINE)
CRC_ROW = re.compile(
    r"^\| (?P<input>`123456789`|\(empty\)|`a`) \| `0x(?P<crc>[0-9a-f]{8})` \| `(?P<wire>[0-9a-f ]+)` \|$",
    re.MULTILINE,
)


def _spec(spec_path: Path) -> str:
    return spec_path.read_text(encoding="utf-8")


def _vectors(spec_path: Path) -> list[dict[str, str]]:
    text = _spec(spec_path)
    section = text[text.index("## 14. Test vectors") :]
    return [m.groupdict() for m in VECTOR.finditer(section)]


def test_spec_has_the_vectors(spec_path: Path) -> None:
    vectors = _vectors(spec_path)
    titles = " ".join(v["title"] for v in vectors)
    assert len(vectors) >= 12, titles
    section = _spec(spec_path)
    assert section.count("```hex") == len(vectors), "a hex block did not match the vector format"
    for needed in (
        "hello request",
        "hello reply",
        "create request",
        "container_exited event",
        "logs reply",
        "error reply",
    ):
        assert needed in titles


def test_every_vector_frame_matches(spec_path: Path, device_module: ModuleType) -> None:
    for vector in _vectors(spec_path):
        body = vector["body"].encode()
        frame = bytes.fromhex(vector["hex"].replace("\n", " "))
        title = vector["title"]
        assert len(body) == int(vector["size"]), title
        assert crc32(body) == int(vector["crc"], 16), title
        assert len(frame) == int(vector["frame_size"]), title
        assert encode_frame(body) == frame, title
        assert decode_frame(frame) == body, title
        assert FrameDecoder(max_frame=4096).feed(b"\x00" + frame) == [body], title
        assert device_module.encode_frame(body) == frame, title
        assert device_module.decode_frame(frame[:-1]) == body, title


def test_every_vector_body_is_a_valid_message(spec_path: Path) -> None:
    requests: dict[int, Request[Any]] = {}
    kinds = set()
    for vector in _vectors(spec_path):
        body = vector["body"].encode()
        obj = json.loads(body)
        title = vector["title"]
        if "op" in obj:
            request_id, request = decode_request(obj)
            requests[request_id] = request
            assert encode_request(request_id, request) == body, title
            kinds.add("request")
        elif "event" in obj:
            assert encode_event(decode_event(obj)) == body, title
            kinds.add("event")
        else:
            request = requests[obj["id"]]  # each reply follows its request in the spec
            if obj["ok"]:
                assert encode_reply(obj["id"], decode_reply(obj, request, obj["id"])) == body, title
                kinds.add("reply")
            else:
                with pytest.raises(DeviceError) as info:
                    decode_reply(obj, request, obj["id"])
                assert info.value.code == obj["error"]["code"]
                kinds.add("error")
    assert kinds == {"request", "reply", "event", "error"}


def test_vectors_exercise_the_edge_cases(spec_path: Path) -> None:
    frames = [bytes.fromhex(v["hex"].replace("\n", " ")) for v in _vectors(spec_path)]
    raws = [cobs_decode(f[:-1]) for f in frames]
    assert any(len(f) > 255 for f in frames), "a frame longer than one COBS block"
    assert any(0 in raw[-4:] for raw in raws), "a CRC with a zero byte"
    assert any(raw[-1] == 0 for raw in raws), "a frame ending in a zero byte"


def test_spec_cobs_table(spec_path: Path) -> None:
    rows = [m.groupdict() for m in COBS_ROW.finditer(_spec(spec_path))]
    assert len(rows) >= 6
    for row in rows:
        data = bytes.fromhex(row["data"])
        encoded = bytes.fromhex(row["cobs"])
        assert cobs_encode(data) == encoded, row
        assert cobs_decode(encoded) == data, row


def test_spec_crc_table(spec_path: Path) -> None:
    rows = [m.groupdict() for m in CRC_ROW.finditer(_spec(spec_path))]
    assert len(rows) == 3
    inputs = {"`123456789`": b"123456789", "(empty)": b"", "`a`": b"a"}
    for row in rows:
        value = crc32(inputs[row["input"]])
        assert value == int(row["crc"], 16)
        assert value.to_bytes(4, "little") == bytes.fromhex(row["wire"])
