"""Sockets bound to an uplink's address stay on that uplink, whatever the policies balance.

A router process that binds to ISP B's address (`nc -s`, `curl --interface`) wants ISP B.
Its packets are no different from those of an unbound socket once `connect` has picked a
source, so the kernel's route for the socket tells them apart: a socket bound to an
uplink's address is routed by that uplink's `from ADDRESS lookup TABLE` rule into the
uplink's table, whose default route carries a realm (the table id); an unbound socket
gets the address of main's default route, for which `plan.resolve` writes no such rule,
so main routes it and its packets carry no realm. `meta rtclassid REALM` in the output
path then pins the connection to its uplink before the policies balance it. A socket
bound to a device (SO_BINDTODEVICE) gets that device's address, so the same holds.

Limits: realms exist for IPv4 routes only; a socket bound to the address of the uplink
main's default route uses cannot be told from an unbound one and follows the policies;
a policy with `from:` placed before every policy without one still decides first.
"""

from __future__ import annotations

from markroute.model import Model, Policy, Uplink
from markroute.plan import table_realm


def realm(uplink: Uplink) -> int | None:
    """The realm of uplink's IPv4 default route: its table id, unique among uplinks."""
    return table_realm(uplink.table) if 4 in uplink.versions else None


def pinned(model: Model) -> list[tuple[Uplink, int]]:
    """Uplinks whose bound sockets are pinned: alone on their interface (they get `from` rules), with a realm."""
    counts: dict[str, int] = {}
    for uplink in model.uplinks.values():
        counts[uplink.interface] = counts.get(uplink.interface, 0) + 1
    return [(u, r) for u in model.uplinks.values() if counts[u.interface] == 1 and (r := realm(u)) is not None]


def decides_first(policy: Policy) -> bool:
    """A local policy that names a source address decides before the pinning rules."""
    return policy.match.src is not None
