"""The kubelet's container log query (``/containerLogs/...?follow=true&tailLines=10``), parsed and
validated with the kubelet's rules into :class:`vkpy.types.LogOptions`. Pure functions, no I/O."""

from __future__ import annotations

import datetime
import json
import re
from collections.abc import Mapping
from typing import Final

from vkpy.types import LogOptions

# Exactly what Go's strconv.ParseBool accepts: the apiserver sends "true", humans with curl send more.
_TRUE: Final = frozenset({"1", "t", "T", "TRUE", "true", "True"})
_FALSE: Final = frozenset({"0", "f", "F", "FALSE", "false", "False"})

# strconv.ParseInt in base 10: an optional sign and ASCII digits, no spaces or underscores (which
# Python's int() would accept).
_INTEGER: Final = re.compile(r"[+-]?[0-9]+")
_INT64_MAX: Final = 2**63 - 1

_RFC3339: Final = re.compile(
    r"(?P<date>[0-9]{4}-[0-9]{2}-[0-9]{2})[Tt](?P<h>[0-9]{2}):(?P<m>[0-9]{2}):(?P<s>[0-9]{2})"
    r"(?:\.(?P<fraction>[0-9]+))?(?:(?P<utc>[Zz])|(?P<sign>[+-])(?P<oh>[0-9]{2}):(?P<om>[0-9]{2}))"
)

_STREAMS: Final[Mapping[str, str | None]] = {"All": None, "Stdout": "stdout", "Stderr": "stderr"}

_MAX_ECHO: Final = 64


class QueryError(ValueError):
    """A log query parameter is malformed or out of range. The message starts with the parameter's
    name and says what is wrong; the server sends it back as the body of a 400."""


def _quote(value: str) -> str:
    # The value goes back to the caller: bound it and escape control characters.
    if len(value) > _MAX_ECHO:
        value = value[:_MAX_ECHO] + "..."
    return json.dumps(value)


def _boolean(query: Mapping[str, str], name: str) -> bool:
    value = query.get(name)
    if value is None or value in _FALSE:
        return False
    if value in _TRUE:
        return True
    raise QueryError(f"{name}: must be a boolean (true or false), got {_quote(value)}")


def _integer(query: Mapping[str, str], name: str, minimum: int) -> int | None:
    value = query.get(name)
    if value is None:
        return None
    if not _INTEGER.fullmatch(value):
        raise QueryError(f"{name}: must be an integer, got {_quote(value)}")
    number = int(value)
    if number > _INT64_MAX or number < -_INT64_MAX - 1:
        raise QueryError(f"{name}: {value} is out of range")
    if number < minimum:
        relation = "greater than 0" if minimum == 1 else f"greater than or equal to {minimum}"
        raise QueryError(f"{name}: must be {relation}, got {number}")
    return number


def parse_rfc3339(name: str, value: str) -> datetime.datetime:
    """An RFC 3339 time (``2026-11-28T08:00:00Z``, ``2026-11-28T09:00:00.5+01:00``) as an aware UTC
    datetime. Fractions finer than a microsecond are truncated."""
    match = _RFC3339.fullmatch(value)
    hint = "e.g. 2026-11-28T08:00:00Z"
    if " " in value:
        # A literal "+" in a query string decodes to a space.
        hint += '; encode "+" as %2B in the URL'
    if match is None:
        raise QueryError(f"{name}: must be an RFC 3339 time ({hint}), got {_quote(value)}")
    fraction = (match["fraction"] or "")[:6].ljust(6, "0")
    try:
        if match["utc"]:
            zone = datetime.UTC
        else:
            offset = datetime.timedelta(hours=int(match["oh"]), minutes=int(match["om"]))
            if int(match["om"]) > 59:
                raise ValueError("offset minutes out of range")
            zone = datetime.timezone(-offset if match["sign"] == "-" else offset)
        year, month, day = (int(part) for part in match["date"].split("-"))
        parsed = datetime.datetime(
            year, month, day, int(match["h"]), int(match["m"]), int(match["s"]), int(fraction), tzinfo=zone
        )
        return parsed.astimezone(datetime.UTC)
    except (ValueError, OverflowError) as exc:
        raise QueryError(f"{name}: {_quote(value)} is not a valid time: {exc}") from None


def _since_seconds_ago(seconds: int, now: datetime.datetime) -> datetime.datetime:
    try:
        return now - datetime.timedelta(seconds=seconds)
    except OverflowError:
        # Further back than datetime can go means "from the beginning".
        return datetime.datetime.min.replace(tzinfo=datetime.UTC)


def parse_log_options(query: Mapping[str, str], *, now: datetime.datetime | None = None) -> LogOptions:
    """Validate a log query into :class:`LogOptions`, as the kubelet does.

    ``query`` is the decoded query string (an aiohttp ``request.query`` works: a repeated parameter
    counts by its first value, like Go's ``url.Values.Get``). Unknown parameters are ignored, as the
    apiserver may add some. ``sinceSeconds`` becomes an absolute ``since`` counted back from ``now``
    (default: the current time). The legacy ``tail`` parameter (a number or ``all``) overrides
    ``tailLines``, as in the kubelet. Raises :class:`QueryError` naming the bad parameter."""
    if "tail" in query:
        tail_lines = None if query["tail"] == "all" else _integer(query, "tail", minimum=0)
    else:
        tail_lines = _integer(query, "tailLines", minimum=0)
    since_seconds = _integer(query, "sinceSeconds", minimum=1)
    since_time = query.get("sinceTime")
    if since_seconds is not None and since_time is not None:
        raise QueryError("sinceSeconds, sinceTime: at most one of them may be specified")
    since: datetime.datetime | None = None
    if since_time is not None:
        since = parse_rfc3339("sinceTime", since_time)
    elif since_seconds is not None:
        since = _since_seconds_ago(since_seconds, now or datetime.datetime.now(datetime.UTC))
    return LogOptions(
        follow=_boolean(query, "follow"),
        tail_lines=tail_lines,
        since=since,
        timestamps=_boolean(query, "timestamps"),
        limit_bytes=_integer(query, "limitBytes", minimum=1),
        previous=_boolean(query, "previous"),
    )


def parse_stream(query: Mapping[str, str]) -> str | None:
    """The ``stream`` parameter (``All``, ``Stdout`` or ``Stderr``; Kubernetes' split-streams log
    query) as the :attr:`LogLine.stream` to keep, or ``None`` for both. Like the kubelet, a single
    stream cannot be combined with ``tailLines``: the device counts lines over both streams."""
    value = query.get("stream")
    if value is None:
        return None
    if value not in _STREAMS:
        raise QueryError(f"stream: must be one of All, Stdout, Stderr, got {_quote(value)}")
    only = _STREAMS[value]
    if only is not None and ("tailLines" in query or "tail" in query):
        raise QueryError(f"stream: {value} cannot be combined with tailLines (only All can)")
    return only
