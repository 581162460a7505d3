"""The generic structurer: attrs class + mapping -> instance, every issue reported with its path."""

from __future__ import annotations

import enum
from pathlib import Path
from typing import Annotated, Any, Literal

import attrs
import pytest

from vkpy.config import ConfigIssue, ConfigValidationError, InvalidValue, Parse, parse_with, structure
from vkpy.config.convert import config_keys, join_path


class Colour(enum.Enum):
    RED = "red"
    BLUE = "blue"


def _upper(value: Any) -> str:
    if not isinstance(value, str):
        raise InvalidValue(f"expected a word, got {value!r}", hint="letters only")
    return value.upper()


def _even(value: Any) -> int:
    if not isinstance(value, int) or value % 2:
        raise ValueError(f"expected an even number, got {value!r}")
    return value


@attrs.frozen(kw_only=True)
class Inner:
    port: int
    enabled: bool = True


@attrs.frozen(kw_only=True)
class Range:
    low: int
    high: int

    def __attrs_post_init__(self) -> None:
        if self.high < self.low:
            raise InvalidValue("must be at least low", key="high")


@attrs.frozen(kw_only=True)
class Everything:
    name: str
    count: int = 1
    ratio: float = 0.5
    flag: bool = False
    file: Path | None = None
    maybe: str | None = "default"
    either: int | str = 0
    tags: list[str] = attrs.Factory(list)
    pair: tuple[int, str] = (0, "")
    many: tuple[int, ...] = ()
    env: dict[str, str] = attrs.Factory(dict)
    mode: Literal["fast", "slow"] = "fast"
    colour: Colour = Colour.RED
    inner: Inner = attrs.Factory(lambda: Inner(port=1))
    inners: tuple[Inner, ...] = ()
    shout: Annotated[str, Parse(_upper)] = ""
    even: int = attrs.field(default=0, metadata=parse_with(_even))
    raw: Any = None
    range: Range = attrs.Factory(lambda: Range(low=0, high=0))


def _issues(data: Any, cls: type[Any] = Everything, path: str = "", **kwargs: Any) -> list[ConfigIssue]:
    with pytest.raises(ConfigValidationError) as caught:
        structure(cls, data, path, **kwargs)
    return list(caught.value.issues)


def test_structures_every_supported_type(tmp_path: Path) -> None:
    data = {
        "name": "x",
        "count": 3,
        "ratio": 2,
        "flag": True,
        "file": "sub/file.txt",
        "maybe": None,
        "either": "text",
        "tags": ["a", "b"],
        "pair": [1, "one"],
        "many": [1, 2, 3],
        "env": {"A": "1"},
        "mode": "slow",
        "colour": "blue",
        "inner": {"port": 8080, "enabled": False},
        "inners": [{"port": 1}, {"port": 2}],
        "shout": "hey",
        "even": 4,
        "raw": {"anything": [1, None]},
        "range": {"low": 1, "high": 2},
    }
    result = structure(Everything, data, base_dir=tmp_path)
    assert result == Everything(
        name="x",
        count=3,
        ratio=2.0,
        flag=True,
        file=tmp_path / "sub/file.txt",
        maybe=None,
        either="text",
        tags=["a", "b"],
        pair=(1, "one"),
        many=(1, 2, 3),
        env={"A": "1"},
        mode="slow",
        colour=Colour.BLUE,
        inner=Inner(port=8080, enabled=False),
        inners=(Inner(port=1), Inner(port=2)),
        shout="HEY",
        even=4,
        raw={"anything": [1, None]},
        range=Range(low=1, high=2),
    )
    assert isinstance(result.ratio, float)


def test_defaults_apply_and_null_means_default() -> None:
    result = structure(Everything, {"name": "x", "count": None, "tags": None, "inner": None})
    assert result.count == 1
    assert result.tags == []
    assert result.inner == Inner(port=1)
    # an optional field's null is a value, not "the default"
    assert structure(Everything, {"name": "x", "maybe": None}).maybe is None


def test_every_issue_is_reported_at_once_with_its_path() -> None:
    data = {
        "count": "abc",
        "ratio": "fast",
        "flag": "yes please",
        "tags": ["ok", 5],
        "pair": [1],
        "env": {"A": 1},
        "mode": "sloww",
        "colour": "green",
        "inner": {"port": "80", "colour": 1},
        "inners": [{"port": 1}, {}],
        "shout": 3,
        "even": 3,
        "range": {"low": 5, "high": 1},
        "either": [1],
        "nmae": "x",
    }
    found = _issues(data, path="root")
    issues = {issue.path: issue for issue in found}
    assert issues["root.count"].message == "expected an integer, got 'abc'"
    assert issues["root.ratio"].message == "expected a number, got 'fast'"
    assert issues["root.flag"].message == "expected true or false, got 'yes please'"
    assert issues["root.tags[1]"].message == "expected a string, got 5"
    assert issues["root.tags[1]"].hint == 'put the value in quotes: "5"'
    assert issues["root.pair"].message == "expected a list of 2 items, got 1"
    assert issues["root.env.A"].message == "expected a string, got 1"
    assert issues["root.mode"].message == "expected one of 'fast', 'slow', got 'sloww'; did you mean 'slow'?"
    assert issues["root.colour"].message == "expected one of 'red', 'blue', got 'green'"
    assert issues["root.inner.port"].message == "expected an integer, got '80'"
    assert issues["root.inner.port"].hint == "remove the quotes"
    assert issues["root.inner.colour"].message == "unknown key"
    assert issues["root.inner.colour"].hint == "valid keys here: enabled, port"
    assert issues["root.inners[1].port"].message == "missing required key"
    assert issues["root.shout"].message == "expected a word, got 3"
    assert issues["root.shout"].hint == "letters only"
    assert issues["root.even"].message == "expected an even number, got 3"
    assert issues["root.range.high"].message == "must be at least low"
    assert issues["root.either"].message == "expected an integer or a string, got a list"
    assert issues["root.nmae"].message == "unknown key; did you mean 'name'?"
    assert issues["root.name"].message == "missing required key"
    assert len(found) == len(issues) == 17


def test_error_message_lists_issues_one_a_line() -> None:
    with pytest.raises(ConfigValidationError) as caught:
        structure(Inner, {"port": "x", "enabld": True}, "nodes[0].ssh")
    assert str(caught.value).splitlines() == [
        "nodes[0].ssh.port: expected an integer, got 'x'",
        "nodes[0].ssh.enabld: unknown key; did you mean 'enabled'?",
    ]


def test_booleans_are_not_numbers_and_numbers_are_not_strings() -> None:
    issues = {i.path: i for i in _issues({"name": True, "count": True, "ratio": False, "mode": 1})}
    assert issues["name"].message == "expected a string, got true"
    assert "quotes" in (issues["name"].hint or "")
    assert issues["count"].message == "expected an integer, got true"
    assert issues["ratio"].message == "expected a number, got false"
    assert issues["mode"].message == "expected one of 'fast', 'slow', got 1"


def test_wrong_shapes() -> None:
    assert [str(i) for i in _issues(["a"], path="x")] == ["x: expected a mapping, got a list"]
    issues = {i.path: i.message for i in _issues({"name": "n", "tags": "a,b", "env": ["A"], "inner": 5})}
    assert issues == {
        "tags": "expected a list, got 'a,b'",
        "env": "expected a mapping, got a list",
        "inner": "expected a mapping, got 5",
    }
    assert [i.message for i in _issues({"name": "n", 3: "x"})] == ["keys must be strings, got 3"]


def test_paths_expand_home_and_resolve_against_base_dir(tmp_path: Path) -> None:
    assert structure(Everything, {"name": "n", "file": "~/k"}, base_dir=tmp_path).file == Path.home() / "k"
    assert structure(Everything, {"name": "n", "file": "/abs/k"}, base_dir=tmp_path).file == Path("/abs/k")
    assert structure(Everything, {"name": "n", "file": "../k"}, base_dir=tmp_path).file == tmp_path / "../k"
    # without a base folder a relative path stays relative
    assert structure(Everything, {"name": "n", "file": "k"}).file == Path("k")
    assert [i.message for i in _issues({"name": "n", "file": ""})] == ["expected a path, got ''"]


def test_provided_fields_come_from_the_caller() -> None:
    result = structure(Inner, {"enabled": False}, provided={"port": 7})
    assert result == Inner(port=7, enabled=False)
    assert [i.path for i in _issues({"port": 1}, Inner, provided={"port": 7})] == ["port"]


def test_keys_and_paths() -> None:
    assert config_keys(Inner) == ("port", "enabled")
    assert join_path("", "a") == "a"
    assert join_path("nodes[0]", "labels") == "nodes[0].labels"
    assert join_path("nodes[0].labels", "kubernetes.io/role") == 'nodes[0].labels["kubernetes.io/role"]'


def test_unsupported_annotations_are_a_programming_error() -> None:
    @attrs.frozen
    class Odd:
        value: complex

    with pytest.raises(TypeError, match="cannot read values of type"):
        structure(Odd, {"value": 1})
    with pytest.raises(TypeError, match="needs an attrs class"):
        structure(dict, {})
