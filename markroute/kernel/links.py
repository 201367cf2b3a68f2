"""Interface state: what `plan.resolve` needs (addresses, main's connected routes), and link status.

A connected route here is a gateway-less unicast route of table main: for IPv4 the
kernel gives them scope link, IPv6 keeps every route at scope global, so the absence of
a gateway is what marks them on both families.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass
from typing import Any

from markroute.kernel.ipjson import (
    RT_TABLE_MAIN,
    RTN_UNICAST,
    VERSIONS,
    prefix_text,
    table_of,
)
from markroute.kernel.rpdb import Rpdb
from markroute.plan import LinkState, Route

IFF_UP = 0x1
IFF_LOWER_UP = 0x10000
COUNTER_KEYS = ("rx_packets", "rx_bytes", "tx_packets", "tx_bytes")


@dataclass(frozen=True)
class Link:
    name: str
    up: bool  # administratively up: routes through it can be installed
    carrier: bool
    mac: str
    addresses: tuple[tuple[int, str, int], ...]  # (IP version, address, prefix length)

    @property
    def usable(self) -> bool:
        return self.up and self.carrier

    def to_json(self) -> dict[str, Any]:
        return {"up": self.usable, "mac": self.mac, "addresses": [f"{a}/{n}" for _, a, n in self.addresses]}


def links(rpdb: Rpdb) -> dict[str, Link]:
    """Every interface by name."""
    addresses: dict[int, list[tuple[int, str, int]]] = {}
    for msg in rpdb.rtnl.get_addr():
        family = msg["family"]
        address = msg.get_attr("IFA_LOCAL") or msg.get_attr("IFA_ADDRESS")
        if family in VERSIONS and address:
            addresses.setdefault(msg["index"], []).append((VERSIONS[family], address, msg["prefixlen"]))
    found: dict[str, Link] = {}
    for msg in rpdb.rtnl.get_links():
        name = msg.get_attr("IFLA_IFNAME")
        flags = msg["flags"]
        found[name] = Link(
            name=name,
            up=bool(flags & IFF_UP),
            carrier=bool(flags & IFF_LOWER_UP),
            mac=msg.get_attr("IFLA_ADDRESS") or "",
            addresses=tuple(addresses.get(msg["index"], ())),
        )
    return found


def link_state(rpdb: Rpdb, known: dict[str, Link] | None = None) -> LinkState:
    """The `LinkState` for `plan.resolve`: each interface's addresses and main's connected routes."""
    interfaces = links(rpdb) if known is None else known
    connected: list[Route] = []
    defaults: set[tuple[int, str]] = set()
    for msg in rpdb.rtnl.get_routes():
        family = msg["family"]
        if family in VERSIONS and table_of(msg, "RTA_TABLE") == RT_TABLE_MAIN and msg["dst_len"] == 0:
            defaults |= main_default_interfaces(rpdb, msg)
        if (
            family not in VERSIONS
            or table_of(msg, "RTA_TABLE") != RT_TABLE_MAIN
            or msg["type"] != RTN_UNICAST
            or msg.get_attr("RTA_GATEWAY") is not None
            or msg.get_attr("RTA_MULTIPATH")
            or msg.get_attr("RTA_OIF") is None
            or (family == socket.AF_INET and msg["scope"] != 253)
        ):
            continue
        dst = prefix_text(msg.get_attr("RTA_DST"), msg["dst_len"], family, "default")
        connected.append(Route(VERSIONS[family], RT_TABLE_MAIN, dst, rpdb.ifname(msg.get_attr("RTA_OIF")), None, "link"))
    return LinkState(
        addresses={name: tuple((v, a) for v, a, _ in link.addresses) for name, link in interfaces.items()},
        connected=tuple(connected),
        main_defaults=frozenset(defaults),
    )


def main_default_interfaces(rpdb: Rpdb, msg: Any) -> set[tuple[int, str]]:
    """(version, interface) of each next hop of one of main's default routes."""
    version = VERSIONS[msg["family"]]
    multipath = msg.get_attr("RTA_MULTIPATH")
    if msg["type"] != RTN_UNICAST:
        return set()
    indexes = [hop["oif"] for hop in multipath] if multipath else [msg.get_attr("RTA_OIF")]
    return {(version, rpdb.ifname(index)) for index in indexes if index is not None}


def interface_counters(rpdb: Rpdb) -> dict[str, dict[str, int]]:
    """Packets and bytes received and sent by every interface (the kernel's 64-bit counters)."""
    found: dict[str, dict[str, int]] = {}
    for msg in rpdb.rtnl.get_links():
        stats = msg.get_attr("IFLA_STATS64")
        if stats is not None:
            found[msg.get_attr("IFLA_IFNAME")] = {key: int(stats[key]) for key in COUNTER_KEYS}
    return found
