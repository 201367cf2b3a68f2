"""Fail-closed groups: the ip rules that keep their traffic from falling through to `main`.

A group whose failover list ends with `blackhole` or `unreachable` (or that says
`last_resort:` so) must never let its traffic leave another way. The group chain alone
cannot promise that: a packet marked for the tunnel looks up the tunnel's table, and
when the tunnel's interface is down, deleted, or not created yet (boot), the kernel has
removed (or apply never added) its default route; the lookup then finds nothing and
the kernel goes on to the next ip rule, ending in `main`, out through an ISP. That is
the leak the daemon's rewrite comes too late for (0.5 s) and a plain `apply` never
closes at all.

So every uplink such a group can use gets a "floor" right after the fwmark lookups, in
markroute's reserved band: `fwmark UPLINK_MARK/MASK blackhole` (or `unreachable`). It
is not tied to any interface, so it holds while the interface is missing, through an
apply (rules are added before the table swap and only stale ones are removed after)
and while the daemon is dead; a packet reaches it only when the uplink's own table had
no route for it.
"""

from __future__ import annotations

from typing import Literal, cast

from markroute.model import Model

Closed = Literal["unreachable", "blackhole"]
CLOSED: tuple[Closed, ...] = ("unreachable", "blackhole")


def used_groups(model: Model) -> list[str]:
    """Groups some policy can reach, directly or as a member of another group, in declaration order."""
    reached: set[str] = set()
    pending = [p.via for p in model.policies if p.via in model.groups]
    while pending:
        name = pending.pop()
        if name in reached:
            continue
        reached.add(name)
        pending += [member for member, _ in model.groups[name].members if member in model.groups]
    return [name for name in model.groups if name in reached]


def closed_groups(model: Model) -> list[str]:
    """Used groups that fail closed: their last resort drops the traffic."""
    return [name for name in used_groups(model) if model.last_resort_of(name) in CLOSED]


def floors(model: Model) -> dict[str, Closed]:
    """Uplink -> the action of its floor rule; `unreachable` when any of its closed groups asks for it
    (the sender learns at once), else `blackhole`."""
    found: dict[str, Closed] = {}
    for group in closed_groups(model):
        action = cast(Closed, model.last_resort_of(group))
        for uplink in model.uplinks_of(group):
            if found.get(uplink) != "unreachable":
                found[uplink] = action
    return {name: found[name] for name in model.uplinks if name in found}
