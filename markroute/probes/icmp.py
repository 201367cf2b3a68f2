"""`method: icmp` (the default): echo requests, by default to the uplink's gateway(s)."""

from __future__ import annotations

import ipaddress
import secrets
import selectors
import socket
import struct
import time

from markroute.model import HealthCheck
from markroute.probes.method import Answer, Egress, Loop, Method, any_targets, no_expect
from markroute.probes.sockets import (
    SO_TIMESTAMPNS,
    address_tuple,
    canonical_address,
    pinned,
    received_at,
    version_of,
)
from markroute.values import parse_probe_target

ICMP6_FILTER = 1
ECHO = {4: (8, 0), 6: (128, 129)}  # (request type, reply type)
PAYLOAD = b"markroute-probe!"


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

    def __init__(self, loop: Loop, egress: Egress, version: int, on_answer: Answer) -> None:
        self.loop = loop
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
        loop.watch(self.sock, selectors.EVENT_READ, self.readable)

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
        self.loop.unwatch(self.sock)
        self.sock.close()


def prober_key(target: str) -> str:
    """One raw socket per IP version."""
    return f"icmp{version_of(target)}"


def open_prober(loop: Loop, egress: Egress, key: str, on_answer: Answer, check: HealthCheck) -> IcmpProber:
    return IcmpProber(loop, egress, int(key.removeprefix("icmp")), on_answer)


METHOD = Method(
    name="icmp",
    parse_target=parse_probe_target,
    invalid_targets=any_targets,
    default_gateways=(4, 6),
    canonical=canonical_address,
    prober_key=prober_key,
    parse_expect=no_expect,
    probe_bytes=lambda target: 2 * ((40 if ":" in target else 20) + 8 + len(PAYLOAD)),  # echo and reply
    open_prober=open_prober,
)
