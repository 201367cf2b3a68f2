"""`sport` and `dport`: transport ports and port ranges.

Which protocols a port match implies is `markroute.match.proto.compared`; with exactly one
of them the rule reads that protocol's header (`tcp dport`), otherwise the transport
header generically (`th dport`).
"""

from __future__ import annotations

from typing import Any

from markroute.match.key import (
    Expr,
    MapField,
    MatchKey,
    Problem,
    any_traffic,
    interval_value,
)
from markroute.match.proto import compared as compared_protocols
from markroute.model import Match
from markroute.plan import nftjson as nj
from markroute.values import (
    PORT_PROTOCOLS,
    PROTOCOL_NAMES,
    AddressList,
    Interval,
    Ipv4Intervals,
    merge,
    parse_port,
)


def covers(a: tuple[Interval, ...], b: tuple[Interval, ...] | None) -> bool:
    return b is not None and AddressList(v4=Ipv4Intervals.of(a)).covers(AddressList(v4=Ipv4Intervals.of(b)))


def _key(key: str, field: str) -> MatchKey:
    def needs(match: Match) -> Problem | None:
        if getattr(match, field) and match.protocols is not None and not set(match.protocols) & PORT_PROTOCOLS:
            return "ports need proto tcp, udp or sctp", "add proto: tcp or drop the port"
        return None

    def conditions(match: Match, version: int | None, sets: object) -> list[Expr]:
        intervals: tuple[Interval, ...] | None = getattr(match, field)
        if not intervals:
            return []
        protocols = compared_protocols(match)
        layer = PROTOCOL_NAMES[protocols[0]] if protocols and len(protocols) == 1 else "th"
        return [nj.match(nj.payload(layer, key), nj.setvalue([interval_value(iv) for iv in intervals]))]

    def map_values(match: Match, version: int) -> list[Interval] | None:
        intervals: tuple[Interval, ...] | None = getattr(match, field)
        return list(intervals) if intervals else None

    def element(version: int | None, interval: Interval) -> Any:
        return interval_value(interval)

    return MatchKey(
        key=key,
        field=field,
        read="many",
        parse=parse_port,
        collect=merge,
        needs=needs,
        applies=any_traffic,
        in_not=None,
        in_ingress=None,
        compared=lambda match: getattr(match, field),
        covers=covers,
        conditions=conditions,
        family_specific=False,
        map_field=MapField(key, map_values, lambda version: nj.payload("th", key), element, joinable=True,
                           alone=False),
        flow_field=key,
        trace_option=f"--{key}",
    )


SPORT = _key("sport", "sports")
DPORT = _key("dport", "dports")
