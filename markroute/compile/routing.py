"""The routing half of a `Plan`: ip rules, routes, sysctls and the uplinks' kernel view.

Pure functions of the `Model`: unlike the nftables table (`chains`), none depends on
uplink health, so failover never rewrites them. The mark a packet gets in the table
selects the uplink's routing table through an `ip rule fwmark` in markroute's own
priority band.
"""

from __future__ import annotations

from markroute import marks
from markroute.compile import failclosed, ha
from markroute.model import Model
from markroute.plan import (
    RESERVED_RULE_OFFSET,
    SOURCE_RULE_OFFSET,
    GroupMember,
    GroupPlan,
    IpRule,
    Route,
    Sysctl,
    UplinkPlan,
)
from markroute.values import AUTO_GATEWAY

RP_FILTER = {"strict": "1", "loose": "2", "off": "0"}


def ip_rules(model: Model, bound_tables: dict[str, int]) -> list[IpRule]:
    """Mark rules first, source-address rules last (`plan.SOURCE_RULE_OFFSET`).

    A router's own new connection is re-routed by its mark while it still carries the
    source address the main route chose, an uplink's address: were the `from ADDR`
    rules first, that uplink would win and router traffic would never be balanced.
    """
    base = model.settings.rule_priority
    mask = model.settings.mark_mask
    rules: list[IpRule] = []
    for uplink in model.uplinks.values():
        if uplink.nat.kind == "snat" and uplink.nat.address:
            version = 6 if ":" in uplink.nat.address else 4
            table = bound_tables.get(uplink.name, uplink.table) if version == 4 else uplink.table
            rules.append(IpRule(version, base + SOURCE_RULE_OFFSET, table=table, src=uplink.nat.address))
        for version in sorted(uplink.versions):
            rules.append(IpRule(version, base, table=uplink.table, fwmark=uplink.mark, fwmask=mask))
    for action in reserved_actions(model):
        value = marks.unreachable_mark(mask) if action == "unreachable" else marks.blackhole_mark(mask)
        for version in (4, 6):
            rules.append(IpRule(version, base + RESERVED_RULE_OFFSET, action=action, fwmark=value, fwmask=mask))  # type: ignore[arg-type]
    for name, action in failclosed.floors(model).items():
        for version in (4, 6):
            rules.append(IpRule(version, base + RESERVED_RULE_OFFSET, action=action,
                                fwmark=model.uplinks[name].mark, fwmask=mask))
    return rules


def reserved_actions(model: Model) -> list[str]:
    """unreachable/blackhole rules, when a policy or a last resort can send traffic there."""
    used = {p.via for p in model.policies}
    if used & set(model.uplinks):
        used.add(model.settings.last_resort)
    used |= {model.last_resort_of(group) for group in failclosed.used_groups(model)}
    return [a for a in ("unreachable", "blackhole") if a in used]


def routes(uplinks: tuple[UplinkPlan, ...]) -> list[Route]:
    """The default route of each uplink and family, in the uplink's own table, and in its
    bound table with the realm `meta rtclassid` reads (`markroute.compile.bound`)."""
    found: list[Route] = []
    for uplink in uplinks:
        for version, gateway in ((4, uplink.gateway), (6, uplink.gateway6)):
            if version in uplink.versions and gateway != AUTO_GATEWAY:  # learned at apply (`plan.resolve`)
                found += uplink.copies(Route(version, uplink.table, "default", uplink.interface, gateway))
    return found


def sysctls(model: Model) -> tuple[Sysctl, ...]:
    """Forwarding when anything is forwarded, and per uplink interface the rp_filter mode
    and src_valid_mark, without which rp_filter would judge marked replies by the main table.

    Conntrack accounting and timestamps (per namespace) give `markroute flows` each
    connection's bytes and age; like every sysctl here, apply records the values found and
    `down` puts them back. With `connection_records: false` they stay as found: any conntrack
    extension costs every new connection an allocation (`compile/chains.py` docstring)."""
    settings = model.settings
    forwarding = settings.forwarding
    if forwarding is None:
        forwarding = any(p.match.local is not True for p in model.policies)
    result: list[Sysctl] = []
    if forwarding:
        result.append(Sysctl("net/ipv4/ip_forward", "1"))
        if any(6 in u.versions and u.gateway6 for u in model.uplinks.values()):
            result.append(Sysctl("net/ipv6/conf/all/forwarding", "1"))
    if settings.connection_records:
        result += [Sysctl("net/netfilter/nf_conntrack_acct", "1"), Sysctl("net/netfilter/nf_conntrack_timestamp", "1")]
    interfaces = dict.fromkeys(u.interface for u in model.uplinks.values())
    for interface in interfaces:
        result.append(Sysctl(f"net/ipv4/conf/{interface}/rp_filter", RP_FILTER[settings.rp_filter]))
        result.append(Sysctl(f"net/ipv4/conf/{interface}/src_valid_mark", "1"))
    if settings.ha is not None:
        result.append(ha.LIBERAL)  # a connection handed back by the HA peer keeps flowing
    return tuple(result)


def group_plans(model: Model) -> tuple[GroupPlan, ...]:
    """The groups as configured, for `status` (the table holds only the members usable now)."""
    return tuple(GroupPlan(g.name, g.kind, tuple(GroupMember(m, w) for m, w in g.members))
                 for g in model.groups.values())


def uplink_plans(model: Model, bound_tables: dict[str, int]) -> tuple[UplinkPlan, ...]:
    """What apply and the daemon need of each uplink. `source_rules`: the interface's
    addresses (resolved at apply) name the uplink only when no other uplink shares it;
    BOUND_TABLES: the pinned uplinks' bound tables (`compile.bound`)."""
    counts: dict[str, int] = {}
    for uplink in model.uplinks.values():
        counts[uplink.interface] = counts.get(uplink.interface, 0) + 1
    return tuple(
        UplinkPlan(
            name=u.name,
            interface=u.interface,
            mark=u.mark,
            table=u.table,
            versions=tuple(sorted(u.versions)),
            gateway=u.gateway,
            gateway6=u.gateway6,
            source_rules=counts[u.interface] == 1,
            bound_table=bound_tables.get(u.name),
        )
        for u in model.uplinks.values()
    )
