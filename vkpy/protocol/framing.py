"""Framing of the vkpy device protocol: COBS, CRC-32 and a 0x00 delimiter.

A frame on the wire is::

    COBS( body || CRC-32(body) as 4 bytes little-endian )  0x00

``body`` is the message (UTF-8 JSON, see :mod:`vkpy.protocol.messages`). COBS removes every 0x00
from the encoded bytes, so 0x00 only ever appears as the delimiter and a receiver resynchronises
at the next 0x00 after any garbage. The maximum frame size counts the COBS-encoded bytes between
two delimiters (the delimiters excluded). See docs/protocol.md.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Callable

import structlog

from .errors import CobsError, CrcError, FrameTooLarge, FramingError, ShortFrame

log = structlog.get_logger("vkpy.protocol")

DELIMITER = b"\x00"
CRC_SIZE = 4
DEFAULT_MAX_FRAME = 1024
"""Frame size limit that applies before the hello exchange (bytes between delimiters)."""
MIN_MAX_FRAME = 256
"""Smallest maximum frame size a device may announce; hello requests fit in this."""
MIN_HOST_MAX_FRAME = 1024
"""Smallest maximum frame size a host may announce (a hello reply must fit in it)."""
MAX_MAX_FRAME = 1 << 20
"""Largest maximum frame size a peer may announce."""

_CRC = struct.Struct("<I")


def crc32(data: bytes) -> int:
    """CRC-32 (IEEE 802.3, reflected, as zlib/binascii.crc32): ``crc32(b"123456789") == 0xCBF43926``."""
    return zlib.crc32(data) & 0xFFFFFFFF


def cobs_encode(data: bytes) -> bytes:
    """COBS-encode ``data`` (no delimiter added). The output contains no 0x00 byte.

    Canonical form: a run of exactly 254 non-zero bytes at the very end is encoded as ``FF`` and
    the bytes, without a trailing ``01`` block (the same output as the reference C encoders).
    """
    out = bytearray()
    parts = bytes(data).split(b"\x00")
    last = len(parts) - 1
    for index, part in enumerate(parts):
        pos = 0
        size = len(part)
        while size - pos >= 254:
            out.append(0xFF)
            out += part[pos : pos + 254]
            pos += 254
        if index == last and size > 0 and pos == size:
            break
        out.append(size - pos + 1)
        out += part[pos:]
    return bytes(out)


def cobs_decode(data: bytes) -> bytes:
    """Decode COBS ``data`` (without the delimiter). Raises :class:`CobsError` if invalid.

    Both the canonical form and the variant with a trailing ``01`` after a final ``FF`` block
    are accepted.
    """
    out = bytearray()
    size = len(data)
    i = 0
    while i < size:
        code = data[i]
        if code == 0:
            raise CobsError(f"zero byte at offset {i} inside a COBS frame")
        end = i + code
        if end > size:
            raise CobsError(
                f"COBS block at offset {i} (code 0x{code:02x}) runs past the end of the frame ({size} bytes)"
            )
        block = data[i + 1 : end]
        if 0 in block:
            raise CobsError(f"zero byte inside the COBS block at offset {i}")
        out += block
        i = end
        if code != 0xFF and i < size:
            out.append(0)
    return bytes(out)


def cobs_max_encoded_size(size: int) -> int:
    """Upper bound of the COBS-encoded length of ``size`` bytes (without the delimiter)."""
    return size + 1 + size // 254


def encode_frame(body: bytes, *, max_frame: int | None = None) -> bytes:
    """Encode a message body as a complete frame, ending with the 0x00 delimiter.

    Raises :class:`FrameTooLarge` if ``max_frame`` is given and the encoded bytes (delimiter
    excluded) exceed it.
    """
    encoded = cobs_encode(bytes(body) + _CRC.pack(crc32(body)))
    if max_frame is not None and len(encoded) > max_frame:
        raise FrameTooLarge(len(encoded), max_frame, "outgoing frame")
    return encoded + DELIMITER


def decode_frame(frame: bytes) -> bytes:
    """Decode the bytes between two delimiters into the message body, checking the CRC.

    A trailing delimiter, if present, is ignored. Raises a :class:`FramingError` subclass.
    """
    if frame.endswith(DELIMITER):
        frame = frame[:-1]
    raw = cobs_decode(frame)
    if len(raw) <= CRC_SIZE:
        raise ShortFrame(f"decoded frame of {len(raw)} bytes holds no body")
    body, trailer = raw[:-CRC_SIZE], raw[-CRC_SIZE:]
    (received,) = _CRC.unpack(trailer)
    computed = crc32(body)
    if received != computed:
        raise CrcError(f"CRC mismatch: frame carries 0x{received:08x}, body gives 0x{computed:08x}")
    return body


DropHandler = Callable[[str, int], None]


class FrameDecoder:
    """Streaming decoder: feed arbitrary byte chunks, get back the bodies of intact frames.

    Corrupt frames (bad COBS, bad CRC, too short) and frames longer than ``max_frame`` are
    dropped and counted in :attr:`dropped`; decoding resumes at the next delimiter, so the
    decoder resynchronises after any garbage. Consecutive delimiters (empty frames) are ignored.
    ``on_drop(reason, size)`` is called for each dropped frame; by default a structlog warning
    ``protocol.frame_dropped`` is logged.
    """

    def __init__(self, max_frame: int = DEFAULT_MAX_FRAME, on_drop: DropHandler | None = None) -> None:
        self._max_frame = _check_max_frame(max_frame)
        self._buffer = bytearray()
        self._skipping = False
        self._skipped = 0
        self._on_drop = on_drop
        self.dropped: dict[str, int] = {}
        self.frames = 0

    @property
    def max_frame(self) -> int:
        """Largest accepted frame (COBS bytes between delimiters)."""
        return self._max_frame

    @max_frame.setter
    def max_frame(self, value: int) -> None:
        self._max_frame = _check_max_frame(value)

    @property
    def pending(self) -> int:
        """Number of bytes buffered of a frame not yet terminated."""
        return len(self._buffer)

    def reset(self) -> None:
        """Forget any partial frame (e.g. after reopening the port)."""
        self._buffer.clear()
        self._skipping = False
        self._skipped = 0

    def feed(self, data: bytes) -> list[bytes]:
        """Consume a chunk of bytes; return the bodies of the frames it completed, in order."""
        bodies: list[bytes] = []
        pieces = bytes(data).split(DELIMITER)
        for piece in pieces[:-1]:
            if self._skipping:
                self._drop(FrameTooLarge.reason, self._skipped + len(piece))
                self._skipping = False
                self._skipped = 0
                continue
            if self._buffer:
                self._buffer += piece
                frame = bytes(self._buffer)
                self._buffer.clear()
            else:
                frame = piece
            if not frame:
                continue
            if len(frame) > self._max_frame:
                self._drop(FrameTooLarge.reason, len(frame))
                continue
            try:
                bodies.append(decode_frame(frame))
            except FramingError as exc:
                self._drop(exc.reason, len(frame))
                continue
            self.frames += 1
        tail = pieces[-1]
        if self._skipping:
            self._skipped += len(tail)
        elif tail:
            self._buffer += tail
            if len(self._buffer) > self._max_frame:
                # Do not buffer without bound: discard until the next delimiter.
                self._skipping = True
                self._skipped = len(self._buffer)
                self._buffer.clear()
        return bodies

    def _drop(self, reason: str, size: int) -> None:
        self.dropped[reason] = self.dropped.get(reason, 0) + 1
        if self._on_drop is not None:
            self._on_drop(reason, size)
        else:
            log.warning("protocol.frame_dropped", reason=reason, size=size)


def _check_max_frame(value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"max_frame must be an int, not {type(value).__name__}")
    if not MIN_MAX_FRAME <= value <= MAX_MAX_FRAME:
        raise ValueError(f"max_frame must be between {MIN_MAX_FRAME} and {MAX_MAX_FRAME}, not {value}")
    return value
