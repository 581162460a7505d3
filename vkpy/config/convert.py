"""A small structurer: an attrs class and a mapping parsed from YAML become an instance, driven by the
fields' type annotations, and every problem found is reported at once with its key path.

Supported annotations: ``str``, ``int``, ``float``, ``bool``, ``Path``, ``X | None``, unions, ``Any``,
``Literal[...]``, enums (by value), ``list[X]``, ``tuple[X, ...]``, ``dict[K, V]``, nested attrs
classes, and ``Annotated[T, Parse(fn)]`` (or ``attrs.field(metadata=parse_with(fn))``) for values a
function reads from the raw YAML value (durations, quantities, names...). A parser raises
:class:`InvalidValue` (or any ``ValueError``) to report a problem.

``cattrs`` would do the structuring, but it stops at the first error in places, reports paths in its
own exception-group shape, and is not a dependency; this module is small enough to own.
"""

from __future__ import annotations

import difflib
import enum
import json
import re
import types
import typing
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar, Union, get_args, get_origin

import attrs

from vkpy.errors import ConfigError

T = TypeVar("T")

PARSE_KEY = "vkpy.config.parse"
"""Field metadata key holding a parser: ``attrs.field(metadata={PARSE_KEY: fn})``."""
KEY_KEY = "vkpy.config.key"
"""Field metadata key naming the YAML key when it differs from the field's name."""

_PLAIN_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*")


@attrs.frozen
class ConfigIssue:
    """One problem, at a key path such as ``nodes[0].ssh.port``."""

    path: str
    message: str
    hint: str | None = None

    def __str__(self) -> str:
        text = f"{self.path}: {self.message}" if self.path else self.message
        return text if self.hint is None else f"{text}\n    hint: {self.hint}"


class ConfigValidationError(ConfigError):
    """Every issue found in a configuration; ``str()`` lists them one a line, file name first."""

    def __init__(self, issues: Iterable[ConfigIssue], source: str | None = None) -> None:
        self.issues = tuple(issues)
        self.source = source
        super().__init__(format_issues(self.issues, source))


class InvalidValue(ValueError):
    """Raised by parsers (and by attrs classes' ``__attrs_post_init__``) to report a bad value.

    ``key`` names the field at fault when raised while building an instance, so the issue points at
    ``restart_backoff.max`` rather than at ``restart_backoff``.
    """

    def __init__(self, message: str, *, hint: str | None = None, key: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.key = key


@attrs.frozen
class Parse:
    """``Annotated[float, Parse(duration)]``: the raw YAML value is handed to ``fn``, which returns the
    Python value or raises :class:`InvalidValue`."""

    fn: Callable[[Any], Any]


def parse_with(fn: Callable[[Any], Any]) -> dict[str, Any]:
    """Field metadata making ``fn`` read the field's raw value: ``attrs.field(metadata=parse_with(fn))``."""
    return {PARSE_KEY: fn}


def format_issues(issues: Iterable[ConfigIssue], source: str | None = None) -> str:
    prefix = f"{source}: " if source else ""
    return "\n".join(prefix + str(issue) for issue in issues)


def describe(value: Any) -> str:
    """A value as a short YAML-flavoured phrase for messages: ``'abc'``, ``4``, ``null``, ``a list``."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        text = repr(value)
        return text if len(text) <= 60 else text[:56] + "...'"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, list | tuple):
        return "a list"
    return type(value).__name__


def did_you_mean(word: str, candidates: Iterable[str]) -> str | None:
    """The closest candidate, if one is close enough to be a likely typo."""
    choices = list(candidates)
    matches = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    if not matches:
        by_case = {c.lower(): c for c in choices}
        return by_case.get(word.lower())
    return matches[0]


def join_path(path: str, key: str) -> str:
    """``nodes[0]`` + ``ssh`` -> ``nodes[0].ssh``; keys that are not plain words are quoted."""
    part = key if _PLAIN_KEY.fullmatch(key) else f"[{json.dumps(key)}]"
    if not path:
        return part
    return f"{path}{part}" if part.startswith("[") else f"{path}.{part}"


def unknown_key_issue(path: str, key: str, candidates: Iterable[str], hint: str | None = None) -> ConfigIssue:
    known = sorted(candidates)
    guess = did_you_mean(key, known)
    message = "unknown key" + (f"; did you mean {guess!r}?" if guess else "")
    if hint is None and guess is None:
        hint = f"valid keys here: {', '.join(known)}" if known else "no keys are accepted here"
    return ConfigIssue(join_path(path, key), message, hint)


@attrs.frozen
class _Field:
    key: str
    alias: str
    type: Any
    required: bool
    parse: Callable[[Any], Any] | None


_FIELDS: dict[type[Any], dict[str, _Field]] = {}


def _fields(cls: type[Any]) -> dict[str, _Field]:
    cached = _FIELDS.get(cls)
    if cached is not None:
        return cached
    try:
        hints = typing.get_type_hints(cls, include_extras=True)
    except NameError as exc:
        raise TypeError(
            f"cannot resolve the annotations of {cls.__qualname__} ({exc}); define it at module level"
        ) from exc
    result: dict[str, _Field] = {}
    for field in attrs.fields(cls):
        if not field.init:
            continue
        key = field.metadata.get(KEY_KEY, field.alias)
        result[key] = _Field(
            key=key,
            alias=field.alias,
            type=hints.get(field.name, Any),
            required=field.default is attrs.NOTHING,
            parse=field.metadata.get(PARSE_KEY),
        )
    _FIELDS[cls] = result
    return result


def config_keys(cls: type[Any]) -> tuple[str, ...]:
    """The YAML keys an attrs class accepts, in declaration order."""
    return tuple(_fields(cls))


class _Invalid:
    """Marks a value that could not be structured (its issues are already recorded)."""


_INVALID = _Invalid()


def _accepts_none(tp: Any) -> bool:
    origin = get_origin(tp)
    if origin is Annotated:
        return _accepts_none(get_args(tp)[0])
    return tp is Any or (origin in (Union, types.UnionType) and type(None) in get_args(tp))


def _type_phrase(tp: Any) -> str:
    origin = get_origin(tp)
    if origin is Annotated:
        return _type_phrase(get_args(tp)[0])
    if origin is Literal:
        return "one of " + ", ".join(describe(a) for a in get_args(tp))
    if origin in (list, tuple, Sequence):
        return "a list"
    if origin in (dict, Mapping) or attrs.has(tp):
        return "a mapping"
    phrases = {str: "a string", int: "an integer", float: "a number", bool: "true or false", Path: "a path"}
    return phrases.get(tp, getattr(tp, "__name__", str(tp)))


@attrs.define
class _Structurer:
    base_dir: Path | None
    issues: list[ConfigIssue] = attrs.Factory(list)

    def issue(self, path: str, message: str, hint: str | None = None) -> _Invalid:
        self.issues.append(ConfigIssue(path, message, hint))
        return _INVALID

    def expected(self, path: str, what: str, value: Any, hint: str | None = None) -> _Invalid:
        return self.issue(path, f"expected {what}, got {describe(value)}", hint)

    def parse(self, fn: Callable[[Any], Any], value: Any, path: str) -> Any:
        try:
            return fn(value)
        except InvalidValue as exc:
            at = join_path(path, exc.key) if exc.key else path
            return self.issue(at, exc.message, exc.hint)
        except ValueError as exc:
            return self.issue(path, str(exc))

    def value(self, tp: Any, data: Any, path: str) -> Any:
        origin = get_origin(tp)
        if origin is Annotated:
            base, *extras = get_args(tp)
            parsers = [extra for extra in extras if isinstance(extra, Parse)]
            return self.parse(parsers[0].fn, data, path) if parsers else self.value(base, data, path)
        if tp is Any or tp is object:
            return data
        if origin in (Union, types.UnionType):
            return self.union(get_args(tp), data, path)
        if origin is Literal:
            return self.literal(get_args(tp), data, path)
        if attrs.has(tp):
            return self.instance(tp, data, path)
        if origin in (list, tuple, Sequence):
            return self.sequence(tp, data, path)
        if origin in (dict, Mapping) or tp in (dict, Mapping):
            return self.mapping(tp, data, path)
        if isinstance(tp, type) and issubclass(tp, enum.Enum):
            return self.enum(tp, data, path)
        scalar = _SCALARS.get(tp)
        if scalar is None:
            raise TypeError(f"vkpy.config.structure cannot read values of type {tp!r} (at {path or 'top'})")
        return scalar(self, data, path)

    def union(self, members: tuple[Any, ...], data: Any, path: str) -> Any:
        if data is None and type(None) in members:
            return None
        candidates = [m for m in members if m is not type(None)]
        if len(candidates) == 1:
            return self.value(candidates[0], data, path)
        for member in candidates:
            trial = _Structurer(self.base_dir)
            result = trial.value(member, data, path)
            if not trial.issues:
                return result
        return self.expected(path, " or ".join(_type_phrase(m) for m in candidates), data)

    def literal(self, choices: tuple[Any, ...], data: Any, path: str) -> Any:
        for choice in choices:
            # type() too: YAML's true must not match a Literal[1]
            if type(choice) is type(data) and choice == data:
                return choice
        message = f"expected one of {', '.join(describe(c) for c in choices)}, got {describe(data)}"
        if isinstance(data, str):
            guess = did_you_mean(data, [c for c in choices if isinstance(c, str)])
            if guess is not None:
                message += f"; did you mean {guess!r}?"
        return self.issue(path, message)

    def enum(self, tp: type[enum.Enum], data: Any, path: str) -> Any:
        for member in tp:
            if type(member.value) is type(data) and member.value == data:
                return member
        return self.literal(tuple(member.value for member in tp), data, path)

    def sequence(self, tp: Any, data: Any, path: str) -> Any:
        if not isinstance(data, list | tuple):
            return self.expected(path, "a list", data)
        args = get_args(tp)
        origin = get_origin(tp)
        if origin is tuple and args and not (len(args) == 2 and args[1] is Ellipsis):
            if len(data) != len(args):
                return self.issue(path, f"expected a list of {len(args)} items, got {len(data)}")
            item_types: Sequence[Any] = args
        else:
            item_types = [args[0] if args else Any] * len(data)
        items = [
            self.value(item_tp, item, f"{path}[{i}]")
            for i, (item_tp, item) in enumerate(zip(item_types, data, strict=True))
        ]
        if any(item is _INVALID for item in items):
            return _INVALID
        return tuple(items) if origin is tuple else items

    def mapping(self, tp: Any, data: Any, path: str) -> Any:
        if not isinstance(data, Mapping):
            return self.expected(path, "a mapping", data)
        key_tp, value_tp = get_args(tp) or (Any, Any)
        result: dict[Any, Any] = {}
        ok = True
        for raw_key, raw_value in data.items():
            at = join_path(path, raw_key) if isinstance(raw_key, str) else f"{path}[{describe(raw_key)}]"
            key = self.value(key_tp, raw_key, at)
            value = self.value(value_tp, raw_value, at)
            if key is _INVALID or value is _INVALID:
                ok = False
            else:
                result[key] = value
        return result if ok else _INVALID

    def instance(self, cls: type[T], data: Any, path: str, provided: Mapping[str, Any] | None = None) -> Any:
        if not isinstance(data, Mapping):
            return self.expected(path, "a mapping", data)
        provided = provided or {}
        fields = {key: field for key, field in _fields(cls).items() if key not in provided}
        kwargs: dict[str, Any] = {}
        ok = True
        for key, raw in data.items():
            if not isinstance(key, str):
                ok = False
                self.issue(path, f"keys must be strings, got {describe(key)}")
                continue
            field = fields.get(key)
            if field is None:
                ok = False
                self.issues.append(unknown_key_issue(path, key, fields))
                continue
            at = join_path(path, key)
            if raw is None and not field.required and not _accepts_none(field.type):
                continue  # null means "the default", as if the key were absent
            value = self.parse(field.parse, raw, at) if field.parse else self.value(field.type, raw, at)
            if value is _INVALID:
                ok = False
            else:
                kwargs[field.alias] = value
        for key, field in fields.items():
            if field.required and key not in data:
                ok = False
                self.issue(join_path(path, key), "missing required key")
        if not ok:
            return _INVALID
        for key, value in provided.items():
            kwargs[_fields(cls)[key].alias] = value
        try:
            return cls(**kwargs)
        except InvalidValue as exc:
            return self.issue(join_path(path, exc.key) if exc.key else path, exc.message, exc.hint)
        except ValueError as exc:
            return self.issue(path, str(exc))


def _scalar_str(s: _Structurer, data: Any, path: str) -> Any:
    if isinstance(data, str):
        return data
    hint = None
    if isinstance(data, bool):
        hint = "YAML reads yes/no/on/off/true/false as booleans; put the value in quotes"
    elif isinstance(data, int | float):
        hint = f'put the value in quotes: "{data}"'
    return s.expected(path, "a string", data, hint)


def _scalar_int(s: _Structurer, data: Any, path: str) -> Any:
    if isinstance(data, int) and not isinstance(data, bool):
        return data
    hint = "remove the quotes" if isinstance(data, str) and data.strip().lstrip("+-").isdigit() else None
    return s.expected(path, "an integer", data, hint)


def _scalar_float(s: _Structurer, data: Any, path: str) -> Any:
    if isinstance(data, int | float) and not isinstance(data, bool):
        return float(data)
    return s.expected(path, "a number", data)


def _scalar_bool(s: _Structurer, data: Any, path: str) -> Any:
    if isinstance(data, bool):
        return data
    return s.expected(path, "true or false", data)


def _scalar_path(s: _Structurer, data: Any, path: str) -> Any:
    if not isinstance(data, str) or not data:
        return s.expected(path, "a path", data)
    result = Path(data).expanduser()
    if not result.is_absolute() and s.base_dir is not None:
        result = s.base_dir / result
    return result


_SCALARS: dict[Any, Callable[[_Structurer, Any, str], Any]] = {
    str: _scalar_str,
    int: _scalar_int,
    float: _scalar_float,
    bool: _scalar_bool,
    Path: _scalar_path,
}


def structure(
    cls: type[T],
    data: Any,
    path: str = "",
    *,
    base_dir: Path | None = None,
    provided: Mapping[str, Any] | None = None,
) -> T:
    """Build ``cls`` (an attrs class) from ``data`` (a mapping parsed from YAML).

    ``path`` prefixes every reported key path (``"nodes[0].ssh"``). Relative paths in ``Path`` fields
    are resolved against ``base_dir`` (the config file's folder) and ``~`` is expanded. ``provided``
    gives fields that come from the caller rather than the mapping (a key of the same name in the
    mapping is then unknown). Raises :class:`ConfigValidationError` holding every issue found.
    """
    if not attrs.has(cls):
        raise TypeError(f"structure() needs an attrs class, got {cls!r}")
    structurer = _Structurer(base_dir)
    result = structurer.instance(cls, data, path, provided)
    if structurer.issues or result is _INVALID:
        raise ConfigValidationError(structurer.issues)
    return typing.cast(T, result)
