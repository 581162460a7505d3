"""The log query rules, branch by branch (pure logic)."""

from __future__ import annotations

import datetime

import pytest
from multidict import MultiDict

from vkpy import LogOptions
from vkpy.kubelet import QueryError, parse_log_options, parse_stream
from vkpy.kubelet.query import parse_rfc3339

NOW = datetime.datetime(2026, 11, 28, 8, 0, 0, tzinfo=datetime.UTC)
UTC = datetime.UTC


def parse(**query: str) -> LogOptions:
    return parse_log_options(query, now=NOW)


def error_of(**query: str) -> str:
    with pytest.raises(QueryError) as caught:
        parse_log_options(query, now=NOW)
    return str(caught.value)


def test_empty_query_is_the_default() -> None:
    assert parse() == LogOptions()


def test_query_error_is_a_value_error() -> None:
    assert issubclass(QueryError, ValueError)


def test_unknown_parameters_are_ignored() -> None:
    assert parse(insecureSkipTLSVerifyBackend="true", pretty="1", whatever="x") == LogOptions()


@pytest.mark.parametrize("name", ["follow", "timestamps", "previous"])
@pytest.mark.parametrize("value", ["1", "t", "T", "TRUE", "true", "True"])
def test_booleans_accept_go_true_spellings(name: str, value: str) -> None:
    options = parse(**{name: value})
    assert getattr(options, name) is True


@pytest.mark.parametrize("name", ["follow", "timestamps", "previous"])
@pytest.mark.parametrize("value", ["0", "f", "F", "FALSE", "false", "False"])
def test_booleans_accept_go_false_spellings(name: str, value: str) -> None:
    assert getattr(parse(**{name: value}), name) is False


@pytest.mark.parametrize("name", ["follow", "timestamps", "previous"])
@pytest.mark.parametrize("value", ["", "yes", "TrUe", "2", " true"])
def test_booleans_refuse_anything_else(name: str, value: str) -> None:
    message = error_of(**{name: value})
    assert message.startswith(f"{name}: must be a boolean")
    assert repr(value).strip("'") in message


@pytest.mark.parametrize(("value", "expected"), [("0", 0), ("10", 10), ("+3", 3), ("007", 7)])
def test_tail_lines(value: str, expected: int) -> None:
    assert parse(tailLines=value).tail_lines == expected


@pytest.mark.parametrize("value", ["abc", "1.5", " 5", "5_0", "\u0661", "", "0x10"])
def test_tail_lines_must_be_an_integer(value: str) -> None:
    assert error_of(tailLines=value).startswith("tailLines: must be an integer")


def test_tail_lines_must_not_be_negative() -> None:
    assert error_of(tailLines="-1") == "tailLines: must be greater than or equal to 0, got -1"


def test_integers_must_fit_in_int64() -> None:
    assert parse(tailLines=str(2**63 - 1)).tail_lines == 2**63 - 1
    assert error_of(tailLines=str(2**63)) == f"tailLines: {2**63} is out of range"
    assert error_of(limitBytes=str(-(2**63) - 1)).endswith("is out of range")


def test_limit_bytes() -> None:
    assert parse(limitBytes="1").limit_bytes == 1
    assert error_of(limitBytes="0") == "limitBytes: must be greater than 0, got 0"
    assert error_of(limitBytes="many").startswith("limitBytes: must be an integer")


def test_since_seconds_counts_back_from_now() -> None:
    assert parse(sinceSeconds="60").since == NOW - datetime.timedelta(seconds=60)


def test_since_seconds_defaults_to_the_current_time() -> None:
    before = datetime.datetime.now(UTC)
    since = parse_log_options({"sinceSeconds": "10"}).since
    after = datetime.datetime.now(UTC)
    assert since is not None
    assert before - datetime.timedelta(seconds=10) <= since <= after - datetime.timedelta(seconds=10)


def test_since_seconds_must_be_positive() -> None:
    assert error_of(sinceSeconds="0") == "sinceSeconds: must be greater than 0, got 0"
    assert error_of(sinceSeconds="-5") == "sinceSeconds: must be greater than 0, got -5"


def test_since_seconds_beyond_datetime_means_from_the_beginning() -> None:
    for huge in (str(2**63 - 1), str(10**11)):
        assert parse(sinceSeconds=huge).since == datetime.datetime.min.replace(tzinfo=UTC)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2026-11-28T08:00:00Z", datetime.datetime(2026, 11, 28, 8, 0, 0, tzinfo=UTC)),
        ("2026-11-28t08:00:00z", datetime.datetime(2026, 11, 28, 8, 0, 0, tzinfo=UTC)),
        ("2026-11-28T08:00:00.5Z", datetime.datetime(2026, 11, 28, 8, 0, 0, 500000, tzinfo=UTC)),
        ("2026-11-28T08:00:00.123456789Z", datetime.datetime(2026, 11, 28, 8, 0, 0, 123456, tzinfo=UTC)),
        ("2026-11-28T09:00:00+01:00", datetime.datetime(2026, 11, 28, 8, 0, 0, tzinfo=UTC)),
        ("2026-11-28T02:30:00.25-05:30", datetime.datetime(2026, 11, 28, 8, 0, 0, 250000, tzinfo=UTC)),
        ("2026-11-28T08:00:00+00:00", datetime.datetime(2026, 11, 28, 8, 0, 0, tzinfo=UTC)),
    ],
)
def test_since_time_rfc3339(value: str, expected: datetime.datetime) -> None:
    since = parse(sinceTime=value).since
    assert since == expected
    assert since is not None
    assert since.utcoffset() == datetime.timedelta(0)


@pytest.mark.parametrize(
    "value",
    ["2026-11-28", "2026-11-28 08:00:00Z", "2026-11-28T08:00Z", "2026-11-28T08:00:00", "yesterday", ""],
)
def test_since_time_must_be_rfc3339(value: str) -> None:
    message = error_of(sinceTime=value)
    assert message.startswith("sinceTime: must be an RFC 3339 time (e.g. 2026-11-28T08:00:00Z")


def test_since_time_hints_at_a_decoded_plus() -> None:
    # "+01:00" written unencoded in a URL arrives as " 01:00".
    assert "encode" in error_of(sinceTime="2026-11-28T09:00:00 01:00")


@pytest.mark.parametrize(
    "value",
    [
        "2026-13-01T00:00:00Z",
        "2026-02-30T00:00:00Z",
        "2026-11-28T24:00:00Z",
        "2026-11-28T08:00:60Z",
        "0000-01-01T00:00:00Z",
        "2026-11-28T08:00:00+24:00",
        "2026-11-28T08:00:00+01:60",
        "0001-01-01T00:00:00+01:00",
    ],
)
def test_since_time_must_be_a_real_time(value: str) -> None:
    assert error_of(sinceTime=value).startswith(f'sinceTime: "{value}" is not a valid time')


def test_since_seconds_and_since_time_exclude_each_other() -> None:
    message = error_of(sinceSeconds="10", sinceTime="2026-11-28T08:00:00Z")
    assert message == "sinceSeconds, sinceTime: at most one of them may be specified"


def test_legacy_tail_overrides_tail_lines() -> None:
    assert parse(tail="5").tail_lines == 5
    assert parse(tail="5", tailLines="9").tail_lines == 5
    assert parse(tail="all", tailLines="9").tail_lines is None
    assert error_of(tail="some").startswith("tail: must be an integer")
    assert error_of(tail="-2").startswith("tail: must be greater than or equal to 0")


def test_everything_at_once() -> None:
    options = parse(
        follow="true", tailLines="10", limitBytes="500", sinceSeconds="30", timestamps="1", previous="false"
    )
    assert options == LogOptions(
        follow=True,
        tail_lines=10,
        since=NOW - datetime.timedelta(seconds=30),
        timestamps=True,
        limit_bytes=500,
        previous=False,
    )


def test_repeated_parameter_counts_by_its_first_value() -> None:
    query = MultiDict([("tailLines", "3"), ("tailLines", "-1")])
    assert parse_log_options(query, now=NOW).tail_lines == 3


def test_long_values_are_cut_in_messages() -> None:
    message = error_of(tailLines="9" * 40 + "x" * 200)
    assert len(message) < 150
    assert message.endswith('..."')


def test_control_characters_are_escaped_in_messages() -> None:
    message = error_of(follow="a\r\nInjected: yes")
    assert "\n" not in message
    assert "\\r\\n" in message


def test_parse_rfc3339_names_the_parameter() -> None:
    with pytest.raises(QueryError, match=r"^since: "):
        parse_rfc3339("since", "nope")


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ({}, None),
        ({"stream": "All"}, None),
        ({"stream": "Stdout"}, "stdout"),
        ({"stream": "Stderr"}, "stderr"),
    ],
)
def test_stream(query: dict[str, str], expected: str | None) -> None:
    assert parse_stream(query) == expected


@pytest.mark.parametrize("value", ["stdout", "Both", ""])
def test_stream_must_be_known(value: str) -> None:
    with pytest.raises(QueryError, match=r"^stream: must be one of All, Stdout, Stderr"):
        parse_stream({"stream": value})


def test_single_stream_excludes_tail_lines() -> None:
    assert parse_stream({"stream": "All", "tailLines": "3"}) is None
    for tail in ("tailLines", "tail"):
        with pytest.raises(QueryError, match=r"^stream: Stderr cannot be combined with tailLines"):
            parse_stream({"stream": "Stderr", tail: "3"})
