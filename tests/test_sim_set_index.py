"""The simulator's index of concatenated keys with intervals finds what scanning them finds (issue 15).

`Lookup.find` answers a concatenation (`ip daddr . meta l4proto . th dport`) through
`TupleIndex` when one part can index the keys; `scanned` below is the plain
definition it must agree with: an exact tuple first, else the first key, in order,
whose every part matches (an interval containing the value, or the same value). Random
keys draw parts from small pools so that intervals repeat, nest, touch and overlap in
some parts and not in others, and values fall inside, between and on their edges.
"""

from __future__ import annotations

import random
from typing import Any

from markroute.sim.datatypes import Span
from markroute.sim.sets import Lookup, TupleIndex

SPANS = (Span(0, 9), Span(10, 19), Span(20, 29), Span(5, 14), Span(100, 199), Span(150, 150), Span(0, 255))
POINTS = (0, 5, 10, 15, 25, 150, 443, "tcp", "udp", "lan0")


def scanned(keys: list[Any], value: tuple[Any, ...]) -> int:
    """The first key matching `value` part by part, exact tuples of plain values before the rest."""
    for index, key in enumerate(keys):
        if not any(isinstance(part, Span) for part in key) and key == value:
            return index
    for index, key in enumerate(keys):
        if any(isinstance(part, Span) for part in key) and all(
                (isinstance(v, int) and part.lo <= v <= part.hi) if isinstance(part, Span) else part == v
                for part, v in zip(key, value)):
            return index
    return -1


def random_part(rng: random.Random, spans: tuple[Span, ...]) -> Any:
    return rng.choice(spans) if rng.random() < 0.6 else rng.choice(POINTS)


def test_the_index_finds_what_a_scan_finds() -> None:
    rng = random.Random(15)
    indexed = 0
    for _ in range(400):
        width = rng.randint(2, 3)
        # per part a pool: sometimes only disjoint intervals (indexable), sometimes overlapping ones
        pools = [SPANS[:3] if rng.random() < 0.5 else SPANS for _ in range(width)]
        keys = [tuple(random_part(rng, pools[i]) for i in range(width)) for _ in range(rng.randint(1, 40))]
        lookup = Lookup(list(keys))
        indexed += lookup.tuple_index is not None
        for _ in range(60):
            value = tuple(rng.choice([*range(-1, 31), 150, 151, 443, "tcp", "udp", "lan0", "lan1"])
                          for _ in range(width))
            assert lookup.find(value) == scanned(keys, value), (keys, value)
    assert indexed > 100  # the index, not the scan, answered many of them


def test_disjoint_destinations_index_a_policy_map() -> None:
    """The shape of a merged `to: + dport` verdict map: the destination part indexes it."""
    keys = [(Span(i * 512, i * 512 + 255), proto, 1000 + i) for i in range(2000) for proto in ("tcp", "udp")]
    lookup = Lookup(list(keys))
    assert isinstance(lookup.tuple_index, TupleIndex) and lookup.tuple_index.position in (0, 2)
    assert lookup.find((1500 * 512 + 7, "udp", 2500)) == 3001
    assert lookup.find((1500 * 512 + 7, "udp", 2501)) == -1
    assert lookup.find((1500 * 512 + 300, "tcp", 2500)) == -1
