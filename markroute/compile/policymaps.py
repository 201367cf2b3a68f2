"""Merging runs of consecutive policies into one verdict-map lookup each.

One nft rule per policy costs every new connection one rule evaluation per policy it
passes, so 1,000 policies cost up to 1,000. Consecutive policies that test the same
fields (only `from`, only `dport`, `from` + `dport`, ...) are instead compiled into one
rule, `KEY vmap { ELEMENT : goto pol_N, ... }`, where KEY concatenates those fields: a
single hash or interval lookup whatever the number of policies. Each `pol_N` chain
holds the policy's own `counter` and its `comment "policy NAME"`, so status counters and
the simulator see every policy as before.

First match wins inside a run too: where the keys of several policies overlap, the
overlap belongs to the earliest of them, and later policies keep only what is left
(`first_match`), so the map's elements are disjoint, as nftables requires.

Not merged (left as one rule each, see BENCHMARKS.md): policies with a `not:`, a
policy using a `sets:` entry (its named set stays updatable element by element), a
catch-all policy, DSCP combined with other fields (nft 1.0.6 lists such a map key in a
form it cannot load again, which would break rollback), and policies whose key would
take more than `MAX_ELEMENTS` elements.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from markroute.match import KEYS, MERGE_REFUSED, MapField, Unmerged
from markroute.match.proto import protocol_value
from markroute.model import Match
from markroute.plan import nftjson as nj
from markroute.values import Interval

Expr = dict[str, Any]
Box = tuple[Interval, ...]
MAX_ELEMENTS = 4096
FIELDS: dict[str, MapField] = {k.map_field.name: k.map_field for k in KEYS if isinstance(k.map_field, MapField)}
# The keys as `policy_key` reads them, sorted out once (it runs for each of 10,000 policies):
# the fields of keys that keep a policy a rule of its own, and the map fields in key order.
_RULE_FIELDS = tuple(k.field for k in KEYS if k.map_field is Unmerged.RULE)
_MAP_FIELDS = tuple(k.map_field for k in KEYS if isinstance(k.map_field, MapField))
FAMILY_FIELDS = frozenset(k.map_field.name for k in KEYS if isinstance(k.map_field, MapField) and k.family_specific)


@dataclass(frozen=True)
class PolicyKey:
    """What one policy contributes to a map for one IP family: its fields and key boxes."""

    fields: tuple[str, ...]
    boxes: tuple[Box, ...]


def policy_key(match: Match, version: int) -> PolicyKey | None:
    """The lookup key of `match` for IP `version`, or None when the policy must stay a rule."""
    if match.negated is not None or match.is_empty:
        return None
    if any(getattr(match, field) is not None for field in _RULE_FIELDS):
        return None
    values: dict[str, list[Interval]] = {}
    for map_field in _MAP_FIELDS:
        found = map_field.values(match, version)
        if found is MERGE_REFUSED:
            return None
        if found is not None:
            values[map_field.name] = found
    fields = tuple(values)
    if len(fields) > 1 and any(FIELDS[f].alone for f in fields):
        return None
    lists = [values[f] for f in fields]
    if any(not items for items in lists) or _product(len(items) for items in lists) > MAX_ELEMENTS:
        return None
    return PolicyKey(fields, tuple(itertools.product(*lists)))


def first_match(keyed: Sequence[tuple[tuple[Box, ...], int]], join: bool) -> list[tuple[Box, int]]:
    """Disjoint boxes, each with the first owner (in `keyed` order) whose boxes cover it.

    With `join`, adjacent single-field pieces of one owner become one interval (addresses,
    ports); names and other exact values must stay apart.
    """
    if keyed and keyed[0][0] and len(keyed[0][0][0]) == 1:
        return [((interval,), owner) for interval, owner in _first_match_1d(keyed, join)]
    boxes = [(box, owner) for boxes_of_owner, owner in keyed for box in boxes_of_owner]
    earlier = _overlapping_earlier(boxes)
    result: list[tuple[Box, int]] = []
    for index, (box, owner) in enumerate(boxes):
        pieces = [box]
        for other in earlier.get(index, ()):
            pieces = [part for piece in pieces for part in _subtract(piece, boxes[other][0])]
            if not pieces:
                break
        result += [(piece, owner) for piece in pieces]
    return sorted(result)


def _overlapping_earlier(boxes: Sequence[tuple[Box, int]]) -> dict[int, list[int]]:
    """For each box, the earlier boxes it overlaps, in order.

    A sweep along the field with the most distinct intervals (usually the addresses or
    the ports) finds the candidates, so disjoint policies cost n log n, not n squared.
    """
    axis = max(range(len(boxes[0][0])), key=lambda a: len({box[a] for box, _ in boxes}))
    order = sorted(range(len(boxes)), key=lambda i: boxes[i][0][axis][0])
    live: list[tuple[int, int]] = []
    found: dict[int, list[int]] = {}
    for index in order:
        box = boxes[index][0]
        while live and live[0][0] < box[axis][0]:
            heapq.heappop(live)
        for _, other in live:
            if _overlaps(box, boxes[other][0]):
                first, later = min(index, other), max(index, other)
                found.setdefault(later, []).append(first)
        heapq.heappush(live, (box[axis][1], index))
    for partners in found.values():
        partners.sort()
    return found


def _first_match_1d(keyed: Sequence[tuple[tuple[Box, ...], int]], join: bool) -> list[tuple[Interval, int]]:
    """A sweep over all interval ends: at each point the live interval with the lowest rank wins."""
    items = sorted((box[0][0], box[0][1], rank, owner) for rank, (boxes, owner) in enumerate(keyed) for box in boxes)
    points = sorted({lo for lo, _, _, _ in items} | {hi + 1 for _, hi, _, _ in items})
    live: list[tuple[int, int, int]] = []
    result: list[tuple[Interval, int]] = []
    index = 0
    for point, following in zip(points, points[1:]):
        while index < len(items) and items[index][0] <= point:
            lo, hi, rank, owner = items[index]
            heapq.heappush(live, (rank, hi, owner))
            index += 1
        while live and live[0][1] < point:
            heapq.heappop(live)
        if not live:
            continue
        owner = live[0][2]
        if join and result and result[-1][1] == owner and result[-1][0][1] == point - 1:
            result[-1] = ((result[-1][0][0], following - 1), owner)
        else:
            result.append(((point, following - 1), owner))
    return result


def _overlaps(a: Box, b: Box) -> bool:
    return all(lo <= other_hi and other_lo <= hi for (lo, hi), (other_lo, other_hi) in zip(a, b))


def _subtract(box: Box, other: Box) -> list[Box]:
    """`box` minus `other` as disjoint boxes: per field, the parts of `box` outside `other`."""
    if not _overlaps(box, other):
        return [box]
    pieces: list[Box] = []
    current = list(box)
    for axis, ((lo, hi), (other_lo, other_hi)) in enumerate(zip(box, other)):
        if lo < other_lo:
            pieces.append(tuple(current[:axis]) + ((lo, other_lo - 1),) + tuple(current[axis + 1:]))
        if hi > other_hi:
            pieces.append(tuple(current[:axis]) + ((other_hi + 1, hi),) + tuple(current[axis + 1:]))
        current[axis] = (max(lo, other_lo), min(hi, other_hi))
    return pieces


def key_expression(fields: tuple[str, ...], version: int | None) -> Expr:
    """The packet fields a map is keyed by, concatenated when there are several."""
    parts = [FIELDS[f].expression(version) for f in fields]
    return parts[0] if len(parts) == 1 else {"concat": parts}


def element(fields: tuple[str, ...], version: int | None, box: Box) -> Any:
    """A map key in libnftables JSON for one disjoint box."""
    parts = [FIELDS[f].element(version, interval) for f, interval in zip(fields, box)]
    return parts[0] if len(parts) == 1 else {"concat": parts}


def port_guard(fields: tuple[str, ...], entries: Sequence[tuple[Box, int]]) -> list[Expr]:
    """`meta l4proto { tcp, udp }` before a key with ports: `th dport` of other protocols is no port.

    The map would miss such packets anyway (their protocol is part of the key); the guard
    says so explicitly, so no reader (nor the simulator) has to reason about it.
    """
    if "sport" not in fields and "dport" not in fields:
        return []
    axis = fields.index("l4proto")
    protocols = sorted({box[axis][0] for box, _ in entries})
    return [nj.match(nj.meta("l4proto"), nj.setvalue([protocol_value(p) for p in protocols]))]


def family_specific(fields: tuple[str, ...]) -> bool:
    return bool(FAMILY_FIELDS & set(fields))


def joinable(fields: tuple[str, ...]) -> bool:
    """Whether neighbouring values of the (single) field may be written as one range."""
    return len(fields) == 1 and FIELDS[fields[0]].joinable


def _product(counts: Any) -> int:
    total = 1
    for count in counts:
        total *= count
    return total
