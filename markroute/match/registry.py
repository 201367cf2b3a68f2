"""The registry of match keys, and what every stage derives from it.

`KEYS` lists one `MatchKey` per YAML match key, in the order rules and map keys test
them (addresses first, the cheapest to rule a packet out). Stages never name a key
themselves: they iterate `KEYS`, so a new key is one module plus one line here.
`not` is structural (a nested match) and handled by each stage generically.
"""

from __future__ import annotations

from typing import Any

from markroute.match.addresses import DESTINATION, SOURCE
from markroute.match.cgroup import CGROUP
from markroute.match.dscp import DSCP
from markroute.match.iif import IIF
from markroute.match.key import AddressSets, Expr, MatchKey, any_traffic
from markroute.match.local import LOCAL
from markroute.match.mac import MAC
from markroute.match.owner import GROUP, USER
from markroute.match.ports import DPORT, SPORT
from markroute.match.proto import PROTO
from markroute.model import Match

KEYS: tuple[MatchKey, ...] = (SOURCE, DESTINATION, PROTO, SPORT, DPORT, IIF, MAC, DSCP, USER, GROUP, CGROUP, LOCAL)
NOT = "not"
YAML_KEYS = tuple(k.key for k in KEYS) + (NOT,)


def conditions(match: Match, version: int | None, sets: AddressSets) -> list[Expr]:
    """The nft expressions of a plain rule testing `match` (without its `not`)."""
    return [expr for key in KEYS for expr in key.conditions(match, version, sets)]


def family_specific(match: Match) -> bool:
    """Whether the rules for `match` differ between IPv4 and IPv6."""
    if any(key.family_specific and key.value(match) for key in KEYS):
        return True
    return match.negated is not None and family_specific(match.negated)


# The keys whose `applies` can say no: `check` asks each of 10,000 policies three times.
_LIMITING = tuple((key.field, key.applies) for key in KEYS if key.applies is not any_traffic)


def applies(match: Match, local: bool) -> bool:
    """Whether `match` can see router-originated (local=True) or forwarded traffic."""
    for field, test in _LIMITING:
        if not test(getattr(match, field), local):
            return False
    return True


def compared(match: Match) -> list[Any]:
    """What the match compares, per key in `KEYS` order (None: the key is open)."""
    return [key.compared(match) for key in KEYS]


def given(match: Match, values: list[Any] | None = None) -> int:
    """A bit per key the match compares (and one for `not`); VALUES are its `compared`, when known.

    A match comparing a key the other does not cannot cover it: a cheap test before `covers`.
    """
    values = (compared(match) if values is None else values) + [match.negated]
    return sum(1 << bit for bit, value in enumerate(values) if value is not None)


def covers(a: Match, b: Match) -> bool:
    """True when every packet matching `b` also matches `a` (IP families aside); conservative with `not`."""
    if a.negated is not None:
        return False
    for key in KEYS:
        outer = key.compared(a)
        if outer is not None and not key.covers(outer, key.compared(b)):
            return False
    return True
