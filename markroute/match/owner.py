"""`user` and `group`: who owns the socket of a connection this machine originates.

`meta skuid`/`meta skgid` read the owner of the local socket (the user and primary group
of the process that created it), so the keys only ever see router-originated traffic:
a policy using them goes to `policies_local` alone, and `local: false` with them is an
error. Names are resolved when the config is read (`check` runs where markroute runs);
a number is taken as it is. The socket's cgroup is `match/cgroup.py`.
"""

from __future__ import annotations

import grp
import pwd
from collections.abc import Callable
from typing import Any

from markroute.match.key import Expr, MatchKey, Problem, Unmerged, unique, values_cover
from markroute.model import Match
from markroute.plan import nftjson as nj
from markroute.values import yaml_text

ID_MAX = 2**32 - 2  # (uid_t)-1 means "no owner"


def local_only(value: Any, local: bool) -> bool:
    """`applies` of a key that tests the local socket: forwarded packets have none."""
    return not value or local


def forwarded_conflict(key: str, match: Match) -> Problem | None:
    """`needs` of a key testing the local socket: keys that select forwarded traffic only
    (`local: false`, `iif`, `mac`) leave nothing for it."""
    forwarded = [k for k, v in (("local: false", match.local is False), ("iif", match.iifs), ("mac", match.macs)) if v]
    if forwarded:
        return (f"'{key}' matches only connections this machine originates, "
                f"'{forwarded[0]}' only forwarded ones: no packet has both", "remove one of them")
    return None


def parse_id(lookup: Callable[[str], int], what: str) -> Callable[[object], int]:
    def parse(value: object) -> int:
        if isinstance(value, int) and not isinstance(value, bool):
            if not 0 <= value <= ID_MAX:
                raise ValueError(f"{value} is out of range 0-{ID_MAX}")
            return value
        name = yaml_text(value)
        if name.isdigit():
            return parse(int(name))
        try:
            return lookup(name)
        except KeyError:
            raise ValueError(f"no {what} '{name}' on this machine (give a number, or create it first)") from None
    return parse


def _key(key: str, field: str, meta: str, flow_field: str, option: str,
         lookup: Callable[[str], int], what: str) -> MatchKey:
    def conditions(match: Match, version: int | None, sets: object) -> list[Expr]:
        ids = getattr(match, field)
        return [nj.match(nj.meta(meta), nj.setvalue(list(ids)))] if ids else []

    def needs(match: Match) -> Problem | None:
        return forwarded_conflict(key, match) if getattr(match, field) else None

    return MatchKey(
        key=key,
        field=field,
        read="many",
        parse=parse_id(lookup, what),
        collect=unique,
        needs=needs,
        applies=local_only,
        in_not=(f"write '{key}' outside 'not'", f"list the {what}s that should match instead"),
        in_ingress=(f"'{key}' has no meaning in an ingress match: arriving packets have no local socket", None),
        compared=lambda match: getattr(match, field),
        covers=values_cover,
        conditions=conditions,
        family_specific=False,
        map_field=Unmerged.RULE,
        flow_field=flow_field,
        trace_option=option,
    )


USER = _key("user", "uids", "skuid", "uid", "--user", lambda name: pwd.getpwnam(name).pw_uid, "user")
GROUP = _key("group", "gids", "skgid", "gid", "--group", lambda name: grp.getgrnam(name).gr_gid, "group")
