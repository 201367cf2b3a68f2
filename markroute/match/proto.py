"""`proto`: the transport protocol, by name or number.

Ports imply protocols: a match with ports but no `proto` means tcp and udp, and with
`proto` only its port-carrying protocols (`compared`). Every stage asks this module,
so that rule is written once.
"""

from __future__ import annotations

from typing import Any

from markroute.match.key import (
    Expr,
    MapField,
    MatchKey,
    any_traffic,
    unique,
    values_cover,
)
from markroute.model import Match
from markroute.plan import nftjson as nj
from markroute.values import PORT_PROTOCOLS, PROTOCOL_NAMES, Interval, parse_protocol

PORTS_WITHOUT_PROTO = (6, 17)  # tcp and udp


def compared(match: Match) -> tuple[int, ...] | None:
    """The protocols a match really compares: ports imply tcp/udp (or the port-carrying ones given)."""
    if not (match.sports or match.dports):
        return match.protocols
    if match.protocols is None:
        return PORTS_WITHOUT_PROTO
    return tuple(p for p in match.protocols if p in PORT_PROTOCOLS)


def protocol_value(number: int) -> Any:
    """A protocol as nft JSON: its name where nft knows one, else the number."""
    return PROTOCOL_NAMES.get(number, number)


def conditions(match: Match, version: int | None, sets: object) -> list[Expr]:
    protocols = compared(match)
    if protocols is None:
        return []
    return [nj.match(nj.meta("l4proto"), nj.setvalue([protocol_value(p) for p in protocols]))]


def map_values(match: Match, version: int) -> list[Interval] | None:
    protocols = compared(match)
    return None if protocols is None else [(p, p) for p in protocols]


PROTO = MatchKey(
    key="proto",
    field="protocols",
    read="many",
    parse=parse_protocol,
    collect=unique,
    needs=None,
    applies=any_traffic,
    in_not=None,
    in_ingress=None,
    compared=compared,
    covers=values_cover,
    conditions=conditions,
    family_specific=False,
    map_field=MapField("l4proto", map_values, lambda version: nj.meta("l4proto"),
                       lambda version, interval: protocol_value(interval[0]), joinable=False, alone=False),
    flow_field="proto",
    trace_option="--proto",
)
