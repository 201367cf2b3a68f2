"""Lookup structures for nft sets and maps, built once per ruleset.

A set of 100,000 prefixes must cost a packet a bisect, not a scan: single values go in
a dict, non-overlapping intervals in sorted arrays searched with `bisect`. Concatenated
keys (`ip saddr . tcp dport`) of plain values are tuples in a dict; concatenations with
intervals in them (a verdict map of thousands of `to: + dport` policies) are found
through one of their parts (`TupleIndex`), scanned only when no part can index them.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from typing import Any

from markroute.sim.datatypes import Span
from markroute.values import Interval, Ipv4Intervals


class Lookup:
    """Finds the element a value falls in; `find` returns its index or -1."""

    __slots__ = ("exact", "starts", "ends", "span_index", "overlapping", "tuples", "tuple_index", "prefixes")

    def __init__(self, keys: list[Any]) -> None:
        self.exact: dict[Any, int] = {}
        spans: list[tuple[int, int, int]] = []
        self.tuples: list[tuple[tuple[Any, ...], int]] = []
        self.prefixes: list[tuple[str, int]] = []
        for index, key in enumerate(keys):
            if isinstance(key, Span):
                spans.append((key.lo, key.hi, index))
            elif isinstance(key, tuple):
                if any(isinstance(part, Span) for part in key):
                    self.tuples.append((key, index))
                else:
                    self.exact.setdefault(key, index)
            elif isinstance(key, str) and key.endswith("*") and not key.endswith("\\*"):
                self.prefixes.append((key[:-1], index))
            else:
                self.exact.setdefault(key, index)
        spans.sort()
        self.starts: Sequence[int] = [lo for lo, _, _ in spans]
        self.ends: Sequence[int] = [hi for _, hi, _ in spans]
        self.span_index: Sequence[int] = [index for _, _, index in spans]
        self.overlapping = any(spans[i + 1][0] <= spans[i][1] for i in range(len(spans) - 1))
        self.tuple_index = TupleIndex.build(self.tuples)

    @classmethod
    def of_intervals(cls, intervals: Sequence[Interval]) -> Lookup:
        """The lookup of a compiled address set: sorted, disjoint intervals, element i the i-th.

        Packed IPv4 intervals are bisected where they lie: a million-prefix set costs no
        million `Span`s (~200 MB), and finds the same element `Lookup(keys)` would.
        """
        lookup = cls([])
        if isinstance(intervals, Ipv4Intervals):
            lookup.starts, lookup.ends = intervals.starts, intervals.ends
        else:
            lookup.starts, lookup.ends = [lo for lo, _ in intervals], [hi for _, hi in intervals]
        lookup.span_index = range(len(intervals))
        return lookup

    def find(self, value: Any) -> int:
        index = self.exact.get(value, -1)
        if index >= 0:
            return index
        if self.starts and isinstance(value, int):
            if self.overlapping:
                hits = [i for lo, hi, i in zip(self.starts, self.ends, self.span_index) if lo <= value <= hi]
                return min(hits) if hits else -1
            position = bisect.bisect_right(self.starts, value) - 1
            if position >= 0 and value <= self.ends[position]:
                return self.span_index[position]
            return -1
        if self.tuples and isinstance(value, tuple):
            if self.tuple_index is not None and len(value) > self.tuple_index.position:
                return self.tuple_index.find(value)
            for key, index in self.tuples:
                if all(_part_matches(part, v) for part, v in zip(key, value)):
                    return index
            return -1
        if self.prefixes and isinstance(value, str):
            for prefix, index in self.prefixes:
                if value.startswith(prefix):
                    return index
        return -1

    def could_match(self, parts: tuple[Any, ...], unknown: object) -> bool:
        """Whether some element matches a concatenation whose `unknown` parts could be anything."""
        keys = [key for key in self.exact if isinstance(key, tuple)] + [key for key, _ in self.tuples]
        return any(
            all(v is unknown or _part_matches(part, v) for part, v in zip(key, parts)) for key in keys
        )

    def partition(self, first: int, last: int) -> list[tuple[int, int]]:
        """[first, last] grouped by the element `find` gives: (how many values, element index or -1)."""
        cuts = {first, last + 1}
        for key in self.exact:
            if isinstance(key, int) and first <= key <= last:
                cuts.update((key, key + 1))
        for lo, hi in zip(self.starts, self.ends):
            for cut in (lo, hi + 1):
                if first <= cut <= last + 1:
                    cuts.add(cut)
        edges = sorted(cuts)
        sizes: dict[int, int] = {}
        for start, end in zip(edges, edges[1:]):
            index = self.find(start)
            sizes[index] = sizes.get(index, 0) + end - start
        return [(size, index) for index, size in sizes.items()]


def _part_matches(part: Any, value: Any) -> bool:
    if isinstance(part, Span):
        return isinstance(value, int) and part.lo <= value <= part.hi
    return bool(part == value)


class TupleIndex:
    """Concatenated keys with intervals in them, found through one part (`position`).

    That part's plain values go in a dict and its intervals, grouped when equal, in
    sorted arrays for `bisect`: usable when those intervals do not overlap (a verdict
    map of policies' destinations). A lookup checks only the keys of the value's group
    (plain and interval), lowest index first: the same answer as scanning every key in
    order, which `build` leaves to the caller when no part can index them.
    """

    __slots__ = ("keys", "position", "points", "starts", "ends", "groups")

    def __init__(self, keys: list[tuple[tuple[Any, ...], int]], position: int) -> None:
        self.keys = keys
        self.position = position
        self.points: dict[Any, list[int]] = {}
        spans: dict[Span, list[int]] = {}
        for number, (key, _) in enumerate(keys):
            part = key[position]
            (spans if isinstance(part, Span) else self.points).setdefault(part, []).append(number)
        ordered = sorted(spans)
        self.starts = [span.lo for span in ordered]
        self.ends = [span.hi for span in ordered]
        self.groups = [spans[span] for span in ordered]

    @classmethod
    def build(cls, keys: list[tuple[tuple[Any, ...], int]]) -> TupleIndex | None:
        """The index on the part that leaves the fewest keys to check per lookup, if any part can index them."""
        if len(keys) < 8:  # a scan is as quick
            return None
        width = min(len(key) for key, _ in keys)
        best: TupleIndex | None = None
        best_size = len(keys)
        for position in range(width):
            spans = sorted({key[position] for key, _ in keys if isinstance(key[position], Span)})
            if any(after.lo <= before.hi for before, after in zip(spans, spans[1:])):
                continue
            index = cls(keys, position)
            size = max(len(group) for group in [*index.groups, *index.points.values()])
            if size < best_size:
                best, best_size = index, size
        return best

    def find(self, value: tuple[Any, ...]) -> int:
        part = value[self.position]
        numbers: Sequence[int] = self.points.get(part, ())
        if self.starts and isinstance(part, int):
            slot = bisect.bisect_right(self.starts, part) - 1
            if slot >= 0 and part <= self.ends[slot]:
                numbers = sorted([*numbers, *self.groups[slot]]) if numbers else self.groups[slot]
        for number in numbers:
            key, index = self.keys[number]
            if all(_part_matches(p, v) for p, v in zip(key, value)):
                return index
        return -1
