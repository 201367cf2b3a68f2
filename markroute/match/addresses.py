"""`from` and `to`: source and destination addresses, prefixes, ranges and `@set` names.

The config resolves `@name` against `sets:` itself (it owns them); `parse` reads every
other element. The compiler writes a few addresses inline and the rest as named sets
(`AddressSets`, implemented by `markroute.compile.namedsets`).
"""

from __future__ import annotations

from typing import Any

from markroute.match.key import (
    MERGE_REFUSED,
    AddressSets,
    Expr,
    MapField,
    MatchKey,
    any_traffic,
)
from markroute.model import Addresses, Match
from markroute.plan import nftjson as nj
from markroute.values import Interval, address_list, parse_address

IP_PAYLOAD = {4: "ip", 6: "ip6"}


def collect(items: list[tuple[int, Interval]]) -> Addresses:
    return Addresses(address_list(items))


def covers(a: Addresses, b: Addresses | None) -> bool:
    """Whether every address of b is in a; a dynamic set's elements are unknown, it covers only itself."""
    if b is not None and (a.dynamic or b.dynamic):
        return a == b
    return b is not None and a.addresses.covers(b.addresses)


def _key(key: str, field: str, direction: str, option: str, flow_field: str) -> MatchKey:
    def conditions(match: Match, version: int | None, sets: AddressSets) -> list[Expr]:
        addresses: Addresses | None = getattr(match, field)
        if addresses is None or version is None:
            return []
        return [nj.match(nj.payload(IP_PAYLOAD[version], direction), sets.address_value(addresses, version))]

    def map_values(match: Match, version: int) -> Any:
        addresses: Addresses | None = getattr(match, field)
        if addresses is None:
            return None
        if addresses.set_name is not None:  # a `sets:` entry stays a named set, updatable element by element
            return MERGE_REFUSED
        return list(addresses.addresses.family(version))

    def expression(version: int | None) -> Expr:
        assert version is not None
        return nj.payload(IP_PAYLOAD[version], direction)

    def element(version: int | None, interval: Interval) -> Any:
        assert version is not None
        return nj.address_element(version, interval)

    return MatchKey(
        key=key,
        field=field,
        read="addresses",
        parse=parse_address,
        collect=collect,
        needs=None,
        applies=any_traffic,
        in_not=None,
        in_ingress=None,
        compared=lambda match: getattr(match, field),
        covers=covers,
        conditions=conditions,
        family_specific=True,
        map_field=MapField(direction, map_values, expression, element, joinable=True, alone=False),
        flow_field=flow_field,
        trace_option=option,
    )


SOURCE = _key("from", "src", "saddr", "--from", "src")
DESTINATION = _key("to", "dst", "daddr", "--to", "dst")
