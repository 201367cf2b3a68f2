"""Sockets bound to an uplink's address stay on that uplink, whatever the policies balance.

A router process that binds to ISP B's address (`nc -s`, `curl --interface`) wants ISP B.
Its packets are no different from those of an unbound socket once `connect` has picked a
source, so the kernel's route for the socket tells them apart: a socket bound to an
uplink's address is routed by that uplink's `from ADDRESS lookup TABLE` rule into the
uplink's bound table (`plan.UplinkPlan.bound_table`), whose default route carries a
realm (the uplink's table id); an unbound socket gets the address of main's default
route, for which `plan.resolve` writes no such rule, so main routes it and its packets
carry no realm. `meta rtclassid REALM` in the output path then pins the connection to
its uplink before the policies balance it. A socket bound to a device (SO_BINDTODEVICE)
gets that device's address, so the same holds.

The realm lives only in the bound table, never in the table the uplink's fwmark rule
looks up. A realm on a route the kernel's source check reaches gives the check a tag,
and a forwarded packet whose check is tagged gets a route of its own instead of the
cached one: every reply arriving through the uplink (its marked source check lands in
the uplink's table) would pay an allocation of a routing entry (`BENCHMARKS.md`, "Data
plane"). The bound table is a whole copy of the uplink's IPv4 routes, not just its
default route, so a bound socket reaches the LAN as the uplink's table does.

Limits: realms exist for IPv4 routes only; a socket bound to the address of the uplink
main's default route uses cannot be told from an unbound one and follows the policies;
a policy with `from:` placed before every policy without one still decides first.
"""

from __future__ import annotations

from markroute.model import Model, Policy, Uplink
from markroute.plan import table_realm
from markroute.values import BOUND_TABLE_OFFSET


def realm(uplink: Uplink) -> int | None:
    """The realm of uplink's IPv4 default route: its table id, unique among uplinks."""
    return table_realm(uplink.table) if 4 in uplink.versions else None


def pinned(model: Model) -> list[tuple[Uplink, int]]:
    """Uplinks whose bound sockets are pinned: alone on their interface (they get `from` rules), with a realm."""
    counts: dict[str, int] = {}
    for uplink in model.uplinks.values():
        counts[uplink.interface] = counts.get(uplink.interface, 0) + 1
    return [(u, r) for u in model.uplinks.values() if counts[u.interface] == 1 and (r := realm(u)) is not None]


def bound_tables(model: Model, pinning: bool) -> dict[str, int]:
    """Each pinned uplink's bound table, when the plan pins bound sockets at all (PINNING:
    there are local policies to keep them from); without them no table is needed."""
    return {u.name: u.table + BOUND_TABLE_OFFSET for u, _ in pinned(model)} if pinning else {}


def decides_first(policy: Policy) -> bool:
    """A local policy that names a source address decides before the pinning rules."""
    return policy.match.src is not None
