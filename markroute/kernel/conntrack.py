"""Tracked connections by the uplink bits of their connection mark: counting them,
deleting those of one uplink (how the daemon moves the flows of an uplink that died),
and listing them with their labels, counters and age (`markroute flows`)."""

from __future__ import annotations

import socket
import struct
from collections import Counter
from dataclasses import dataclass
from typing import Any

from markroute.kernel import KernelError, nftnetlink

FAMILIES = (socket.AF_INET, socket.AF_INET6)
NFNL_SUBSYS_CTNETLINK = 1  # nfnetlink.h, nfnetlink_conntrack.h
IPCTNL_MSG_CT_DELETE = 2
CTA_MARK, CTA_MARK_MASK = 8, 21


def count_by_mark(mask: int) -> Counter[int]:
    """How many conntrack entries (IPv4 and IPv6) carry each value of `ct mark & MASK`."""
    from pyroute2 import NetlinkError
    from pyroute2.conntrack import Conntrack

    counts: Counter[int] = Counter()
    for family in FAMILIES:
        try:
            with Conntrack(nfgen_family=family) as ct:
                for entry in ct.dump_entries():
                    counts[(entry.mark or 0) & mask] += 1
        except NetlinkError as exc:
            raise KernelError(f"cannot read the conntrack table: {exc}") from exc
    return counts


def delete_by_mark(mark: int, mask: int) -> None:
    """Delete every entry (IPv4 and IPv6) whose `ct mark & MASK` equals MARK, and no other.

    One netlink request per family, both in one datagram (`nftnetlink.acknowledged`):
    the kernel filters by mark and mask itself, so the entries of other uplinks (and
    unmarked ones) are never even looked at here. The next packet of a deleted flow is
    a new connection and is routed afresh. Sent directly rather than through pyroute2's
    Conntrack: its two sockets took 1 to 5 ms, on the failover path.
    """
    if not mark or mark & ~mask:
        raise ValueError(f"mark {mark:#x} is not a non-zero value inside mask {mask:#x}")
    filter_by = ((CTA_MARK, struct.pack("!I", mark)), (CTA_MARK_MASK, struct.pack("!I", mask)))
    nftnetlink.acknowledged((((NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_DELETE, family, filter_by)
                             for family in FAMILIES), f"deleting the connections marked {mark:#x}/{mask:#x}")


@dataclass(frozen=True)
class Connection:
    """One tracked connection as `markroute flows` shows it.

    `src`..`dport` are the original direction (what the first packet carried);
    `reply_src`..`reply_dport` the reply direction, which differs when NAT rewrote the
    connection. `packets`/`octets` (both directions) are None unless the namespace
    counts them (`nf_conntrack_acct`), `started` (Unix time) unless it stamps them
    (`nf_conntrack_timestamp`); markroute's plan turns both on unless
    `settings.connection_records` is false.
    """

    version: int
    proto: int
    src: str
    dst: str
    sport: int | None
    dport: int | None
    reply_src: str
    reply_dst: str
    reply_sport: int | None
    reply_dport: int | None
    mark: int
    labels: int
    packets: int | None
    octets: int | None
    started: float | None
    timeout: int | None
    state: str | None

    @property
    def snat(self) -> str | None:
        """The source address NAT gave the connection, when it changed it."""
        return self.reply_dst if self.reply_dst != self.src else None

    @property
    def dnat(self) -> str | None:
        """The destination NAT sent the connection to, when it changed it."""
        return self.reply_src if self.reply_src != self.dst else None


def connections() -> list[Connection]:
    """Every tracked connection (IPv4 and IPv6) with its mark, labels, counters and start time."""
    from pyroute2 import NetlinkError
    from pyroute2.netlink.nfnetlink.nfctsocket import NFCTSocket

    found: list[Connection] = []
    for family in FAMILIES:
        try:
            with NFCTSocket(nfgen_family=family) as ct:
                found += [_connection(msg, 4 if family == socket.AF_INET else 6) for msg in ct.dump()]
        except NetlinkError as exc:
            raise KernelError(f"cannot read the conntrack table: {exc}") from exc
    return found


TCP_STATES = ("none", "syn_sent", "syn_recv", "established", "fin_wait", "close_wait", "last_ack",
              "time_wait", "close", "syn_sent2")


def _connection(msg: Any, version: int) -> Connection:
    orig = _tuple(msg.get_attr("CTA_TUPLE_ORIG"), version)
    reply = _tuple(msg.get_attr("CTA_TUPLE_REPLY"), version)
    counters = [msg.get_attr(name) for name in ("CTA_COUNTERS_ORIG", "CTA_COUNTERS_REPLY")]
    packets = octets = None
    if all(c is not None for c in counters):
        packets = sum(c.get_attr("CTA_COUNTERS_PACKETS") or 0 for c in counters)
        octets = sum(c.get_attr("CTA_COUNTERS_BYTES") or 0 for c in counters)
    stamp = msg.get_attr("CTA_TIMESTAMP")
    start = stamp.get_attr("CTA_TIMESTAMP_START") if stamp is not None else None
    tcp = msg.get_nested("CTA_PROTOINFO", "CTA_PROTOINFO_TCP")
    tcp_state = tcp.get_attr("CTA_PROTOINFO_TCP_STATE") if tcp is not None else None
    labels = msg.get_attr("CTA_LABELS")
    return Connection(
        version=version,
        proto=orig[0],
        src=orig[1], dst=orig[2], sport=orig[3], dport=orig[4],
        reply_src=reply[1], reply_dst=reply[2], reply_sport=reply[3], reply_dport=reply[4],
        mark=msg.get_attr("CTA_MARK") or 0,
        labels=labels if isinstance(labels, int) else 0,
        packets=packets,
        octets=octets,
        started=start / 1e9 if start else None,
        timeout=msg.get_attr("CTA_TIMEOUT"),
        state=TCP_STATES[tcp_state] if tcp_state is not None and tcp_state < len(TCP_STATES) else None,
    )


def _tuple(nested: Any, version: int) -> tuple[int, str, str, int | None, int | None]:
    """(protocol, source, destination, source port, destination port) of one direction."""
    ip = nested.get_attr("CTA_TUPLE_IP")
    proto = nested.get_attr("CTA_TUPLE_PROTO")
    prefix = "CTA_IP_V4_" if version == 4 else "CTA_IP_V6_"
    return (
        proto.get_attr("CTA_PROTO_NUM"),
        ip.get_attr(prefix + "SRC"),
        ip.get_attr(prefix + "DST"),
        proto.get_attr("CTA_PROTO_SRC_PORT"),
        proto.get_attr("CTA_PROTO_DST_PORT"),
    )
