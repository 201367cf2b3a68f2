"""YAML loading that keeps the line and column of every key and value.

Validation needs positions for scalars too (a bad address is reported where it is
written), and ruamel only records them on the containers, so the loaded document is
turned into a small tree of `Node`s that each know where they came from.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from markroute.diagnostics import Diagnostic, Where


@dataclass
class Node:
    """A YAML value with its position; `kind` is 'map', 'seq' or 'scalar'."""

    kind: str
    where: Where
    scalar: Any = None
    items: dict[str, Node] = field(default_factory=dict)
    key_where: dict[str, Where] = field(default_factory=dict)
    elements: list[Node] = field(default_factory=list)

    def describe(self) -> str:
        """A short name for the value's type, for 'expected X, got Y' messages."""
        if self.kind != "scalar":
            return {"map": "a mapping", "seq": "a list"}[self.kind]
        if self.scalar is None:
            return "nothing"
        return {bool: "a boolean", int: "a number", float: "a number", str: "text"}.get(
            type(self.scalar), type(self.scalar).__name__
        )


class SourceError(Exception):
    """The file cannot be read or is not YAML; holds the one diagnostic saying why."""

    def __init__(self, diagnostic: Diagnostic) -> None:
        super().__init__(diagnostic.render())
        self.diagnostic = diagnostic


def load(path: str) -> Node:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise SourceError(
            Diagnostic(Where(path, 1, 1), "error", f"cannot read config: {exc.strerror}")
        ) from None
    except UnicodeDecodeError:
        raise SourceError(
            Diagnostic(Where(path, 1, 1), "error", "config is not UTF-8 text")
        ) from None
    return parse(text, path)


def parse(text: str, path: str) -> Node:
    from ruamel.yaml import YAML
    from ruamel.yaml.error import MarkedYAMLError, YAMLError

    yaml = YAML(typ="rt")
    try:
        document = yaml.load(text)
    except MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        problem = exc.problem or exc.context or "invalid YAML"
        hint = None
        if "found duplicate key" in str(problem) or type(exc).__name__ == "DuplicateKeyError":
            problem, hint = "duplicate key", "each key may appear only once in a mapping"
        raise SourceError(
            Diagnostic(Where(path, line, col), "error", f"YAML syntax: {problem}", hint)
        ) from None
    except YAMLError as exc:
        raise SourceError(Diagnostic(Where(path, 1, 1), "error", f"YAML: {exc}")) from None
    if document is None:
        return Node("map", Where(path, 1, 1))
    return _convert(document, Where(path, 1, 1), path)


def _convert(value: Any, where: Where, path: str) -> Node:
    from ruamel.yaml.comments import CommentedMap, CommentedSeq

    if isinstance(value, CommentedMap):
        node = Node("map", where)
        for key, item in value.items():
            kline, kcol = value.lc.key(key)
            vline, vcol = value.lc.value(key)
            name = str(key)
            node.key_where[name] = Where(path, kline + 1, kcol + 1)
            node.items[name] = _convert(item, Where(path, vline + 1, vcol + 1), path)
        return node
    if isinstance(value, CommentedSeq):
        node = Node("seq", where)
        for index, item in enumerate(value):
            line, col = value.lc.item(index)
            node.elements.append(_convert(item, Where(path, line + 1, col + 1), path))
        return node
    return Node("scalar", where, scalar=_plain(value))


def _plain(value: Any) -> Any:
    """Strip ruamel's scalar subclasses so later code sees ordinary Python values."""
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value)
    return str(value)
