"""How the constants of an nft JSON listing become values the interpreter can compare.

nft prints a constant in the form of the datatype of the expression it is compared
with: an address as text, a prefix as `{"prefix": ...}`, `ct state` as names, a port
as a number, `icmp type` as a name. Turning each into an integer (or an inclusive
`Span` of integers) once, when the ruleset is compiled, is what lets a packet be
matched with a comparison or a bisect instead of re-parsing text per packet.
"""

from __future__ import annotations

import socket
from typing import Any, NamedTuple

from markroute.sim.packet import (
    CT_ESTABLISHED,
    CT_INVALID,
    CT_NEW,
    CT_RELATED,
    CT_UNTRACKED,
)
from markroute.sim.words import plain
from markroute.values import DSCP_CLASSES, PROTOCOLS


class Span(NamedTuple):
    """An inclusive range of integers: a prefix, an `a-b` range or a single value."""

    lo: int
    hi: int


class UnsupportedValue(ValueError):
    """A constant the simulator cannot turn into a comparable value."""


CT_STATES = {
    "invalid": CT_INVALID, "established": CT_ESTABLISHED, "related": CT_RELATED,
    "new": CT_NEW, "untracked": CT_UNTRACKED,
}
CT_DIRECTIONS = {"original": 0, "reply": 1}
CT_STATUS = {
    "expected": 1, "seen-reply": 2, "assured": 4, "confirmed": 8, "snat": 16, "dnat": 32, "dying": 512,
}
TCP_FLAGS = {"fin": 1, "syn": 2, "rst": 4, "psh": 8, "ack": 16, "urg": 32, "ecn": 64, "cwr": 128}
ICMP_TYPES = {
    "echo-reply": 0, "destination-unreachable": 3, "source-quench": 4, "redirect": 5, "echo-request": 8,
    "router-advertisement": 9, "router-solicitation": 10, "time-exceeded": 11, "parameter-problem": 12,
    "timestamp-request": 13, "timestamp-reply": 14, "info-request": 15, "info-reply": 16,
    "address-mask-request": 17, "address-mask-reply": 18,
}
ICMPV6_TYPES = {
    "destination-unreachable": 1, "packet-too-big": 2, "time-exceeded": 3, "parameter-problem": 4,
    "echo-request": 128, "echo-reply": 129, "mld-listener-query": 130, "mld-listener-report": 131,
    "mld-listener-done": 132, "mld-listener-reduction": 132, "nd-router-solicit": 133,
    "nd-router-advert": 134, "nd-neighbor-solicit": 135, "nd-neighbor-advert": 136, "nd-redirect": 137,
    "router-renumbering": 138, "ind-neighbor-solicit": 141, "ind-neighbor-advert": 142,
    "mld2-listener-report": 143,
}
ICMP_CODES = {
    "net-unreachable": 0, "host-unreachable": 1, "prot-unreachable": 2, "port-unreachable": 3,
    "frag-needed": 4, "net-prohibited": 9, "host-prohibited": 10, "admin-prohibited": 13,
}
ICMPV6_CODES = {
    "no-route": 0, "admin-prohibited": 1, "addr-unreachable": 3, "port-unreachable": 4,
    "policy-fail": 5, "reject-route": 6,
}
FIB_TYPES = {
    "unspec": 0, "unicast": 1, "local": 2, "broadcast": 3, "anycast": 4, "multicast": 5,
    "blackhole": 6, "unreachable": 7, "prohibit": 8, "throw": 9, "nat": 10, "xresolve": 11,
}
PKT_TYPES = {"host": 0, "broadcast": 1, "multicast": 2, "other": 3}
NF_PROTOS = {"ipv4": 4, "ipv6": 6}
ETHER_TYPES = {"ip": 0x0800, "arp": 0x0806, "ip6": 0x86DD, "vlan": 0x8100, "8021ad": 0x88A8}
L4_PROTOCOLS = {**PROTOCOLS, "ipv6-icmp": 58, "gre": 47, "esp": 50, "ah": 51, "udplite": 136, "dccp": 33,
                "ipip": 4, "ipv6": 41, "igmp": 2, "ospf": 89, "vrrp": 112, "l2tp": 115}

NAMED = {
    "ct_state": CT_STATES, "ct_dir": CT_DIRECTIONS, "ct_status": CT_STATUS, "tcp_flag": TCP_FLAGS,
    "icmp_type": ICMP_TYPES, "icmpv6_type": ICMPV6_TYPES, "icmp_code": ICMP_CODES, "icmpv6_code": ICMPV6_CODES,
    "fib_addrtype": FIB_TYPES, "pkttype": PKT_TYPES, "nf_proto": NF_PROTOS, "ether_type": ETHER_TYPES,
    "inet_proto": L4_PROTOCOLS, "dscp": DSCP_CLASSES,
}
BITMASK_TYPES = frozenset({"ct_state", "ct_status", "tcp_flag"})
ADDRESS_BITS = {"ipv4_addr": 32, "ipv6_addr": 128}
STRING_TYPES = frozenset({"ifname", "iface_index", "ether_addr", "cgroupsv2"})  # cgroups: paths (`match/cgroup.py`)


def parse(dtype: str | tuple[str, ...], item: Any) -> Any:
    """One constant (or one set element key) in the comparable form for `dtype`."""
    if isinstance(item, dict) and "elem" in item:
        item = item["elem"].get("val")
    if isinstance(dtype, tuple):
        if not isinstance(item, dict) or "concat" not in item or len(item["concat"]) != len(dtype):
            raise UnsupportedValue(f"{plain(item)} is not a concatenation of {len(dtype)} values")
        return tuple(parse(part, value) for part, value in zip(dtype, item["concat"]))
    if isinstance(item, dict):
        kind, body = next(iter(item.items()))
        if kind == "prefix":
            return _prefix(dtype, body)
        if kind == "range":
            low, high = (_scalar(dtype, value) for value in body)
            if not isinstance(low, int) or not isinstance(high, int):
                raise UnsupportedValue(f"range of {dtype} values")
            return Span(low, high)
        raise UnsupportedValue(f"{kind} expression as a value")
    if isinstance(item, list):
        if dtype not in BITMASK_TYPES:
            raise UnsupportedValue(f"list of values for {dtype}")
        bits = 0
        for name in item:
            bits |= _scalar(dtype, name)
        return bits
    return _scalar(dtype, item)


def _prefix(dtype: str, body: dict[str, Any]) -> Span:
    bits = ADDRESS_BITS.get(dtype)
    if bits is None:
        raise UnsupportedValue(f"prefix of a {dtype} value")
    length = int(body["len"])
    if not 0 <= length <= bits:
        raise UnsupportedValue(f"prefix length {length} of a {dtype} value")
    host = (1 << (bits - length)) - 1
    first = _address(dtype, body["addr"]) & ~host
    return Span(first, first | host)


def _address(dtype: str, text: Any) -> int:
    """An address as an integer; inet_pton, because sets of 100,000 prefixes parse every one."""
    family = socket.AF_INET if dtype == "ipv4_addr" else socket.AF_INET6
    try:
        return int.from_bytes(socket.inet_pton(family, str(text)), "big")
    except (OSError, ValueError):
        raise UnsupportedValue(f"'{text}' is not an {dtype}") from None


def _scalar(dtype: str, item: Any) -> Any:
    if isinstance(item, bool):
        if dtype == "boolean":
            return item
        return int(item)
    if dtype in ADDRESS_BITS:
        return _address(dtype, item)
    if dtype in STRING_TYPES:
        if not isinstance(item, str):
            raise UnsupportedValue(f"{plain(item)} as {dtype}")
        return item.lower() if dtype == "ether_addr" else item
    if isinstance(item, int):
        return item
    text = str(item)
    names = NAMED.get(dtype)
    if names is not None and text in names:
        return names[text]
    if dtype == "inet_service":
        try:
            return socket.getservbyname(text)
        except OSError:
            raise UnsupportedValue(f"unknown service '{text}'") from None
    if dtype == "inet_proto":
        try:
            return socket.getprotobyname(text)
        except OSError:
            raise UnsupportedValue(f"unknown protocol '{text}'") from None
    try:
        return int(text, 0)
    except ValueError:
        raise UnsupportedValue(f"'{text}' is not a {dtype} value") from None
