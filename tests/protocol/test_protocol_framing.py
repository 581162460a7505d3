"""COBS, CRC-32, frames and the streaming FrameDecoder (and the device program's copy of them)."""

from __future__ import annotations

import random
import zlib
from types import ModuleType

import pytest

from vkpy.protocol import (
    DEFAULT_MAX_FRAME,
    CobsError,
    CrcError,
    FrameDecoder,
    FrameTooLarge,
    ShortFrame,
    cobs_decode,
    cobs_encode,
    crc32,
    decode_frame,
    encode_frame,
)
from vkpy.protocol.framing import cobs_max_encoded_size

RUN_01_FE = bytes(range(1, 255))  # 01 02 ... FE (254 bytes)

# The examples of the COBS article (Cheshire & Baker; also on Wikipedia), delimiter not included.
COBS_VECTORS = [
    (b"", b"\x01"),
    (b"\x00", b"\x01\x01"),
    (b"\x00\x00", b"\x01\x01\x01"),
    (b"\x00\x11\x00", b"\x01\x02\x11\x01"),
    (b"\x11\x22\x00\x33", b"\x03\x11\x22\x02\x33"),
    (b"\x11\x22\x33\x44", b"\x05\x11\x22\x33\x44"),
    (b"\x11\x00\x00\x00", b"\x02\x11\x01\x01\x01"),
    (RUN_01_FE, b"\xff" + RUN_01_FE),
    (b"\x00" + RUN_01_FE, b"\x01\xff" + RUN_01_FE),
    (bytes(range(1, 256)), b"\xff" + RUN_01_FE + b"\x02\xff"),
    (bytes(range(2, 256)) + b"\x00", b"\xff" + bytes(range(2, 256)) + b"\x01\x01"),
    (bytes(range(3, 256)) + b"\x00\x01", b"\xfe" + bytes(range(3, 256)) + b"\x02\x01"),
]


def frame_of(text: str) -> bytes:
    return encode_frame(text.encode())


@pytest.mark.parametrize(("data", "encoded"), COBS_VECTORS)
def test_cobs_known_vectors(data: bytes, encoded: bytes) -> None:
    assert cobs_encode(data) == encoded
    assert cobs_decode(encoded) == data


def test_cobs_round_trip_random() -> None:
    rng = random.Random(20240601)
    for size in [*list(range(0, 600)), 1000, 4096, 65536]:
        zero_share = rng.choice([0.0, 0.01, 0.2, 0.9])
        data = bytes(0 if rng.random() < zero_share else rng.randrange(1, 256) for _ in range(size))
        encoded = cobs_encode(data)
        assert 0 not in encoded
        assert len(encoded) <= cobs_max_encoded_size(size)
        assert cobs_decode(encoded) == data


def test_cobs_decoder_accepts_redundant_final_block() -> None:
    assert cobs_decode(b"\xff" + RUN_01_FE + b"\x01") == RUN_01_FE


@pytest.mark.parametrize(
    ("encoded", "problem"),
    [
        (b"\x05\x11\x22", "runs past the end"),
        (b"\x03\x11\x00", "zero byte"),
        (b"\x00", "zero byte"),
    ],
)
def test_cobs_decoder_rejects_invalid_input(encoded: bytes, problem: str) -> None:
    with pytest.raises(CobsError, match=problem):
        cobs_decode(encoded)


def test_crc32_check_values() -> None:
    assert crc32(b"123456789") == 0xCBF43926
    assert crc32(b"") == 0
    assert crc32(b"a") == 0xE8B7BE43
    data = bytes(range(256)) * 5
    assert crc32(data) == zlib.crc32(data)


def test_frame_layout() -> None:
    body = b'{"id":1,"op":"ping"}'
    frame = encode_frame(body)
    assert frame.endswith(b"\x00")
    assert frame.count(0) == 1
    raw = cobs_decode(frame[:-1])
    assert raw[:-4] == body
    assert int.from_bytes(raw[-4:], "little") == zlib.crc32(body)
    assert decode_frame(frame) == body
    assert decode_frame(frame[:-1]) == body


def test_decode_frame_errors() -> None:
    frame = bytearray(encode_frame(b'{"id":1,"op":"ping"}')[:-1])
    frame[5] ^= 0x01
    with pytest.raises(CrcError):
        decode_frame(bytes(frame))
    with pytest.raises(ShortFrame):
        decode_frame(cobs_encode(b"\x01\x02\x03\x04"))
    with pytest.raises(CobsError):
        decode_frame(b"\x09\x41")


def test_encode_frame_enforces_max_frame() -> None:
    body = b"x" * 300
    assert len(encode_frame(body, max_frame=306)) == 307
    with pytest.raises(FrameTooLarge) as info:
        encode_frame(body, max_frame=305)
    assert info.value.size == 306
    assert info.value.limit == 305


def test_decoder_byte_by_byte() -> None:
    bodies = [b'{"n":%d}' % i for i in range(5)]
    stream = b"".join(encode_frame(b) for b in bodies)
    decoder = FrameDecoder()
    out = []
    for i in range(len(stream)):
        out += decoder.feed(stream[i : i + 1])
    assert out == bodies
    assert decoder.dropped == {}
    assert decoder.pending == 0


def test_decoder_ignores_empty_frames() -> None:
    decoder = FrameDecoder()
    assert decoder.feed(b"\x00\x00\x00" + frame_of("{}") + b"\x00\x00") == [b"{}"]
    assert decoder.dropped == {}


def test_decoder_resyncs_after_garbage() -> None:
    garbage = bytes(range(1, 200)) * 3  # no delimiter in it
    decoder = FrameDecoder(max_frame=4096)
    # Garbage glued to a frame spoils that frame (it fails its CRC or COBS)...
    assert decoder.feed(garbage + frame_of('{"a":1}') + frame_of('{"b":2}')) == [b'{"b":2}']
    assert sum(decoder.dropped.values()) == 1
    # ...unless the sender starts the frame with a delimiter, as vkpy and the device do.
    assert decoder.feed(garbage + b"\x00" + frame_of('{"c":3}')) == [b'{"c":3}']
    # Garbage with delimiters in it: each piece is dropped, frames after it survive.
    noisy = b"\x13\x00\xff\xfe\x00\x00\x41\x42\x43\x00"
    assert decoder.feed(noisy + frame_of('{"d":4}')) == [b'{"d":4}']


def test_decoder_drops_a_corrupted_frame_and_keeps_the_next() -> None:
    good = frame_of('{"id":1,"ok":true,"now":5}')
    bad = bytearray(good)
    bad[10] ^= 0x20
    drops: list[tuple[str, int]] = []
    decoder = FrameDecoder(on_drop=lambda reason, size: drops.append((reason, size)))
    assert decoder.feed(bytes(bad) + good) == [b'{"id":1,"ok":true,"now":5}']
    assert drops == [("crc", len(good) - 1)]
    assert decoder.dropped == {"crc": 1}


@pytest.mark.parametrize("chunk", [1, 7, 100, 10_000])
def test_decoder_rejects_oversize_frames(chunk: int) -> None:
    decoder = FrameDecoder(max_frame=256)
    big = frame_of('{"pad":"' + "x" * 600 + '"}')
    fits = frame_of('{"pad":"' + "y" * 200 + '"}')
    stream = big + fits + big + big + fits
    out = []
    for i in range(0, len(stream), chunk):
        out += decoder.feed(stream[i : i + chunk])
        assert decoder.pending <= 256
    assert len(out) == 2
    assert decoder.dropped == {"too_large": 3}


def test_decoder_fuzz_noise_between_frames() -> None:
    rng = random.Random(7)
    bodies = []
    stream = bytearray()
    for i in range(300):
        if rng.random() < 0.5:
            stream += bytes(rng.randrange(256) for _ in range(rng.randrange(1, 80)))
        body = b'{"id":%d,"ok":true,"now":%d}' % (i + 1, rng.randrange(10**9))
        bodies.append(body)
        stream += b"\x00" + encode_frame(body)
    decoder = FrameDecoder()
    out = []
    pos = 0
    while pos < len(stream):
        step = rng.randrange(1, 300)
        out += decoder.feed(bytes(stream[pos : pos + step]))
        pos += step
    assert out == bodies


def test_max_frame_bounds() -> None:
    with pytest.raises(ValueError, match="between"):
        FrameDecoder(max_frame=100)
    decoder = FrameDecoder()
    assert decoder.max_frame == DEFAULT_MAX_FRAME == 1024
    decoder.max_frame = 65536
    assert decoder.max_frame == 65536


# ---------------------------------------------------------------- the device program's copy


def test_device_program_framing_matches(device_module: ModuleType) -> None:
    rng = random.Random(99)
    for size in [*list(range(0, 300)), 508, 509, 1000, 3000]:
        data = bytes(rng.choice([0, 0, 1, 0x7F, 0xFF, rng.randrange(256)]) for _ in range(size))
        assert device_module.cobs_encode(data) == cobs_encode(data)
        assert device_module.cobs_decode(cobs_encode(data)) == data
        assert device_module.crc32_py(data) == crc32(data)
        assert device_module.crc32(data) == crc32(data)
        if size:
            assert device_module.encode_frame(data) == encode_frame(data)
            assert device_module.decode_frame(encode_frame(data)[:-1]) == data
    for encoded in (b"\x05\x11\x22", b"\x03\x11\x00"):
        assert device_module.cobs_decode(encoded) is None


def test_device_program_frame_reader(device_module: ModuleType) -> None:
    reader = device_module.FrameReader(256)
    good = frame_of('{"id":1,"op":"ping"}')
    big = frame_of('{"pad":"' + "x" * 600 + '"}')
    corrupt = bytearray(good)
    corrupt[3] ^= 1
    stream = b"garbage" + b"\x00" + good + bytes(corrupt) + big + good
    out = []
    for i in range(0, len(stream), 5):
        out += reader.feed(stream[i : i + 5])
    assert out == [b'{"id":1,"op":"ping"}', None, b'{"id":1,"op":"ping"}']  # None: oversize
    assert reader.dropped == 2  # the garbage and the corrupted frame


def test_device_program_base64_fallback(device_module: ModuleType, monkeypatch: pytest.MonkeyPatch) -> None:
    import base64

    samples = [b"", b"a", b"ab", b"abc", bytes(range(256))]
    expected = [base64.b64encode(s).decode() for s in samples]
    assert [device_module.b64encode(s) for s in samples] == expected
    monkeypatch.setattr(device_module, "binascii", None)
    assert [device_module.b64encode(s) for s in samples] == expected
