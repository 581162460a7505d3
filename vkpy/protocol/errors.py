"""Exceptions raised by the vkpy device protocol, and the protocol's numeric error codes.

Everything raised by :mod:`vkpy.protocol` derives from :class:`ProtocolError`:

* :class:`FramingError` and its subclasses: a frame failed COBS decoding, its CRC, or a size limit.
* :class:`MalformedMessage`: a frame was intact but its JSON body breaks the spec (names the field).
* :class:`DeviceError` and its subclasses: the device answered with an error reply.
* :class:`RequestTimeout`, :class:`ConnectionClosed`, :class:`HandshakeError`,
  :class:`ClockNotSynchronised`: conditions of the client.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping


class ProtocolError(Exception):
    """Base class of every error raised by :mod:`vkpy.protocol`."""


# --------------------------------------------------------------------------------------------
# Framing


class FramingError(ProtocolError):
    """A frame could not be decoded. ``reason`` is a short token used in logs and counters."""

    reason = "framing"


class CobsError(FramingError):
    """The bytes between two delimiters are not a valid COBS encoding."""

    reason = "cobs"


class CrcError(FramingError):
    """The frame's CRC-32 does not match its body."""

    reason = "crc"


class ShortFrame(FramingError):
    """The decoded frame is too short to hold a CRC and a body."""

    reason = "short"


class FrameTooLarge(FramingError):
    """A frame is longer than the receiver's maximum frame size."""

    reason = "too_large"

    def __init__(self, size: int, limit: int, what: str = "frame") -> None:
        super().__init__(f"{what} of {size} bytes exceeds the maximum frame size of {limit} bytes")
        self.size = size
        self.limit = limit


# --------------------------------------------------------------------------------------------
# Messages


class MalformedMessage(ProtocolError):
    """A message body breaks the spec. ``field`` is a dotted path such as ``pod.containers[0].state``."""

    def __init__(self, context: str, field: str, problem: str) -> None:
        where = f"field {field!r}" if field else "message"
        super().__init__(f"{context}: {where}: {problem}")
        self.context = context
        self.field = field
        self.problem = problem


class HandshakeError(ProtocolError):
    """The hello exchange failed (e.g. the device chose a protocol version we did not offer)."""


class RequestTimeout(ProtocolError, TimeoutError):
    """No reply arrived after every attempt (the request was retransmitted with the same id)."""

    def __init__(self, op: str, request_id: int, attempts: int, timeout: float) -> None:
        super().__init__(
            f"no reply to {op!r} (id {request_id}) after {attempts} attempt(s) of {timeout:g}s each"
        )
        self.op = op
        self.request_id = request_id
        self.attempts = attempts
        self.timeout = timeout


class ConnectionClosed(ProtocolError):
    """The client was closed, or the device's byte stream ended; pending requests fail with this."""


class ClockNotSynchronised(ProtocolError):
    """A device time was converted before any reply gave the host the device's clock."""


# --------------------------------------------------------------------------------------------
# Device error replies


class ErrorCode(enum.IntEnum):
    """Numeric error codes of error replies. The symbolic wire name is ``code.wire_name``."""

    UNKNOWN_OP = 1
    BAD_REQUEST = 2
    NO_SUCH_POD = 3
    NO_SUCH_CONTAINER = 4
    NO_SUCH_PROGRAM = 5
    CAPACITY_EXCEEDED = 6
    FRAME_TOO_LARGE = 7
    BUSY = 8
    UNSUPPORTED_VERSION = 9
    HELLO_REQUIRED = 10
    INTERNAL = 11

    @property
    def wire_name(self) -> str:
        """The symbolic name carried in error replies, e.g. ``"no_such_pod"``."""
        return self.name.lower()


class DeviceError(ProtocolError):
    """The device answered a request with an error reply.

    ``code`` is the numeric code (an :class:`ErrorCode` value, or another integer from a newer
    device), ``name`` its symbolic name as sent, ``message`` the device's human-readable text and
    ``details`` any further fields of the error object (e.g. ``versions`` for unsupported_version).
    """

    CODE: int | None = None

    def __init__(
        self,
        code: int,
        name: str,
        message: str,
        *,
        op: str = "",
        request_id: int = 0,
        details: Mapping[str, object] | None = None,
    ) -> None:
        what = f"{op!r} (id {request_id})" if op else f"request id {request_id}"
        super().__init__(f"device error {code} {name} for {what}: {message}")
        self.code = code
        self.name = name
        self.message = message
        self.op = op
        self.request_id = request_id
        self.details: Mapping[str, object] = dict(details or {})


class UnknownOp(DeviceError):
    CODE = ErrorCode.UNKNOWN_OP


class BadRequest(DeviceError):
    CODE = ErrorCode.BAD_REQUEST


class NoSuchPod(DeviceError):
    CODE = ErrorCode.NO_SUCH_POD


class NoSuchContainer(DeviceError):
    CODE = ErrorCode.NO_SUCH_CONTAINER


class NoSuchProgram(DeviceError):
    CODE = ErrorCode.NO_SUCH_PROGRAM


class CapacityExceeded(DeviceError):
    CODE = ErrorCode.CAPACITY_EXCEEDED


class DeviceFrameTooLarge(DeviceError):
    CODE = ErrorCode.FRAME_TOO_LARGE


class DeviceBusy(DeviceError):
    CODE = ErrorCode.BUSY


class UnsupportedVersion(DeviceError):
    CODE = ErrorCode.UNSUPPORTED_VERSION


class HelloRequired(DeviceError):
    CODE = ErrorCode.HELLO_REQUIRED


class DeviceInternalError(DeviceError):
    CODE = ErrorCode.INTERNAL


DEVICE_ERRORS: Mapping[int, type[DeviceError]] = {
    cls.CODE: cls
    for cls in (
        UnknownOp,
        BadRequest,
        NoSuchPod,
        NoSuchContainer,
        NoSuchProgram,
        CapacityExceeded,
        DeviceFrameTooLarge,
        DeviceBusy,
        UnsupportedVersion,
        HelloRequired,
        DeviceInternalError,
    )
    if cls.CODE is not None
}


def device_error(
    code: int,
    name: str,
    message: str,
    *,
    op: str = "",
    request_id: int = 0,
    details: Mapping[str, object] | None = None,
) -> DeviceError:
    """Build the :class:`DeviceError` subclass for ``code`` (plain DeviceError if unknown)."""
    cls = DEVICE_ERRORS.get(code, DeviceError)
    return cls(code, name, message, op=op, request_id=request_id, details=details)
