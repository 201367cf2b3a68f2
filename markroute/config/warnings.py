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

from collections.abc import Iterator

from markroute import marks
from markroute import match as match_keys
from markroute.config.tunnelwarnings import tunnel_warnings
from markroute.diagnostics import Where
from markroute.model import Match, Model
from markroute.values import AddressList, Interval, merge, parse_address

PRIVATE = AddressList(
    v4=merge([parse_address(p)[1] for p in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10")]),
    v6=merge([parse_address("fc00::/7")[1]]),
)

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
    """Policies that an earlier one hides completely.

    Every pair is compared, so the cheap tests (IP families, which conditions are given at
    all) come first; configs with hundreds of policies stay fast to check.
    """
    policies = model.policies
    versions = [p.match.versions & model.target_versions(p.via) for p in policies]
    given = [match_keys.given(p.match) for p in policies]
    bounds = [_bounds(p.match) for p in policies]
    for later_index, later in enumerate(policies):
        for earlier_index, earlier in enumerate(policies[:later_index]):
            if given[earlier_index] & ~given[later_index] or not versions[later_index] <= versions[earlier_index]:
                continue
            if not _bounds_cover(bounds[earlier_index], bounds[later_index]):
                continue
            if match_keys.covers(earlier.match, later.match):
                yield (
                    later.where,
                    f"policy '{later.name}' can never match: '{earlier.name}' "
                    f"(line {earlier.where.line}) matches all its traffic first",
                    "move it above the broader policy or narrow the earlier one",
                )
                break


Bounds = tuple[Interval | None, ...]
ANY_ADDRESS = (0, 2**128 - 1)


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
    """A necessary condition for covering, cheap enough to try on every pair first."""
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
    """Groups no policy reaches, directly or through other groups."""
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
        if policy.match.local is True:
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
