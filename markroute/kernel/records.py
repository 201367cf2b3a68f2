"""Reading JSON records back into dataclasses with every field's type checked.

The files under /run/markroute outlive the process that wrote them, may be cut short,
edited by hand or (on a badly set-up host) written by someone else. A record read back
is therefore checked against its dataclass's annotations, field by field, before any
code uses it: a wrong type is a `RecordError` naming the field, never an AttributeError
three modules later. Only the shapes records use are understood: None, bool, int, float,
str, Literal, unions with None, list, tuple, dict with text keys, Any and dataclasses.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, Literal, TypeVar, Union

T = TypeVar("T")


class RecordError(ValueError):
    """A record does not have the shape of its dataclass; FIELD is where (`rules[2].table`)."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"field '{field}' {problem}" if field else problem)
        self.field = field


def typed(cls: type[T], data: object, where: str = "", ignore: tuple[str, ...] = ()) -> T:
    """An instance of the dataclass CLS from the JSON object DATA, every field checked.

    Keys in IGNORE are left out (they are the caller's to read); any other key the
    dataclass does not have is an error, as is a missing field without a default.
    """
    if not isinstance(data, dict):
        raise RecordError(where, f"must be an object, not {_kind(data)}")
    hints = _type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - set(fields) - set(ignore))
    if unknown:
        raise RecordError(_join(where, unknown[0]), "is not part of this record")
    values: dict[str, Any] = {}
    for name, spec in fields.items():
        if name not in data:
            if spec.default is dataclasses.MISSING and spec.default_factory is dataclasses.MISSING:
                raise RecordError(_join(where, name), "is missing")
            continue
        values[name] = value_of(hints[name], data[name], _join(where, name))
    return cls(**values)


_HINTS: dict[type, dict[str, Any]] = {}


def _type_hints(cls: type) -> dict[str, Any]:
    """CLS's annotations resolved, once per class: `typing.get_type_hints` compiles every string
    annotation again on each call, for each rule and route of a record (~1 ms of each state.json read)."""
    hints = _HINTS.get(cls)
    if hints is None:
        hints = _HINTS[cls] = typing.get_type_hints(cls)
    return hints


def value_of(hint: Any, data: object, where: str) -> Any:
    """DATA checked against the annotation HINT (and converted: lists to tuples, objects to dataclasses)."""
    if hint is Any:
        return data
    origin = typing.get_origin(hint)
    if origin in (Union, types.UnionType):
        options = typing.get_args(hint)
        if data is None and type(None) in options:
            return None
        rest = [o for o in options if o is not type(None)]
        if len(rest) == 1:
            return value_of(rest[0], data, where)
        for option in rest:
            try:
                return value_of(option, data, where)
            except RecordError:
                continue
        raise RecordError(where, f"has the wrong type ({_kind(data)})")
    if origin is Literal:
        if data not in typing.get_args(hint) or isinstance(data, bool):
            raise RecordError(where, f"must be one of {', '.join(map(repr, typing.get_args(hint)))}")
        return data
    if origin in (list, tuple):
        if not isinstance(data, list):
            raise RecordError(where, f"must be a list, not {_kind(data)}")
        item = typing.get_args(hint)[0] if typing.get_args(hint) else Any
        items = [value_of(item, element, f"{where}[{index}]") for index, element in enumerate(data)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(data, dict):
            raise RecordError(where, f"must be an object, not {_kind(data)}")
        item = typing.get_args(hint)[1]
        return {key: value_of(item, element, f"{where}.{key}") for key, element in data.items()}
    if dataclasses.is_dataclass(hint):
        return typed(hint, data, where)  # type: ignore[arg-type]
    return _scalar(hint, data, where)


def _scalar(hint: Any, data: object, where: str) -> Any:
    if hint is type(None) or hint is None:
        if data is not None:
            raise RecordError(where, f"must be null, not {_kind(data)}")
        return None
    if hint is float:
        if isinstance(data, bool) or not isinstance(data, (int, float)):
            raise RecordError(where, f"must be a number, not {_kind(data)}")
        return float(data)
    if hint in (int, str, bool):
        if isinstance(data, bool) != (hint is bool) or not isinstance(data, hint):
            raise RecordError(where, f"must be {_NAMES[hint]}, not {_kind(data)}")
        return data
    raise TypeError(f"records.value_of does not know {hint!r}")  # a programming error, not a damaged file


_NAMES = {int: "a whole number", str: "text", bool: "true or false"}


def _kind(data: object) -> str:
    if data is None:
        return "null"
    if isinstance(data, bool):
        return "true/false"
    return {dict: "an object", list: "a list", str: "text", int: "a number", float: "a number"}.get(
        type(data), type(data).__name__)


def _join(where: str, name: str) -> str:
    return f"{where}.{name}" if where else name
