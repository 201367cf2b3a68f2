"""`dscp`: the DSCP bits of the IP header, by number or class name.

It merges into a policy map only as the map's single field: nft 1.0.6 lists a
concatenated key with DSCP in a form it cannot load again, which would break rollback.
"""

from __future__ import annotations

from typing import Any

from markroute.match.addresses import IP_PAYLOAD
from markroute.match.key import (
    Expr,
    MapField,
    MatchKey,
    any_traffic,
    interval_value,
    sorted_unique,
    values_cover,
)
from markroute.model import Match
from markroute.plan import nftjson as nj
from markroute.values import Interval, parse_dscp


def conditions(match: Match, version: int | None, sets: object) -> list[Expr]:
    if not match.dscps or version is None:
        return []
    return [nj.match(nj.payload(IP_PAYLOAD[version], "dscp"), nj.setvalue(list(match.dscps)))]


def map_values(match: Match, version: int) -> list[Interval] | None:
    return [(d, d) for d in match.dscps] if match.dscps else None


def expression(version: int | None) -> Expr:
    assert version is not None
    return nj.payload(IP_PAYLOAD[version], "dscp")


def element(version: int | None, interval: Interval) -> Any:
    return interval_value(interval)


DSCP = MatchKey(
    key="dscp",
    field="dscps",
    read="many",
    parse=parse_dscp,
    collect=sorted_unique,
    needs=None,
    applies=any_traffic,
    in_not=None,
    in_ingress=None,
    compared=lambda match: match.dscps,
    covers=values_cover,
    conditions=conditions,
    family_specific=True,
    map_field=MapField("dscp", map_values, expression, element, joinable=False, alone=True),
    flow_field="dscp",
    trace_option="--dscp",
)
