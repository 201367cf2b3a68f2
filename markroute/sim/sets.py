"""Lookup structures for nft sets and maps, built once per ruleset.

A set of 100,000 prefixes must cost a packet a bisect, not a scan: single values go in
a dict, non-overlapping intervals in sorted arrays searched with `bisect`. Concatenated
keys (`ip saddr . tcp dport`) of plain values are tuples in a dict; concatenations with
intervals in them are rare and small, so they are scanned.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from typing import Any

from markroute.sim.datatypes import Span
from markroute.values import Interval, Ipv4Intervals


class Lookup:
    """Finds the element a value falls in; `find` returns its index or -1."""

    __slots__ = ("exact", "starts", "ends", "span_index", "overlapping", "tuples", "prefixes")

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
