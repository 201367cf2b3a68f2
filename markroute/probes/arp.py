"""`method: arp`: ARP requests on the uplink's own link, by default for its IPv4 gateway."""

from __future__ import annotations

import errno
import selectors
import socket
import struct
import time

from markroute.model import HealthCheck
from markroute.probes.method import Answer, Egress, Loop, Method, any_targets, no_expect
from markroute.probes.sockets import SO_TIMESTAMPNS, canonical_address, received_at
from markroute.values import parse_probe_target

ETH_P_ARP = 0x0806
BROADCAST = b"\xff" * 6
ARP_FORMAT = struct.Struct("!HHBBH6s4s6s4s")


class ArpProber:
    """ARP requests for an IPv4 address on the uplink's own link, usually its gateway.

    It proves the gateway is alive even when it does not answer pings, but says
    nothing about what lies beyond it.
    """

    def __init__(self, loop: Loop, egress: Egress, on_answer: Answer) -> None:
        self.loop = loop
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
        loop.watch(self.sock, selectors.EVENT_READ, self.readable)

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
        self.loop.unwatch(self.sock)
        self.sock.close()


def open_prober(loop: Loop, egress: Egress, key: str, on_answer: Answer, check: HealthCheck) -> ArpProber:
    return ArpProber(loop, egress, on_answer)


METHOD = Method(
    name="arp",
    parse_target=parse_probe_target,
    invalid_targets=any_targets,
    default_gateways=(4,),
    canonical=canonical_address,
    prober_key=lambda target: "arp",  # one packet socket for the interface
    parse_expect=no_expect,
    probe_bytes=lambda target: 2 * 60,  # request and reply, minimum Ethernet frames
    open_prober=open_prober,
)
