"""The diagnostic-collecting helpers every section of the config is read with.

A `Reader` turns YAML nodes into values and, when a node is wrong, records a diagnostic
at its position and answers None instead of raising: the sections carry on, so one run
of `markroute check` reports every mistake at once.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable
from typing import Any, Protocol, TypeVar

from markroute.config.source import Node
from markroute.diagnostics import Diagnostics, Where
from markroute.model import SPECIAL_TARGETS, Match
from markroute.values import parse_argument, parse_bool, parse_whole, yaml_text

NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,30}$")
T = TypeVar("T")


class MatchReader(Protocol):
    """How the uplink and policy sections read a MATCH mapping (the match reader owns the keys)."""

    def __call__(self, node: Node, what: str, keys_checked: bool = ...) -> Match | None: ...


def suggest(word: str, choices: list[str] | tuple[str, ...]) -> str | None:
    """A did-you-mean hint for a misspelt key or name, or None when nothing is close.

    Typing slips (a letter dropped, doubled, swapped) are found by edit distance, which
    ranks 'dprot' next to 'dport' rather than 'proto'; longer misrememberings
    ('streams' for 'streaming') by difflib's similarity.
    """
    distances = [(_edit_distance(word, choice), index) for index, choice in enumerate(choices)]
    near = [d for d in distances if d[0] <= max(1, len(word) // 3)]
    if near:
        return f"did you mean '{choices[min(near)[1]]}'?"
    started = [choice for choice in choices if len(word) >= 3 and choice.startswith(word)]
    if len(started) == 1:
        return f"did you mean '{started[0]}'?"
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f"did you mean '{close[0]}'?" if close else None


def _edit_distance(a: str, b: str) -> int:
    """Insertions, deletions, substitutions and swaps of neighbours needed to turn a into b."""
    previous2: list[int] = []
    previous = list(range(len(b) + 1))
    for i, char_a in enumerate(a, start=1):
        current = [i] + [0] * len(b)
        for j, char_b in enumerate(b, start=1):
            current[j] = min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (char_a != char_b))
            if i > 1 and j > 1 and char_a == b[j - 2] and a[i - 2] == char_b:
                current[j] = min(current[j], previous2[j - 2] + 1)
        previous2, previous = previous, current
    return previous[-1]


class Reader:
    """Reads values out of YAML nodes of the config at PATH, collecting diagnostics in `diag`."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.diag = Diagnostics()

    def odd_keys(self, node: Node) -> None:
        """Every mapping key that is not text (a number, null, a list) is a mistake."""
        for key, where in node.odd_keys.items():
            self.diag.error(where, f"key {key} is not text", "names start with a letter; quote the key if you must")
        for child in (*node.items.values(), *node.elements):
            if child.kind != "scalar":  # only mappings have keys: most of a big config's nodes are not visited
                self.odd_keys(child)

    def kind(self, node: Node, kind: str, what: str) -> bool:
        if node.kind == kind:
            return True
        wanted = {"map": "a mapping", "seq": "a list", "scalar": "a single value"}[kind]
        hint = "write key: value pairs under it" if kind == "map" and node.describe() == "nothing (null)" else None
        self.diag.error(node.where, f"{what} must be {wanted}, not {node.describe()}", hint)
        return False

    def known_keys(self, node: Node, allowed: tuple[str, ...], what: str) -> None:
        for key, where in node.key_where.items():
            if key not in allowed:
                self.diag.error(
                    where,
                    f"unknown key '{key}' in {what}",
                    suggest(key, allowed) or f"allowed keys: {', '.join(allowed)}",
                )

    def scalar(self, node: Node, what: str, parse: Callable[[Any], T]) -> T | None:
        if not self.kind(node, "scalar", what):
            return None
        if node.scalar is None:
            self.diag.error(node.where, f"{what} has no value", "write a value after the ':' or remove the key")
            return None
        try:
            return parse(node.scalar)
        except ValueError as exc:
            self.diag.error(node.where, f"{what}: {exc}")
            return None

    def one_or_many(self, node: Node, what: str, parse: Callable[[Any], T]) -> list[T] | None:
        """A single value or a non-empty list of them."""
        elements = node.elements if node.kind == "seq" else [node]
        if node.kind == "seq" and not elements:
            self.diag.error(node.where, f"{what} is an empty list; it would never match")
            return None
        if node.kind == "map":
            self.diag.error(node.where, f"{what} must be a value or a list, not a mapping")
            return None
        values = [self.scalar(e, what, parse) for e in elements]
        present = [v for v in values if v is not None]
        return present if len(present) == len(values) else None

    def integer(self, node: Node, what: str, low: int, high: int) -> int | None:
        return self.scalar(node, what, lambda value: parse_whole(value, low, high))

    def choice(self, node: Node, what: str, choices: tuple[str, ...]) -> str | None:
        def parse(value: Any) -> str:
            text = yaml_text(value)
            if text not in choices:
                close = suggest(text, choices)
                raise ValueError(f"'{text}' is not one of {', '.join(choices)}" + (f"; {close}" if close else ""))
            return text

        return self.scalar(node, what, parse)

    def boolean(self, node: Node, what: str) -> bool | None:
        return self.scalar(node, what, parse_bool)

    def name(self, key: str, where: Where, what: str) -> bool:
        if key in SPECIAL_TARGETS:
            self.diag.error(where, f"'{key}' is reserved and cannot name {what}", "pick another name")
            return False
        if not NAME.match(key):
            self.diag.error(
                where,
                f"invalid name '{key}' for {what}",
                "start with a letter; use letters, digits and _ (at most 31 characters)",
            )
            return False
        return True

    def command(self, node: Node, what: str) -> tuple[str, ...] | None:
        """A command as its argument list: it is executed directly, so a shell string is refused."""
        hint = f"the program and its arguments, run without a shell: {what}: [/usr/local/sbin/notify, --uplink]"
        if node.kind == "scalar" and node.scalar is not None:
            self.diag.error(node.where, f"{what} must be a list, not the text '{yaml_text(node.scalar)}'", hint)
            return None
        if not self.kind(node, "seq", what):
            return None
        if not node.elements:
            self.diag.error(node.where, f"{what} is an empty list", hint)
            return None
        words = [self.scalar(element, f"an argument of {what}", parse_argument) for element in node.elements]
        return None if any(word is None for word in words) else tuple(words)  # type: ignore[arg-type]
