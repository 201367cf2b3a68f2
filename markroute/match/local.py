"""`local`: true for connections this host originates, false for forwarded ones.

It tests no packet field: it decides which policy chain (`policies_local` or
`policies_fwd`) holds the policy, so it emits no expression and has no map field.
"""

from __future__ import annotations

from typing import Any

from markroute.match.key import Expr, MatchKey, Unmerged
from markroute.model import Match
from markroute.values import parse_bool


def applies(value: bool | None, local: bool) -> bool:
    return value is None or value == local


def conditions(match: Match, version: int | None, sets: object) -> list[Expr]:
    return []


def only(values: list[Any]) -> Any:
    return values[0]


LOCAL = MatchKey(
    key="local",
    field="local",
    read="one",
    parse=parse_bool,
    collect=only,
    needs=None,
    applies=applies,
    in_not=("write 'local' outside 'not'", "local: false means only forwarded traffic"),
    in_ingress=("'local' has no meaning in an ingress match", None),
    compared=lambda match: match.local,
    covers=lambda a, b: a == b,
    conditions=conditions,
    family_specific=False,
    map_field=Unmerged.CHAIN,
    flow_field="local",
    trace_option="--local",
)
