"""What the kubelet does to log lines on their way out: the ``timestamps`` prefix and the
``limitBytes`` cut. Plugins never see either (see :class:`vkpy.types.LogOptions`)."""

from __future__ import annotations

import datetime

import attrs

from vkpy.types import LogLine


def rfc3339_nano(time: datetime.datetime) -> str:
    """``2026-11-28T08:00:00.123456000Z``: the kubelet's fixed-width RFC3339Nano in UTC (nine digits,
    zeros kept, so columns line up). A naive time is taken as UTC."""
    if time.tzinfo is not None:
        time = time.astimezone(datetime.UTC).replace(tzinfo=None)
    # isoformat zero-pads years before 1000, unlike glibc's %Y, and is one C call per line. Python
    # time stops at microseconds, so the last three nanosecond digits are always zero.
    return time.isoformat(timespec="microseconds") + "000Z"


def render_line(line: LogLine, timestamps: bool) -> bytes:
    """The bytes sent for one line: its data, after its timestamp and a space when asked."""
    if not timestamps:
        return line.data
    return rfc3339_nano(line.time).encode("ascii") + b" " + line.data


@attrs.define
class ByteBudget:
    """``limitBytes``: lets through at most ``remaining`` bytes in total (``None``: no limit)."""

    remaining: int | None

    @property
    def exhausted(self) -> bool:
        return self.remaining is not None and self.remaining <= 0

    def take(self, data: bytes) -> bytes:
        """The part of ``data`` still within the budget, which it uses up."""
        if self.remaining is None:
            return data
        allowed = data[: max(self.remaining, 0)]
        self.remaining -= len(allowed)
        return allowed
