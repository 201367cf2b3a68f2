"""Which rules of a long chain can do anything to a packet, from its destination (issue 15).

`markroute check` walks a witness packet per policy through the policy chain; with
thousands of policies in rules and maps of different shapes, walking every rule made the
search quadratic. Most of those rules start with (or are) a test of the destination
address: `ip daddr 11.0.2.0/24 ...`, or a verdict map keyed on it as their last
statement. Such a rule does nothing to a packet whose destination is outside its
constants, so the walk may skip it. `ChainIndex` lists, for a destination, the rules
that remain: those guarded by a constant holding it and every rule without a guard.

Only what cannot change the outcome is skipped: before the guard a rule may have only
`meta l4proto`/`meta nfproto` tests of literal values (modelled for every packet), a
chain with a statement that may move the destination (DNAT, redirect, a payload
change) is not indexed (the destination must stay what it was on entering), and a packet whose destination is not known offline
walks every rule, as do packets walked for a recorded trace (the caller's choice).
"""

from __future__ import annotations

import bisect
from typing import Any

from markroute.sim.datatypes import Span, UnsupportedValue, parse

MIN_RULES = 32  # shorter chains are walked as they are
PRE_GUARD = frozenset({"l4proto", "nfproto"})  # meta keys that may be tested before the guard
MOVES_DESTINATION = frozenset({"dnat", "redirect", "tproxy"})  # and a `mangle` of a packet field
MAX_COVER = 16  # entries kept per interval on average; overlapping guards beyond that are not indexed


def _daddr_version(expr: Any) -> int | None:
    """4 or 6 when EXPR reads the IPv4 or IPv6 destination address."""
    if isinstance(expr, dict) and "payload" in expr:
        body = expr["payload"]
        if body.get("field") == "daddr" and body.get("protocol") in ("ip", "ip6"):
            return 4 if body["protocol"] == "ip" else 6
    return None


def _spans(version: int, values: list[Any]) -> list[Span] | None:
    """The constants as address intervals, or None when one of them is not a plain address, prefix or range."""
    dtype = "ipv4_addr" if version == 4 else "ipv6_addr"
    spans = []
    for value in values:
        try:
            parsed = parse(dtype, value)
        except (UnsupportedValue, ValueError, KeyError, TypeError):
            return None
        if isinstance(parsed, int):
            parsed = Span(parsed, parsed)
        if not isinstance(parsed, Span):
            return None
        spans.append(parsed)
    return spans


def _moves_destination(expr: dict[str, Any]) -> bool:
    """Whether a statement may change the packet's destination (marks and labels do not)."""
    if "mangle" in expr:
        return "payload" in expr["mangle"].get("key", {})
    return any(key in MOVES_DESTINATION for key in expr)


def _literal(right: Any) -> bool:
    items = right["set"] if isinstance(right, dict) and "set" in right else [right]
    return isinstance(items, list) and all(isinstance(i, (str, int)) and not str(i).startswith("@") for i in items)


def guard(body: dict[str, Any]) -> tuple[int, list[Span]] | None:
    """(IP version, destination intervals) outside which the rule does nothing, or None."""
    exprs = body.get("expr", [])
    for position, expr in enumerate(exprs):
        if "counter" in expr:
            continue
        if "match" in expr:
            match = expr["match"]
            version = _daddr_version(match.get("left"))
            if version is not None and match.get("op") in ("==", "in"):
                right = match.get("right")
                values = right["set"] if isinstance(right, dict) and "set" in right else [right]
                spans = _spans(version, values) if isinstance(values, list) else None
                return (version, spans) if spans is not None else None
            left = match.get("left")
            if isinstance(left, dict) and left.get("meta", {}).get("key") in PRE_GUARD and \
                    match.get("op") in ("==", "in") and _literal(match.get("right")):
                continue
            return None
        if "vmap" in expr and position == len(exprs) - 1:
            return _map_guard(expr["vmap"])
        return None
    return None


def _map_guard(vmap: dict[str, Any]) -> tuple[int, list[Span]] | None:
    """A verdict map keyed on the destination (alone or in a concatenation) does nothing outside its elements."""
    key = vmap.get("key")
    parts = key["concat"] if isinstance(key, dict) and "concat" in key else [key]
    data = vmap.get("data")
    if not isinstance(data, dict) or not isinstance(data.get("set"), list):
        return None
    for index, part in enumerate(parts):
        version = _daddr_version(part)
        if version is None:
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
        spans = _spans(version, values)
        return (version, spans) if spans is not None else None
    return None


class ChainIndex:
    """The positions of a chain's rules a destination can reach: unguarded ones plus those whose guard holds it."""

    __slots__ = ("unguarded", "edges", "covering")

    def __init__(self, unguarded: list[int], edges: dict[int, list[int]], covering: dict[int, list[list[int]]]) -> None:
        self.unguarded = unguarded
        self.edges = edges  # per IP version: sorted starts of the elementary pieces of the guards
        self.covering = covering  # per IP version: the guarded rules of each piece, in order

    @classmethod
    def build(cls, bodies: list[dict[str, Any]], unmodelled: set[int]) -> ChainIndex | None:
        """The index of a chain with these rule bodies, or None when it is short or cannot be indexed.

        UNMODELLED are the positions of rules with a statement the simulator could not
        build: they stop every packet that reaches them (indeterminate), so none is skipped.
        """
        if len(bodies) < MIN_RULES:
            return None
        unguarded: list[int] = []
        guarded: dict[int, list[tuple[Span, int]]] = {4: [], 6: []}
        for position, body in enumerate(bodies):
            if any(_moves_destination(expr) for expr in body.get("expr", [])):
                return None
            found = guard(body) if position not in unmodelled else None
            if found is None:
                unguarded.append(position)
            else:
                guarded[found[0]] += [(span, position) for span in found[1]]
        if len(unguarded) > len(bodies) // 2:
            return None
        edges: dict[int, list[int]] = {}
        covering: dict[int, list[list[int]]] = {}
        for version, spans in guarded.items():
            cuts = sorted({cut for span, _ in spans for cut in (span.lo, span.hi + 1)})
            pieces: list[list[int]] = [[] for _ in cuts]
            entries = 0
            for span, position in spans:
                first, last = bisect.bisect_left(cuts, span.lo), bisect.bisect_left(cuts, span.hi + 1)
                entries += last - first
                if entries > MAX_COVER * max(1, len(spans)):
                    return None
                for piece in range(first, last):
                    pieces[piece].append(position)
            edges[version] = cuts
            covering[version] = [sorted(set(piece)) for piece in pieces]
        return cls(unguarded, edges, covering)

    def reachable(self, version: int, address: int) -> list[int]:
        """Sorted positions of the rules that may act on a packet of VERSION to ADDRESS."""
        piece = bisect.bisect_right(self.edges.get(version, []), address) - 1
        hits = self.covering[version][piece] if piece >= 0 else []  # the last piece, past every guard, is empty
        return sorted(self.unguarded + hits) if hits else self.unguarded
