"""The flow a user asks about, and the mutable state of one packet while it is traced.

A `Flow` is the question (`--from --to --proto ...`), validated once so that a typo
becomes a clear message instead of a traceback deep inside the interpreter. A `Packet`
is what the interpreter mutates on its way through hooks, chains and routing: header
fields, marks, the conntrack entry it belongs to and the route it was given. Fields a
user did not give (a source port, a MAC) stay None: reading one raises `Indeterminate`,
so the answer never depends on a value the simulator made up.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Callable

from markroute.match.cgroup import parse_path as parse_cgroup_path
from markroute.match.owner import GROUP, USER
from markroute.values import (
    PORT_PROTOCOLS,
    PROTOCOL_NAMES,
    parse_dscp,
    parse_mac,
    parse_port,
    parse_protocol,
)

ICMP = 1
ICMPV6 = 58
TCP = 6
ECHO_REQUEST = {4: 8, 6: 128}
ECHO_REPLY = {4: 0, 6: 129}
TCP_SYN = 0x02
TCP_ACK = 0x10

# Conntrack state bits as nft's `ct state` reads them (NF_CT_STATE_*_BIT).
CT_INVALID, CT_ESTABLISHED, CT_RELATED, CT_NEW, CT_UNTRACKED = 1, 2, 4, 8, 64


class Indeterminate(Exception):
    """The answer depends on something the simulator does not know or does not model."""

    def __init__(self, what: str, why: str, table: str | None = None) -> None:
        super().__init__(f"{what}: {why}")
        self.what = what
        self.why = why
        self.table = table  # the routing table whose unknown part decides, if that is the reason
        self.where: str | None = None  # the rule (table, chain, handle) that reads it, once known


@dataclass(frozen=True)
class Flow:
    """The first packet of one connection, as the user described it."""

    version: int
    src: int
    dst: int
    proto: int | None = None
    sport: int | None = None
    dport: int | None = None
    iif: str | None = None
    local: bool = False
    mac: str | None = None
    dscp: int = 0
    reply: bool = False
    uid: int | None = None  # owner of the local socket, None: not known
    gid: int | None = None
    cgroup: str | None = None  # cgroup v2 path of the local socket, None: not known

    def to_json(self) -> dict[str, Any]:
        return {
            "from": address_text(self.version, self.src),
            "to": address_text(self.version, self.dst),
            "proto": PROTOCOL_NAMES.get(self.proto, self.proto) if self.proto is not None else None,
            "sport": self.sport,
            "dport": self.dport,
            "iif": self.iif,
            "local": self.local,
            "mac": self.mac,
            "dscp": self.dscp,
            "reply": self.reply,
            "user": self.uid,
            "group": self.gid,
            "cgroup": self.cgroup,
        }


def make_flow(
    src: str,
    dst: str,
    proto: str | int | None = None,
    sport: str | int | None = None,
    dport: str | int | None = None,
    iif: str | None = None,
    local: bool = False,
    mac: str | None = None,
    dscp: str | int | None = None,
    reply: bool = False,
    uid: str | int | None = None,
    gid: str | int | None = None,
    cgroup: str | None = None,
) -> Flow:
    """A validated `Flow` from user input; raises ValueError with a message fit for that user."""
    source = _address(src, "--from")
    destination = _address(dst, "--to")
    if source.version != destination.version:
        raise ValueError(f"--from {source} is IPv{source.version} but --to {destination} is IPv{destination.version}")
    if local and iif is not None:
        raise ValueError("--iif and --local exclude each other: a packet either arrives on an interface or is sent by this host")
    if not local and iif is None:
        raise ValueError("say where the packet comes from: --iif IF (it arrives on IF) or --local (this host sends it)")
    number = parse_protocol(proto) if proto is not None else None
    if number == ICMP and source.version == 6:
        raise ValueError("--proto icmp is IPv4; use icmpv6 for IPv6")
    if number == ICMPV6 and source.version == 4:
        raise ValueError("--proto icmpv6 is IPv6; use icmp for IPv4")
    ports: list[int | None] = []
    for value, option in ((sport, "--sport"), (dport, "--dport")):
        if value is None:
            ports.append(None)
            continue
        if number is None or number not in PORT_PROTOCOLS:
            raise ValueError(f"{option} needs --proto tcp, udp or sctp")
        first, last = parse_port(value)
        if first != last:
            raise ValueError(f"{option} takes one port, not a range")
        ports.append(first)
    if mac is not None and local:
        raise ValueError("--mac describes the sender of an arriving packet; it has no meaning with --local")
    owners = [owner.parse(value) if value is not None else None for owner, value in ((USER, uid), (GROUP, gid))]
    if not local and any(value is not None for value in owners):
        raise ValueError("--user and --group describe the socket of a connection this host sends: give --local")
    if cgroup is not None and not local:
        raise ValueError("--cgroup describes the socket of a connection this host sends: give --local")
    path = _cgroup_path(cgroup) if cgroup is not None else None
    return Flow(
        version=source.version,
        src=int(source),
        dst=int(destination),
        proto=number,
        sport=ports[0],
        dport=ports[1],
        iif=iif,
        local=local,
        mac=parse_mac(mac) if mac is not None else None,
        dscp=parse_dscp(dscp) if dscp is not None else 0,
        reply=reply,
        uid=owners[0],
        gid=owners[1],
        cgroup=path,
    )


def _cgroup_path(text: str) -> str:
    """`--cgroup`: a path like the config's, or "/" (the root); a leading "/" as in /proc/PID/cgroup is fine."""
    stripped = text.strip().strip("/")
    return parse_cgroup_path(stripped) if stripped else ""


def _address(text: str, option: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    try:
        return ipaddress.ip_address(str(text).strip())
    except ValueError:
        raise ValueError(f"{option} '{text}' is not an IP address") from None


@lru_cache(maxsize=65536)
def address_text(version: int, value: int | None) -> str:
    """An address as text; cached, as traces print the same few addresses again and again."""
    if value is None:
        return "(unknown)"
    return str(ipaddress.IPv4Address(value) if version == 4 else ipaddress.IPv6Address(value))


@dataclass
class Conntrack:
    """The connection a packet belongs to: what survives from the first packet to its replies."""

    orig_src: int
    orig_dst: int
    orig_sport: int | None
    orig_dport: int | None
    mark: int = 0
    # NAT bindings, set once by the first packet: (address or None if not known offline, port or None)
    snat: tuple[int | None, int | None] | None = None
    dnat: tuple[int | None, int | None] | None = None
    snat_done: bool = False
    dnat_done: bool = False

    @property
    def reply_src(self) -> int | None:
        return self.dnat[0] if self.dnat else self.orig_dst

    @property
    def reply_dst(self) -> int | None:
        return self.snat[0] if self.snat else self.orig_src


@dataclass
class Packet:
    """One packet on its way through the host; mutated by chains, NAT and routing."""

    version: int
    src: int | None  # None once masqueraded to an address nobody told the simulator
    dst: int | None
    proto: int | None
    sport: int | None
    dport: int | None
    dscp: int
    mac: str | None
    iif: str | None
    local_out: bool
    choose: Callable[[tuple[int, ...], str], int]
    icmp_type: int | None = None
    tcp_flags: int | None = None
    mark: int = 0
    oif: str | None = None
    next_hop: int | None = None
    table: str | None = None
    realm: int = 0  # of the route the packet took: what `meta rtclassid` reads
    uid: int | None = None  # owner of the local socket (None: not known)
    gid: int | None = None
    cgroup: str | None = None  # cgroup v2 path of the local socket ("" the root; None: not known)
    hook: str = ""
    ct: Conntrack | None = None
    ct_state: int = CT_INVALID
    ct_reply: bool = False
    untracked: bool = False
    in_dev: str | None = None  # the hook's input device (None where the hook has none)
    out_dev: str | None = None  # the hook's output device
    policy: str | None = None  # the markroute policy whose rule matched last
    delivered: bool = False  # routed to this host
    source_check: str | None = None  # what source validation (rp_filter) said, once it ran
    nat_request: tuple[str, Any, Any, str] | None = None  # what a NAT statement asked for, applied by its hook

    @classmethod
    def first(cls, flow: Flow, choose: Callable[[tuple[int, ...], str], int]) -> Packet:
        """The first packet of the connection `flow` describes."""
        icmp = ECHO_REQUEST[flow.version] if flow.proto in (ICMP, ICMPV6) else None
        return cls(
            version=flow.version,
            src=flow.src,
            dst=flow.dst,
            proto=flow.proto,
            sport=flow.sport,
            dport=flow.dport,
            dscp=flow.dscp,
            mac=flow.mac,
            iif=None if flow.local else flow.iif,
            local_out=flow.local,
            uid=flow.uid,
            gid=flow.gid,
            cgroup=flow.cgroup,
            choose=choose,
            icmp_type=icmp,
            tcp_flags=TCP_SYN if flow.proto == TCP else None,
        )

    @property
    def src_text(self) -> str:
        return address_text(self.version, self.src)

    @property
    def dst_text(self) -> str:
        return address_text(self.version, self.dst)

    def tos(self) -> int:
        """The TOS bits routing compares (IPv4 keeps only IPTOS_RT_MASK of them)."""
        return (self.dscp << 2) & 0x1C if self.version == 4 else self.dscp << 2
