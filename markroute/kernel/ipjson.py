"""Netlink rule and route messages in the JSON shape `ip -j rule` / `ip -j route` prints.

One shape for compiled plans (`IpRule.to_json`, `Route.to_json`), live dumps and the
simulator's input means a live system can be read, compared and simulated without
translating between three dialects. Names follow iproute2 6.1 without its config files
(/etc/iproute2/rt_tables etc.): numbers stay numbers except the kernel's own names.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from typing import Any

TABLE_NAMES = {253: "default", 254: "main", 255: "local"}
PROTOCOL_NAMES = {
    0: "unspec", 1: "redirect", 2: "kernel", 3: "boot", 4: "static", 8: "gated", 9: "ra", 10: "mrt",
    11: "zebra", 12: "bird", 13: "dnrouted", 14: "xorp", 15: "ntk", 16: "dhcp", 17: "mrouted",
    18: "keepalived", 42: "babel", 99: "openr", 186: "bgp", 187: "isis", 188: "ospf", 189: "rip", 192: "eigrp",
}
ROUTE_TYPES = {
    0: "none", 2: "local", 3: "broadcast", 4: "anycast", 5: "multicast", 6: "blackhole",
    7: "unreachable", 8: "prohibit", 9: "throw", 10: "nat", 11: "xresolve",
}
SCOPE_NAMES = {0: "global", 200: "site", 253: "link", 254: "host", 255: "nowhere"}
ROUTE_FLAGS = (
    (0x1, "dead"), (0x4, "onlink"), (0x2, "pervasive"), (0x8, "offload"), (0x40, "trap"),
    (0x100, "notify"), (0x10, "linkdown"), (0x20, "unresolved"), (0x4000, "rt_offload"),
    (0x8000, "rt_trap"), (0x20000000, "rt_offload_failed"),
)
ROUTE_PREFS = {0: "medium", 1: "high", 3: "low"}
FIB_RULE_INVERT = 0x2
FIB_RULE_IIF_DETACHED = 0x8
FIB_RULE_OIF_DETACHED = 0x10
FR_ACT_TO_TBL, FR_ACT_GOTO, FR_ACT_NOP = 1, 2, 3
RTPROT_KERNEL, RTPROT_BOOT = 2, 3
RT_TABLE_MAIN = 254
RTN_UNICAST = 1
MAX_PREFIX = {socket.AF_INET: 32, socket.AF_INET6: 128}
VERSIONS = {socket.AF_INET: 4, socket.AF_INET6: 6}

Message = Any  # a pyroute2 netlink message: msg["field"], msg.get_attr("NAME")


def table_name(number: int) -> str:
    return TABLE_NAMES.get(number, str(number))


def protocol_name(number: int) -> str:
    return PROTOCOL_NAMES.get(number, str(number))


def table_of(msg: Message, attr: str) -> int:
    """The table id: the 32-bit attribute when present, else the 8-bit header field."""
    value = msg.get_attr(attr)
    return int(value) if value is not None else int(msg["table"])


def prefix_text(address: str | None, length: int, family: int, empty: str) -> str:
    """`default`/`all` for /0, a bare address for a host, otherwise ADDRESS/LENGTH."""
    if address is None:
        return f"0/{length}" if length else empty
    return address if length == MAX_PREFIX.get(socket.AddressFamily(family), length) else f"{address}/{length}"


def rule_json(msg: Message) -> dict[str, Any]:
    """One `ip -j rule` object, plus "family" ("inet"/"inet6") because one dump holds both."""
    family = msg["family"]
    data: dict[str, Any] = {"family": "inet6" if family == socket.AF_INET6 else "inet"}
    data["priority"] = msg.get_attr("FRA_PRIORITY") or 0
    if msg["flags"] & FIB_RULE_INVERT:
        data["not"] = None
    src = msg.get_attr("FRA_SRC")
    if src is not None:
        data["src"] = src
        if msg["src_len"] != MAX_PREFIX.get(family):
            data["srclen"] = msg["src_len"]
    else:
        data["src"] = f"0/{msg['src_len']}" if msg["src_len"] else "all"
    dst = msg.get_attr("FRA_DST")
    if dst is not None:
        data["dst"] = dst
        if msg["dst_len"] != MAX_PREFIX.get(family):
            data["dstlen"] = msg["dst_len"]
    if msg["tos"]:
        data["tos"] = hex(msg["tos"])
    fwmark, fwmask = msg.get_attr("FRA_FWMARK"), msg.get_attr("FRA_FWMASK")
    if fwmark is not None or fwmask is not None:
        data["fwmark"] = hex(fwmark or 0)
        if fwmask is not None and fwmask != 0xFFFFFFFF:
            data["fwmask"] = hex(fwmask)
    for attr, key, detached in (("FRA_IIFNAME", "iif", FIB_RULE_IIF_DETACHED), ("FRA_OIFNAME", "oif", FIB_RULE_OIF_DETACHED)):
        name = msg.get_attr(attr)
        if name is not None:
            data[key] = name
            if msg["flags"] & detached:
                data[f"{key}_detached"] = None
    if msg.get_attr("FRA_IP_PROTO"):
        data["ipproto"] = msg.get_attr("FRA_IP_PROTO")
    for attr, key in (("FRA_SPORT_RANGE", "sport"), ("FRA_DPORT_RANGE", "dport"), ("FRA_UID_RANGE", "uid")):
        if msg.get_attr(attr) is not None:
            start, _, end = str(msg.get_attr(attr)).partition(":")
            data[f"{key}_start"], data[f"{key}_end"] = int(start), int(end or start)
    if msg.get_attr("FRA_TUN_ID"):
        data["tun_id"] = msg.get_attr("FRA_TUN_ID")
    if msg.get_attr("FRA_L3MDEV"):
        data["l3mdev"] = None
    table = table_of(msg, "FRA_TABLE")
    if table:
        data["table"] = table_name(table)
        suppress = msg.get_attr("FRA_SUPPRESS_PREFIXLEN")
        if suppress is not None and suppress != 0xFFFFFFFF:
            data["suppress_prefixlen"] = suppress
    action = msg["action"]
    if action == FR_ACT_GOTO:
        data["goto"] = msg.get_attr("FRA_GOTO") or 0
    elif action == FR_ACT_NOP:
        data["action"] = "nop"
    elif action != FR_ACT_TO_TBL:
        data["action"] = ROUTE_TYPES.get(action, str(action))
    protocol = msg.get_attr("FRA_PROTOCOL")
    if protocol and protocol != RTPROT_KERNEL:
        data["protocol"] = protocol_name(protocol)
    return data


def route_json(msg: Message, ifname: Callable[[int], str]) -> dict[str, Any]:
    """One `ip -j route show table all` object, plus "family" ("inet"/"inet6")."""
    family = msg["family"]
    data: dict[str, Any] = {"family": "inet6" if family == socket.AF_INET6 else "inet"}
    if msg["type"] != RTN_UNICAST:
        data["type"] = ROUTE_TYPES.get(msg["type"], str(msg["type"]))
    data["dst"] = prefix_text(msg.get_attr("RTA_DST"), msg["dst_len"], family, "default")
    if msg.get_attr("RTA_SRC") is not None:
        data["from"] = prefix_text(msg.get_attr("RTA_SRC"), msg["src_len"], family, "default")
    if msg["tos"]:
        data["tos"] = hex(msg["tos"])
    gateway = msg.get_attr("RTA_GATEWAY")
    if gateway is not None:
        data["gateway"] = gateway
    oif = msg.get_attr("RTA_OIF")
    if oif is not None:
        data["dev"] = ifname(oif)
    table = table_of(msg, "RTA_TABLE")
    if table != RT_TABLE_MAIN:
        data["table"] = table_name(table)
    if msg["proto"] != RTPROT_BOOT:
        data["protocol"] = protocol_name(msg["proto"])
    if msg["scope"] != 0:
        data["scope"] = SCOPE_NAMES.get(msg["scope"], str(msg["scope"]))
    prefsrc = msg.get_attr("RTA_PREFSRC")
    if prefsrc is not None:
        data["prefsrc"] = prefsrc
    metric = msg.get_attr("RTA_PRIORITY")
    if metric is not None:
        data["metric"] = metric
    flow = msg.get_attr("RTA_FLOW")
    if flow:  # realms, as `ip -j` prints them: what `meta rtclassid` reads (`compile.bound`)
        data["flow"] = {"to": str(flow & 0xFFFF)}
    data["flags"] = _flags(msg["flags"])
    multipath = msg.get_attr("RTA_MULTIPATH")
    if multipath:
        data["nexthops"] = [_nexthop(hop, ifname) for hop in multipath]
    pref = msg.get_attr("RTA_PREF")
    if pref is not None:
        data["pref"] = ROUTE_PREFS.get(pref, str(pref))
    return data


def _nexthop(hop: Message, ifname: Callable[[int], str]) -> dict[str, Any]:
    data: dict[str, Any] = {}
    gateway = hop.get_attr("RTA_GATEWAY")
    if gateway is not None:
        data["gateway"] = gateway
    data["dev"] = ifname(hop["oif"])
    data["weight"] = hop["hops"] + 1
    data["flags"] = _flags(hop["flags"])
    return data


def _flags(value: int) -> list[str]:
    return [name for bit, name in ROUTE_FLAGS if value & bit]
