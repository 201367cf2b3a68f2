"""Static analyses of a valid model that produce warnings, not errors.

They catch configurations that load and work but probably do not do what the admin
meant: a policy or ingress match hidden behind an earlier broader one, private
addresses leaving an uplink without NAT, a group nothing uses, a mark mask that
collides with other software's marks.

"Covers" is decided per condition, conservatively: a warning means every packet of the
later rule really is taken by the earlier one; combinations of several earlier rules
that together hide a later one are not looked for.
"""

from __future__ import annotations

import bisect
import heapq
from collections.abc import Iterator, Sequence
from typing import Any

from markroute import marks
from markroute import match as match_keys
from markroute.config.tunnelwarnings import tunnel_warnings
from markroute.diagnostics import Where
from markroute.model import Addresses, Match, Model
from markroute.values import Interval, Ipv4Intervals, address_list, parse_address

PRIVATE = address_list(
    [parse_address(p) for p in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10", "fc00::/7")])

Warning = tuple[Where, str, str | None]


def model_warnings(model: Model) -> Iterator[Warning]:
    yield from foreign_uplink_marks(model)
    yield from shadowed_ingress(model)
    yield from shadowed_policies(model)
    yield from unused_groups(model)
    yield from private_without_nat(model)
    yield from tunnel_warnings(model)


def foreign_uplink_marks(model: Model) -> Iterator[Warning]:
    """Pinned uplink marks that equal what another program's packets look like under the mask."""
    mask = model.settings.mark_mask
    foreign = marks.foreign_values(mask)
    for uplink in model.uplinks.values():
        if uplink.mark in foreign:
            yield (
                uplink.where,
                f"mark {uplink.mark:#x} of '{uplink.name}' is what packets marked by {foreign[uplink.mark]} "
                f"look like under mark_mask {mask:#x}; they would be routed via '{uplink.name}'",
                "pin another mark: or leave mark: unset to get a free one",
            )


def shadowed_policies(model: Model) -> Iterator[Warning]:
    """Policies that an earlier one hides completely, each with the first policy that does.

    Not every pair is compared: `CoverIndex` hands a policy only the earlier ones whose
    values could cover its own (the same IP families, no key it lacks, one of its values
    in theirs), so 10,000 policies are checked in about as many comparisons. The result
    is kept for the model: `check` asks again after simulating, and pays once.
    """
    return iter(_shadowed(model))


_last: tuple[Model, list[Warning]] | None = None  # the model checked last and its warnings


def _shadowed(model: Model) -> list[Warning]:
    global _last
    if _last is not None and _last[0] is model:
        return _last[1]
    found: list[Warning] = []
    policies = model.policies
    index = CoverIndex([p.match for p in policies], [p.match.versions & model.target_versions(p.via)
                                                      for p in policies])
    for later_index, later in enumerate(policies):
        earlier_index = index.first_cover(later_index)
        if earlier_index is not None:
            earlier = policies[earlier_index]
            found.append((
                later.where,
                f"policy '{later.name}' can never match: '{earlier.name}' "
                f"(line {earlier.where.line}) matches all its traffic first",
                "move it above the broader policy or narrow the earlier one",
            ))
    _last = (model, found)
    return found


Bounds = tuple[Interval | None, ...]
ANY_ADDRESS = (0, 2**128 - 1)


class CoverIndex:
    """Finds, for a policy, the first earlier policy that covers it, without trying every pair.

    Policies that could cover others (no `not`) are grouped by the keys they compare and
    the IP families they serve: a policy comparing a key the later one leaves open, or
    serving a family the later one needs and it does not, never covers it. Within a
    group each key has an index from a value to the members holding it (`_KeyIndex`):
    an earlier policy covering a later one holds every value of the later one's, so it
    is among the members holding the later one's first value of any key. The smallest
    such list is walked in policy order until the first member that really covers
    (`_covers`, the same test the pairwise check made).
    """

    def __init__(self, matches: list[Match], versions: list[frozenset[int]]) -> None:
        self.matches = matches
        self.versions = versions
        self.values = [match_keys.compared(m) for m in matches]
        self.given = [match_keys.given(m, values) for m, values in zip(matches, self.values)]
        self.bounds = [_bounds(m) for m in matches]
        groups: dict[tuple[int, frozenset[int]], list[int]] = {}
        for position, match in enumerate(matches):
            if match.negated is None:
                groups.setdefault((self.given[position], versions[position]), []).append(position)
        self.groups = [(given, group_versions, _Group(given, members, self.values))
                       for (given, group_versions), members in groups.items()]

    def first_cover(self, later: int) -> int | None:
        """The lowest position before `later` whose policy matches all of `later`'s traffic."""
        found: int | None = None
        given, versions = self.given[later], self.versions[later]
        for group_given, group_versions, group in self.groups:
            if group_given & ~given or not versions <= group_versions:
                continue
            limit = later if found is None else found
            for earlier in group.candidates(self.values[later]):
                if earlier >= limit:
                    break
                if self._covers(earlier, later):
                    found = earlier
                    break
        return found

    def _covers(self, earlier: int, later: int) -> bool:
        return _bounds_cover(self.bounds[earlier], self.bounds[later]) and match_keys.covers(
            self.matches[earlier], self.matches[later])


class _Group:
    """Policies comparing the same keys for the same families, with one `_KeyIndex` per key."""

    def __init__(self, given: int, members: list[int], values: list[list[Any]]) -> None:
        self.members = members
        self.indexes = [(bit, _KeyIndex(match_keys.KEYS[bit].field, [(m, values[m][bit]) for m in members]))
                        for bit in range(len(match_keys.KEYS)) if given >> bit & 1]

    def candidates(self, later_values: list[Any]) -> Iterator[int]:
        """Members that could cover a match with these values, in policy order (a superset)."""
        best: list[list[int]] | None = None
        best_size = 0
        for bit, index in self.indexes:
            lists = index.holding(later_values[bit])
            if lists is None:
                continue
            size = sum(map(len, lists))
            if size == 0:  # no member holds this value: none covers, whatever the other keys say
                return iter(())
            if best is None or size < best_size:
                best, best_size = lists, size
        if best is None:
            return iter(self.members)
        return iter(best[0]) if len(best) == 1 else heapq.merge(*best)


class _KeyIndex:
    """The members of a group by the values of one key: exact values in a dict, intervals in a segment tree.

    Addresses (per family) and ports are intervals: a member holds a point when one of
    its intervals contains it. The tree stores each interval at the O(log n) nodes that
    together span it, so the members holding a point are the lists on one root-to-leaf
    path, each in policy order since members are added in that order. A member with
    more than BIG intervals (a `sets:` file of 1,000,000 prefixes) stays out of the
    tree, which would take seconds and hundreds of megabytes to build for it: a point
    is looked up in its own sorted intervals instead.
    """

    BIG = 256

    def __init__(self, field: str, members: list[tuple[int, Any]]) -> None:
        self.intervals = field in ("src", "dst", "sports", "dports")
        self.exact: dict[Any, list[int]] = {}
        self.trees: dict[int, _Stabbing] = {}
        self.big: dict[int, list[tuple[int, Sequence[int], Sequence[Interval]]]] = {}
        if not self.intervals:
            for member, value in members:
                for item in value if isinstance(value, tuple) else (value,):
                    self.exact.setdefault(item, []).append(member)
            return
        per_family: dict[int, list[tuple[int, Interval]]] = {}
        for member, value in members:
            for family, intervals in _families(value):
                if len(intervals) > self.BIG:
                    starts = intervals.starts if isinstance(intervals, Ipv4Intervals) else [lo for lo, _ in intervals]
                    self.big.setdefault(family, []).append((member, starts, intervals))
                else:
                    per_family.setdefault(family, []).extend((member, interval) for interval in intervals)
        self.trees = {family: _Stabbing(items) for family, items in per_family.items()}

    def holding(self, value: Any) -> list[list[int]] | None:
        """Lists of the members holding the first value of `value` (None: any member may cover it)."""
        if not self.intervals:
            items = value if isinstance(value, tuple) else (value,)
            if not items:
                return None
            return [min((self.exact.get(item, []) for item in items), key=len)]
        for family, intervals in _families(value):
            if intervals:
                point = intervals[0][0]
                tree = self.trees.get(family)
                lists = tree.holding(point) if tree else [[]]
                big = [member for member, starts, held in self.big.get(family, ())
                       if (at := bisect.bisect_right(starts, point) - 1) >= 0 and held[at][1] >= point]
                return lists + [big] if big else lists
        return None


def _families(value: Any) -> list[tuple[int, Sequence[Interval]]]:
    """An interval key's value as (family, intervals): addresses per IP version, ports as family 0."""
    if isinstance(value, Addresses):
        return [(4, value.addresses.v4), (6, value.addresses.v6)]
    return [(0, value)]


class _Stabbing:
    """A static segment tree over interval ends, answering which members' intervals hold a point."""

    def __init__(self, items: list[tuple[int, Interval]]) -> None:
        self.points = sorted({lo for _, (lo, _) in items} | {hi + 1 for _, (_, hi) in items})
        self.size = 1
        while self.size < len(self.points):
            self.size *= 2
        self.nodes: dict[int, list[int]] = {}
        for member, (lo, hi) in items:
            left = bisect.bisect_left(self.points, lo) + self.size
            right = bisect.bisect_left(self.points, hi + 1) + self.size
            while left < right:
                if left & 1:
                    self.nodes.setdefault(left, []).append(member)
                    left += 1
                if right & 1:
                    right -= 1
                    self.nodes.setdefault(right, []).append(member)
                left //= 2
                right //= 2

    def holding(self, point: int) -> list[list[int]]:
        """The member lists on the path to the leaf of `point`, each in policy order."""
        leaf = bisect.bisect_right(self.points, point) - 1
        if leaf < 0 or leaf >= len(self.points) - 1:
            return [[]]
        node = leaf + self.size
        found = []
        while node:
            if node in self.nodes:
                found.append(self.nodes[node])
            node //= 2
        return found


def _bounds(match: Match) -> Bounds:
    """Lowest and highest source and destination address per family; None where there is none."""
    result: list[Interval | None] = []
    for addresses in (match.src, match.dst):
        for version in (4, 6):
            if addresses is None:
                result.append(ANY_ADDRESS)
                continue
            family = addresses.addresses.family(version)
            result.append((family[0][0], family[-1][1]) if family else None)
    return tuple(result)


def _bounds_cover(earlier: Bounds, later: Bounds) -> bool:
    """A necessary condition for covering, cheap enough to try on every candidate first."""
    for outer, inner in zip(earlier, later):
        if inner is None:
            continue
        if outer is None or outer[0] > inner[0] or outer[1] < inner[1]:
            return False
    return True


def shadowed_ingress(model: Model) -> Iterator[Warning]:
    """Ingress matches are tried in declaration order on the shared interface; an earlier broader one wins."""
    uplinks = [u for u in model.uplinks.values() if u.ingress is not None]
    for index, later in enumerate(uplinks):
        for earlier in uplinks[:index]:
            if earlier.interface != later.interface or not later.versions <= earlier.versions:
                continue
            if earlier.ingress and later.ingress and match_keys.covers(earlier.ingress, later.ingress):
                yield (
                    later.where,
                    f"ingress of '{later.name}' never matches: the ingress of '{earlier.name}' "
                    f"(line {earlier.where.line}) takes all its connections first",
                    "make the ingress matches tell the uplinks apart, e.g. by each router's MAC",
                )
                break


def unused_groups(model: Model) -> Iterator[Warning]:
    """Groups no policy reaches, directly or through other groups (with `exec: true` every group is usable)."""
    if model.settings.exec:
        return
    reached: set[str] = set()
    pending = [p.via for p in model.policies]
    while pending:
        target = pending.pop()
        if target in model.groups and target not in reached:
            reached.add(target)
            pending += [member for member, _ in model.groups[target].members]
    for name, group in model.groups.items():
        if name not in reached:
            yield (
                group.where,
                f"group '{name}' is not used by any policy",
                f"add a policy with via: {name}, or remove the group",
            )


def private_without_nat(model: Model) -> Iterator[Warning]:
    """Forwarded traffic from private sources leaving an uplink without NAT is usually dropped upstream.

    Without a `from`, IPv4 sources are assumed private (LANs almost always are) and IPv6
    sources are assumed routable (LANs usually get global prefixes).
    """
    warned: set[str] = set()
    for policy in model.policies:
        if not match_keys.applies(policy.match, local=False):  # `local: true`, `user:`, ...: no forwarded traffic
            continue
        for name in model.uplinks_of(policy.via):
            uplink = model.uplinks[name]
            if uplink.nat.kind != "none" or name in warned:
                continue
            versions = policy.match.versions & uplink.versions
            if any(_may_be_private(policy.match, version) for version in versions):
                warned.add(name)
                yield (
                    uplink.where,
                    f"uplink '{name}' forwards traffic from private addresses (policy '{policy.name}') without NAT",
                    "add nat: masquerade, or restrict the policy's 'from' to routable addresses",
                )


def _may_be_private(match: Match, version: int) -> bool:
    if match.src is None:
        return version == 4
    private = PRIVATE.family(version)
    return any(
        first <= p_last and p_first <= last
        for first, last in match.src.addresses.family(version)
        for p_first, p_last in private
    )
