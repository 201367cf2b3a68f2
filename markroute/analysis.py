"""Static analyses of a valid model that produce warnings, not errors.

They catch configurations that load and work but probably do not do what the admin
meant: a policy hidden behind an earlier broader one, private addresses leaving an
uplink without NAT, a mark mask that collides with other software's marks.
"""

from __future__ import annotations

from collections.abc import Iterator

from markroute import marks
from markroute.diagnostics import Where
from markroute.model import Addresses, Match, Model, Policy
from markroute.values import AddressList, Interval, merge, parse_address

PRIVATE = AddressList(
    v4=merge([parse_address(p)[1] for p in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10")]),
    v6=merge([parse_address("fc00::/7")[1]]),
)

Warning = tuple[Where, str, str | None]


def model_warnings(model: Model) -> Iterator[Warning]:
    yield from mask_overlaps(model)
    yield from shadowed_policies(model)
    yield from private_without_nat(model)


def mask_overlaps(model: Model) -> Iterator[Warning]:
    mask = model.settings.mark_mask
    for who, bits in marks.field_overlaps(mask):
        yield (
            Where(model.source, 1, 1),
            f"mark_mask {mask:#x} overlaps the mark bits {bits:#x} used by {who}",
            "if it runs here, pick mark_mask bits it does not use, e.g. 0xff00",
        )
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
    policies = model.policies
    for later_index, later in enumerate(policies):
        for earlier in policies[:later_index]:
            if covers(earlier, later, model):
                yield (
                    later.where,
                    f"policy '{later.name}' can never match: '{earlier.name}' "
                    f"(line {earlier.where.line}) matches all its traffic first",
                    "move it above the broader policy or narrow the earlier one",
                )
                break


def covers(earlier: Policy, later: Policy, model: Model) -> bool:
    """True when every packet `later` matches is matched by `earlier` first."""
    a, b = earlier.match, later.match
    if a.negated is not None:
        return False
    later_versions = b.versions & model.target_versions(later.via)
    if not later_versions <= (a.versions & model.target_versions(earlier.via)):
        return False
    if a.local is not None and a.local != b.local:
        return False
    return (
        _addresses_cover(a.src, b.src)
        and _addresses_cover(a.dst, b.dst)
        and _values_cover(a.protocols, b.protocols)
        and _ports_cover(a.sports, b.sports)
        and _ports_cover(a.dports, b.dports)
        and _values_cover(a.iifs, b.iifs)
        and _values_cover(a.macs, b.macs)
        and _values_cover(a.dscps, b.dscps)
    )


def _addresses_cover(a: Addresses | None, b: Addresses | None) -> bool:
    if a is None:
        return True
    return b is not None and a.addresses.covers(b.addresses)


def _values_cover(a: tuple[object, ...] | None, b: tuple[object, ...] | None) -> bool:
    if a is None:
        return True
    return b is not None and set(b) <= set(a)


def _ports_cover(a: tuple[Interval, ...] | None, b: tuple[Interval, ...] | None) -> bool:
    if a is None:
        return True
    return b is not None and AddressList(v4=a).covers(AddressList(v4=b))


def private_without_nat(model: Model) -> Iterator[Warning]:
    """Forwarded traffic from private sources leaving an uplink without NAT is usually dropped upstream."""
    warned: set[str] = set()
    for policy in model.policies:
        if policy.match.local is True or not _may_be_private(policy.match):
            continue
        for name in model.uplinks_of(policy.via):
            uplink = model.uplinks[name]
            if uplink.nat.kind == "none" and name not in warned:
                warned.add(name)
                yield (
                    uplink.where,
                    f"uplink '{name}' forwards traffic from private addresses (policy '{policy.name}') without NAT",
                    "add nat: masquerade, or restrict the policy's 'from' to routable addresses",
                )


def _may_be_private(match: Match) -> bool:
    if match.src is None:
        return True
    addresses = match.src.addresses
    for version in (4, 6):
        private = PRIVATE.family(version)
        for first, last in addresses.family(version):
            if any(first <= p_last and p_first <= last for p_first, p_last in private):
                return True
    return False
