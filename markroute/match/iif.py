"""`iif`: the interface a forwarded packet arrived on (router-originated packets have none)."""

from __future__ import annotations

from typing import Any

from markroute.match.key import (
    Expr,
    MapField,
    MatchKey,
    forwarded_only,
    unique,
    values_cover,
)
from markroute.model import Match
from markroute.plan import nftjson as nj
from markroute.values import Interval, parse_interface

IFNAME_BYTES = 16


def name_number(name: str) -> int:
    """An interface name as a number (its bytes), so it takes part in `first_match` like any field."""
    return int.from_bytes(name.encode().ljust(IFNAME_BYTES, b"\0"), "big")


def number_name(number: int) -> str:
    return number.to_bytes(IFNAME_BYTES, "big").rstrip(b"\0").decode()


def conditions(match: Match, version: int | None, sets: object) -> list[Expr]:
    return [nj.match(nj.meta("iifname"), nj.setvalue(list(match.iifs)))] if match.iifs else []


def map_values(match: Match, version: int) -> list[Interval] | None:
    return [(name_number(i), name_number(i)) for i in match.iifs] if match.iifs else None


def element(version: int | None, interval: Interval) -> Any:
    return number_name(interval[0])


IIF = MatchKey(
    key="iif",
    field="iifs",
    read="many",
    parse=parse_interface,
    collect=unique,
    needs=None,
    applies=forwarded_only,
    in_not=None,
    in_ingress=None,
    compared=lambda match: match.iifs,
    covers=values_cover,
    conditions=conditions,
    family_specific=False,
    map_field=MapField("iif", map_values, lambda version: nj.meta("iifname"), element, joinable=False, alone=False),
    flow_field="iif",
    trace_option="--iif",
)
