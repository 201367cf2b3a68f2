"""Probe sockets pinned to their uplink, and the helpers every method's prober shares.

Every probe socket is pinned to its uplink three ways, so no policy, balance group or
failover can send it elsewhere: the socket mark is the uplink's mark (its ip rule picks
the uplink's table, and markroute's output chain leaves packets that already carry a
mark alone), SO_BINDTODEVICE restricts the route lookup and the packet to the uplink's
interface, and the source is the uplink's own address. ARP needs none of this: it is
sent on the interface itself (AF_PACKET).

All sockets are non-blocking and serve the daemon's loop; an answer is reported as
`on_answer(target, token, rtt)`. A probe that gets no answer is simply never reported:
the caller owns the timeout and calls `forget`. Raw and packet sockets ask the kernel
for receive timestamps (SO_TIMESTAMPNS), so an RTT stays right even if the daemon was
busy when the answer arrived.
"""

from __future__ import annotations

import errno
import ipaddress
import socket
import struct
import time
from typing import Any

from markroute.probes.method import Egress, Loop

SO_MARK = 36
SO_BINDTODEVICE = 25
SO_TIMESTAMPNS = 35


def version_of(address: str) -> int:
    return ipaddress.ip_address(address).version


def canonical_address(target: str) -> str:
    """An address as the kernel writes it (2001:DB8::01 -> 2001:db8::1)."""
    return str(ipaddress.ip_address(target))


def split_target(target: str) -> tuple[str, int]:
    """`host:port` or `[v6]:port` into its parts (config validation made sure it parses)."""
    if target.startswith("["):
        host, _, port = target[1:].partition("]:")
    else:
        host, _, port = target.rpartition(":")
    return host, int(port)


def pinned(family: int, kind: int, proto: int, egress: Egress, version: int) -> socket.socket:
    """A non-blocking socket that can only use EGRESS: its mark, its device, its source address."""
    sock = socket.socket(family, kind, proto)
    try:
        sock.setblocking(False)
        sock.setsockopt(socket.SOL_SOCKET, SO_MARK, egress.mark)
        sock.setsockopt(socket.SOL_SOCKET, SO_BINDTODEVICE, egress.interface.encode())
        source = egress.sources.get(version)
        if source is None:
            raise OSError(errno.EADDRNOTAVAIL, f"{egress.interface} has no IPv{version} address")
        sock.bind(address_tuple(source, 0, egress, version))
    except BaseException:
        sock.close()
        raise
    return sock


def address_tuple(address: str, port: int, egress: Egress, version: int) -> tuple[Any, ...]:
    """A sockaddr; IPv6 link-local addresses (a gateway's, typically) need the interface as scope."""
    if version == 6:
        scope = egress.index if ipaddress.ip_address(address).is_link_local else 0
        return (address, port, 0, scope)
    return (address, port)


def received_at(ancillary: list[tuple[int, int, bytes]]) -> float:
    """The kernel's receive time of a packet (SO_TIMESTAMPNS), or now if it gave none."""
    for level, kind, data in ancillary:
        if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(data) >= 16:
            seconds, nanoseconds = struct.unpack("qq", data[:16])
            return float(seconds + nanoseconds / 1e9)
    return time.time()


def drop_connection(loop: Loop, pending: dict[tuple[str, int], Any], target: str, token: int) -> None:
    """Forget one connecting probe (tcp, http): PENDING maps (target, token) to a tuple whose
    first item is its socket, which stops being watched and is closed."""
    entry = pending.pop((target, token), None)
    if entry is not None:
        loop.unwatch(entry[0])
        entry[0].close()
