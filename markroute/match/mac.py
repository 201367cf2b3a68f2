"""`mac`: the source MAC address of an arriving packet (router-originated packets have none)."""

from __future__ import annotations

from typing import Any

from markroute.match.key import (
    Expr,
    MapField,
    MatchKey,
    forwarded_only,
    sorted_unique,
    values_cover,
)
from markroute.model import Match
from markroute.plan import nftjson as nj
from markroute.values import Interval, parse_mac


def mac_number(mac: str) -> int:
    return int(mac.replace(":", ""), 16)


def conditions(match: Match, version: int | None, sets: object) -> list[Expr]:
    return [nj.match(nj.payload("ether", "saddr"), nj.setvalue(list(match.macs)))] if match.macs else []


def map_values(match: Match, version: int) -> list[Interval] | None:
    return [(mac_number(m), mac_number(m)) for m in match.macs] if match.macs else None


def element(version: int | None, interval: Interval) -> Any:
    return ":".join(f"{byte:02x}" for byte in interval[0].to_bytes(6, "big"))


MAC = MatchKey(
    key="mac",
    field="macs",
    read="many",
    parse=parse_mac,
    collect=sorted_unique,
    needs=None,
    applies=forwarded_only,
    in_not=None,
    in_ingress=None,
    compared=lambda match: match.macs,
    covers=values_cover,
    conditions=conditions,
    family_specific=False,
    map_field=MapField("mac", map_values, lambda version: nj.payload("ether", "saddr"), element, joinable=False,
                       alone=False),
    flow_field="mac",
    trace_option="--mac",
)
