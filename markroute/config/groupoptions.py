"""A group's failure behaviour: a fail-closed end of its failover list, `last_resort:`, `failback:`,
and the inline group of a policy's `via: {failover: [...]}`.

Kept apart from the group reader's walk so each key is read by one small function:
`groups.read_group` calls `split_last_resort` on a failover list, `group_last_resort` and
`failback` on the group's keys; `policies.read_inline_group` names a policy's inline group
with `inline_group_name`.

Why a failover list may end with `unreachable`, `blackhole` or `main`: the only way to
say "this traffic must never leave any other way" used to be the global
`settings.last_resort`, which also changes every other policy; a VPN-only host behind
`failover: [vpn, blackhole]` now fails closed while the rest keeps `main`.
"""

from __future__ import annotations

from typing import cast

from markroute.config.reader import Reader
from markroute.config.source import Node
from markroute.diagnostics import Where
from markroute.model import SPECIAL_TARGETS, Failback, LastResort
from markroute.values import parse_seconds

GROUP_KEYS = ("balance", "failover", "last_resort", "failback")
FAILBACK_KEYS = ("hold", "flows")


def inline_group_name(index: int) -> str:
    """The group written inline in policy #INDEX: `_` first, which no declared name can have."""
    return f"_policy{index}"


def split_last_resort(
    v: Reader, name: str, members: list[tuple[str, int, Where]]
) -> tuple[list[tuple[str, int, Where]], LastResort | None] | None:
    """A failover list's members and the special target ending it (None if it ends with an uplink or group).

    `unreachable`, `blackhole` and `main` are accepted only as the last member: what
    follows them could never be used, which is a mistake worth an error.
    """
    ok = True
    for member, _, where in members[:-1]:
        if member in SPECIAL_TARGETS:
            v.diag.error(where, f"'{member}' must be the last member of the failover list of '{name}'",
                         f"nothing after '{member}' could ever be used; move it to the end")
            ok = False
    if not ok:
        return None
    if members and members[-1][0] in SPECIAL_TARGETS:
        if len(members) == 1:
            v.diag.error(members[0][2], f"group '{name}' has only '{members[0][0]}' in its failover list",
                         f"add the uplinks it should use first, or write via: {members[0][0]} in the policy")
            return None
        return members[:-1], cast(LastResort, members[-1][0])
    return members, None


def group_last_resort(v: Reader, name: str, node: Node, from_list: LastResort | None) -> tuple[bool, LastResort | None]:
    """(valid, value) of the group's own last resort: its `last_resort:` key or the end of its failover list."""
    if "last_resort" not in node.items:
        return True, from_list
    value = v.choice(node.items["last_resort"], "last_resort", SPECIAL_TARGETS)
    if value is None:
        return False, None
    if from_list is not None and from_list != value:
        v.diag.error(node.items["last_resort"].where,
                     f"group '{name}' ends its failover list with '{from_list}' but says last_resort: {value}",
                     "keep one of them")
        return False, None
    return True, cast(LastResort, value)


def failback(v: Reader, name: str, node: Node, kind: str) -> Failback | None:
    """`failback: {hold: SECONDS, flows: keep | move}`, for failover groups only."""
    if "failback" not in node.items:
        return Failback()
    item = node.items["failback"]
    if kind != "failover":
        v.diag.error(item.where, f"failback of '{name}' applies to failover groups only",
                     "a balance group has no preferred member to come back to")
        return None
    if not v.kind(item, "map", f"failback of '{name}'"):
        return None
    v.known_keys(item, FAILBACK_KEYS, f"failback of '{name}'")
    hold = v.scalar(item.items["hold"], "hold", parse_seconds) if "hold" in item.items else None
    flows = v.choice(item.items["flows"], "flows", ("keep", "move")) if "flows" in item.items else "keep"
    if ("hold" in item.items and hold is None) or flows is None:
        return None
    return Failback(hold, flows)  # type: ignore[arg-type]
