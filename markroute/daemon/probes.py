"""Probes that can only leave through the uplink they test: ICMP echo, TCP connect, ARP.

Every probe socket is pinned to its uplink three ways, so no policy, balance group or
failover can send it elsewhere: the socket mark is the uplink's mark (its ip rule picks
the uplink's table, and markroute's output chain leaves packets that already carry a
mark alone), SO_BINDTODEVICE restricts the route lookup and the packet to the uplink's
interface, and the source is the uplink's own address. ARP needs none of this: it is
sent on the interface itself (AF_PACKET).

All sockets are non-blocking and serve the daemon's `Reactor`; an answer is reported as
`on_answer(target, token, rtt)`. A probe that gets no answer is simply never reported:
the caller owns the timeout and calls `forget`. Raw and packet sockets ask the kernel
for receive timestamps (SO_TIMESTAMPNS), so an RTT stays right even if the daemon was
busy when the answer arrived.
"""

from __future__ import annotations

import errno
import ipaddress
import secrets
import selectors
import socket
import struct
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from markroute.daemon.reactor import Reactor

SO_MARK = 36
SO_BINDTODEVICE = 25
SO_TIMESTAMPNS = 35
ICMP6_FILTER = 1
ETH_P_ARP = 0x0806
BROADCAST = b"\xff" * 6
ECHO = {4: (8, 0), 6: (128, 129)}  # (request type, reply type)
PAYLOAD = b"markroute-probe!"
ARP_FORMAT = struct.Struct("!HHBBH6s4s6s4s")

Answer = Callable[[str, int, float], None]


@dataclass(frozen=True)
class Egress:
    """Where an uplink's probes leave: its interface (name and index), mark, MAC and addresses."""

    interface: str
    index: int
    mark: int
    mac: str = ""
    sources: Mapping[int, str] = field(default_factory=dict)  # IP version -> address


class Prober(Protocol):
    def send(self, target: str, token: int) -> None:
        """Send one probe; OSError when it cannot even leave (no address, interface gone)."""

    def forget(self, target: str, token: int) -> None:
        """The caller gave up waiting for this probe."""

    def close(self) -> None: ...


def version_of(address: str) -> int:
    return ipaddress.ip_address(address).version


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


def checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    total = (total >> 16) + (total & 0xFFFF)
    total += total >> 16
    return ~total & 0xFFFF


class IcmpProber:
    """Echo requests of one IP version through one uplink, on one raw socket.

    The raw socket sees every echo reply arriving on the interface; the identifier
    (random per prober) and the sequence number (the round's token) pick ours. IPv6
    raw sockets get a filter so that only echo replies wake the daemon.
    """

    def __init__(self, reactor: Reactor, egress: Egress, version: int, on_answer: Answer) -> None:
        self.reactor = reactor
        self.version = version
        self.egress = egress
        self.on_answer = on_answer
        self.ident = secrets.randbits(16)
        self.sent: dict[tuple[str, int], float] = {}
        if version == 4:
            self.sock = pinned(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP, egress, 4)
        else:
            self.sock = pinned(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6, egress, 6)
            blocked = [0xFFFFFFFF] * 8
            reply = ECHO[6][1]
            blocked[reply >> 5] &= ~(1 << (reply & 31))
            self.sock.setsockopt(socket.IPPROTO_ICMPV6, ICMP6_FILTER, struct.pack("8I", *blocked))
        self.sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        reactor.watch(self.sock, selectors.EVENT_READ, self.readable)

    def send(self, target: str, token: int) -> None:
        sequence = token & 0xFFFF
        request = ECHO[self.version][0]
        header = struct.pack("!BBHHH", request, 0, 0, self.ident, sequence)
        packet = header + PAYLOAD
        if self.version == 4:  # the kernel computes ICMPv6 checksums itself
            packet = header[:2] + struct.pack("!H", checksum(packet)) + header[4:] + PAYLOAD
        self.sent[(target, sequence)] = time.time()
        try:
            self.sock.sendto(packet, address_tuple(target, 0, self.egress, self.version))
        except OSError:
            del self.sent[(target, sequence)]
            raise

    def forget(self, target: str, token: int) -> None:
        self.sent.pop((target, token & 0xFFFF), None)

    def readable(self) -> None:
        while True:
            try:
                data, ancillary, _, peer = self.sock.recvmsg(2048, socket.CMSG_SPACE(16))
            except OSError:  # drained (EAGAIN), or an error the next probe will meet as well
                return
            start = (data[0] & 0x0F) * 4 if self.version == 4 else 0
            if len(data) < start + 8:
                continue
            kind, _, _, ident, sequence = struct.unpack("!BBHHH", data[start:start + 8])
            if kind != ECHO[self.version][1] or ident != self.ident:
                continue
            target = str(ipaddress.ip_address(peer[0].split("%")[0]))
            sent = self.sent.pop((target, sequence), None)
            if sent is not None:
                self.on_answer(target, sequence, max(0.0, received_at(ancillary) - sent))

    def close(self) -> None:
        self.reactor.unwatch(self.sock)
        self.sock.close()


class TcpProber:
    """A TCP connect per probe: an accepted connection or a refusal proves the path works.

    Sockets close with a reset (SO_LINGER 0), so probing ten times a second leaves no
    TIME_WAIT behind.
    """

    def __init__(self, reactor: Reactor, egress: Egress, on_answer: Answer) -> None:
        self.reactor = reactor
        self.egress = egress
        self.on_answer = on_answer
        self.pending: dict[tuple[str, int], tuple[socket.socket, float]] = {}

    def send(self, target: str, token: int) -> None:
        host, port = split_target(target)
        version = version_of(host)
        family = socket.AF_INET6 if version == 6 else socket.AF_INET
        sock = pinned(family, socket.SOCK_STREAM, 0, self.egress, version)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        code = sock.connect_ex(address_tuple(host, port, self.egress, version))
        if code not in (0, errno.EINPROGRESS):
            sock.close()
            raise OSError(code, f"connect to {target}: {errno.errorcode.get(code, code)}")
        key = (target, token)
        self.pending[key] = (sock, time.time())
        self.reactor.watch(sock, selectors.EVENT_WRITE, lambda: self.connected(key))

    def connected(self, key: tuple[str, int]) -> None:
        sock, sent = self.pending.pop(key)
        self.reactor.unwatch(sock)
        code = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        sock.close()
        if code in (0, errno.ECONNREFUSED):
            self.on_answer(key[0], key[1], time.time() - sent)

    def forget(self, target: str, token: int) -> None:
        entry = self.pending.pop((target, token), None)
        if entry is not None:
            self.reactor.unwatch(entry[0])
            entry[0].close()

    def close(self) -> None:
        for target, token in list(self.pending):
            self.forget(target, token)


class ArpProber:
    """ARP requests for an IPv4 address on the uplink's own link, usually its gateway.

    It proves the gateway is alive even when it does not answer pings, but says
    nothing about what lies beyond it.
    """

    def __init__(self, reactor: Reactor, egress: Egress, on_answer: Answer) -> None:
        self.reactor = reactor
        self.egress = egress
        self.on_answer = on_answer
        self.sent: dict[tuple[str, int], float] = {}
        self.sock = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(ETH_P_ARP))
        try:
            self.sock.setblocking(False)
            self.sock.bind((egress.interface, ETH_P_ARP))
            self.sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        except BaseException:
            self.sock.close()
            raise
        reactor.watch(self.sock, selectors.EVENT_READ, self.readable)

    def send(self, target: str, token: int) -> None:
        source = self.egress.sources.get(4)
        if source is None or not self.egress.mac:
            raise OSError(errno.EADDRNOTAVAIL, f"{self.egress.interface} has no IPv4 address or MAC for ARP")
        request = ARP_FORMAT.pack(
            1, 0x0800, 6, 4, 1,
            bytes.fromhex(self.egress.mac.replace(":", "")), socket.inet_aton(source),
            b"\0" * 6, socket.inet_aton(target),
        )
        self.sent[(target, token)] = time.time()
        try:
            self.sock.sendto(request, (self.egress.interface, ETH_P_ARP, 0, 0, BROADCAST))
        except OSError:
            del self.sent[(target, token)]
            raise

    def forget(self, target: str, token: int) -> None:
        self.sent.pop((target, token), None)

    def readable(self) -> None:
        while True:
            try:
                data, ancillary, _, _ = self.sock.recvmsg(2048, socket.CMSG_SPACE(16))
            except OSError:
                return
            if len(data) < ARP_FORMAT.size:
                continue
            *_, operation, _, sender, _, _ = ARP_FORMAT.unpack(data[:ARP_FORMAT.size])
            if operation != 2:
                continue
            target = socket.inet_ntoa(sender)
            arrived = received_at(ancillary)
            for key in [k for k in self.sent if k[0] == target]:
                self.on_answer(target, key[1], max(0.0, arrived - self.sent.pop(key)))

    def close(self) -> None:
        self.reactor.unwatch(self.sock)
        self.sock.close()
