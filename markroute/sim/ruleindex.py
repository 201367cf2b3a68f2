"""Which rules of a long chain can do anything to a packet, from a few of its fields (issue 15).

`markroute check` walks a witness packet per policy through the policy chain; with
thousands of policies in rules of different shapes, walking every rule made the search
quadratic. Most of those rules start with a test of one field against constants:
`ip daddr 11.0.2.0/24 ...`, `ip saddr 10.64.0.16/28 ...`, `th dport 1024 ...`,
`iifname "vl5" ...`, or are a verdict map keyed on such a field as their last
statement. That test is the rule's guard: a packet whose field lies outside it passes
the rule untouched, so the walk may skip it. `ChainIndex` lists, for a packet's field
values, the rules that remain: those whose guard holds the value and every rule without
a guard.

Only what cannot change the outcome is skipped: before the guard a rule may have only
`meta l4proto`/`meta nfproto` tests of literal values (modelled for every packet), a
chain with a statement that may change a guarded field (NAT, a payload change) is not
indexed, and a field whose value the caller does not know (`None`) skips nothing.
"""

from __future__ import annotations

import bisect
from typing import Any

from markroute.sim.datatypes import Span, UnsupportedValue, parse

MIN_RULES = 32  # shorter chains are walked as they are
PRE_GUARD = frozenset({"l4proto", "nfproto"})  # meta keys that may be tested before the guard
CHANGES_FIELDS = frozenset({"snat", "dnat", "masquerade", "redirect", "tproxy"})  # and a `mangle` of a payload
MAX_COVER = 16  # entries kept per interval on average; overlapping guards beyond that are not indexed
ABSENT = object()  # a field the packet does not have (an IPv4 address of an IPv6 packet): no guard on it holds
PORT_PROTOCOLS = ("th", "tcp", "udp", "sctp", "udplite", "dccp")

# Guarded fields: "daddr4", "daddr6", "saddr4", "saddr6", "dport" (intervals), "iifname" (names).
DTYPES = {"daddr4": "ipv4_addr", "daddr6": "ipv6_addr", "saddr4": "ipv4_addr", "saddr6": "ipv6_addr",
          "dport": "inet_service"}


def field_of(expr: Any) -> str | None:
    """The guarded field EXPR reads, if it is one."""
    if not isinstance(expr, dict):
        return None
    if "payload" in expr:
        body = expr["payload"]
        protocol, name = body.get("protocol"), body.get("field")
        if protocol in ("ip", "ip6") and name in ("saddr", "daddr"):
            return f"{name}{4 if protocol == 'ip' else 6}"
        if protocol in PORT_PROTOCOLS and name == "dport":
            return "dport"
    if "meta" in expr and expr["meta"].get("key") == "iifname":
        return "iifname"
    return None


def _constants(field: str, values: list[Any]) -> list[Any] | None:
    """The constants as intervals (or interface names), or None when one is not a plain value."""
    if field == "iifname":
        ok = all(isinstance(v, str) and "*" not in v and "\\" not in v and not v.startswith("@") for v in values)
        return list(values) if ok else None
    found = []
    for value in values:
        try:
            parsed = parse(DTYPES[field], value)
        except (UnsupportedValue, ValueError, KeyError, TypeError):
            return None
        if isinstance(parsed, int) and not isinstance(parsed, bool):
            parsed = Span(parsed, parsed)
        if not isinstance(parsed, Span):
            return None
        found.append(parsed)
    return found


def _literal(right: Any) -> bool:
    items = right["set"] if isinstance(right, dict) and "set" in right else [right]
    return isinstance(items, list) and all(isinstance(i, (str, int)) and not str(i).startswith("@") for i in items)


def _changes_fields(expr: dict[str, Any]) -> bool:
    """Whether a statement may change a guarded field (marks and labels do not)."""
    if "mangle" in expr:
        return "payload" in expr["mangle"].get("key", {})
    return any(key in CHANGES_FIELDS for key in expr)


def guard(body: dict[str, Any]) -> tuple[str, list[Any]] | None:
    """(field, constants) outside which the rule does nothing, or None."""
    exprs = body.get("expr", [])
    for position, expr in enumerate(exprs):
        if "counter" in expr:
            continue
        if "match" in expr:
            match = expr["match"]
            field = field_of(match.get("left"))
            if field is not None and match.get("op") in ("==", "in"):
                right = match.get("right")
                values = right["set"] if isinstance(right, dict) and "set" in right else [right]
                constants = _constants(field, values) if isinstance(values, list) else None
                return (field, constants) if constants is not None else None
            left = match.get("left")
            if isinstance(left, dict) and left.get("meta", {}).get("key") in PRE_GUARD and \
                    match.get("op") in ("==", "in") and _literal(match.get("right")):
                continue
            return None
        if "vmap" in expr and position == len(exprs) - 1:
            return _map_guard(expr["vmap"])
        return None
    return None


def _map_guard(vmap: dict[str, Any]) -> tuple[str, list[Any]] | None:
    """A verdict map keyed on a guarded field (alone or in a concatenation) does nothing outside its elements."""
    key = vmap.get("key")
    parts = key["concat"] if isinstance(key, dict) and "concat" in key else [key]
    data = vmap.get("data")
    if not isinstance(data, dict) or not isinstance(data.get("set"), list):
        return None
    for index, part in enumerate(parts):
        field = field_of(part)
        if field is None:
            continue
        values = []
        for element in data["set"]:
            if not isinstance(element, list) or len(element) != 2:
                return None
            item = element[0]
            if len(parts) > 1:
                if not isinstance(item, dict) or "concat" not in item or len(item["concat"]) != len(parts):
                    return None
                item = item["concat"][index]
            values.append(item)
        constants = _constants(field, values)
        if constants is not None:
            return field, constants
    return None


class _Intervals:
    """The guarded rules of one interval field: the elementary pieces of their intervals, each with its rules."""

    __slots__ = ("cuts", "covering", "every")

    def __init__(self, cuts: list[int], covering: list[list[int]], every: list[int]) -> None:
        self.cuts = cuts
        self.covering = covering
        self.every = every  # all rules guarded on the field, for a value not known

    @classmethod
    def build(cls, guarded: list[tuple[Span, int]]) -> _Intervals | None:
        cuts = sorted({cut for span, _ in guarded for cut in (span.lo, span.hi + 1)})
        pieces: list[list[int]] = [[] for _ in cuts]
        entries = 0
        for span, position in guarded:
            first, last = bisect.bisect_left(cuts, span.lo), bisect.bisect_left(cuts, span.hi + 1)
            entries += last - first
            if entries > MAX_COVER * len(guarded):
                return None
            for piece in range(first, last):
                pieces[piece].append(position)
        every = sorted({position for _, position in guarded})
        return cls(cuts, [sorted(set(piece)) for piece in pieces], every)

    def holding(self, value: int) -> list[int]:
        piece = bisect.bisect_right(self.cuts, value) - 1
        return self.covering[piece] if piece >= 0 else []  # the last piece, past every interval, is empty


class ChainIndex:
    """The positions of a chain's rules a packet can reach: unguarded ones plus those whose guard holds its value."""

    __slots__ = ("unguarded", "intervals", "names")

    def __init__(self, unguarded: list[int], intervals: dict[str, _Intervals], names: dict[str, list[int]]) -> None:
        self.unguarded = unguarded
        self.intervals = intervals  # per interval field
        self.names = names  # interface name -> the rules guarded on it

    @classmethod
    def build(cls, bodies: list[dict[str, Any]], unmodelled: set[int]) -> ChainIndex | None:
        """The index of a chain with these rule bodies, or None when it is short or cannot be indexed.

        UNMODELLED are the positions of rules with a statement the simulator could not
        build: they stop every packet that reaches them (indeterminate), so none is skipped.
        """
        if len(bodies) < MIN_RULES:
            return None
        unguarded: list[int] = []
        spans: dict[str, list[tuple[Span, int]]] = {}
        names: dict[str, list[int]] = {}
        for position, body in enumerate(bodies):
            if any(_changes_fields(expr) for expr in body.get("expr", [])):
                return None
            found = guard(body) if position not in unmodelled else None
            if found is None:
                unguarded.append(position)
            elif found[0] == "iifname":
                for name in dict.fromkeys(found[1]):
                    names.setdefault(name, []).append(position)
            else:
                spans.setdefault(found[0], []).extend((span, position) for span in found[1])
        if len(unguarded) > len(bodies) // 2:
            return None
        intervals: dict[str, _Intervals] = {}
        for field, guarded in spans.items():
            built = _Intervals.build(guarded)
            if built is None:
                return None
            intervals[field] = built
        if names:
            names[""] = []  # a packet with no input interface
        return cls(unguarded, intervals, names)

    def reachable(self, values: dict[str, Any]) -> list[int]:
        """Sorted positions of the rules that may act on a packet with these field VALUES.

        A value is the packet's (an int, or the input interface's name), ABSENT when it
        has no such field, or None when it is not known: then every rule guarded on it stays.
        """
        hits: list[int] = []
        for field, index in self.intervals.items():
            value = values.get(field)
            if value is None:
                hits += index.every
            elif value is not ABSENT:
                hits += index.holding(value)
        if self.names:
            name = values.get("iifname")
            if name is None:
                hits += [p for positions in self.names.values() for p in positions]
            elif name is not ABSENT:
                hits += self.names.get(name, [])
        return sorted(set(self.unguarded).union(hits)) if hits else self.unguarded
