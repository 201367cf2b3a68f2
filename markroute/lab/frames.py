"""Hand-built Ethernet frames, for tests that inject exactly one packet per flow.

Sockets cannot send a lone TCP SYN with a chosen source port and DSCP from any address,
or an ICMP echo request from an address the sender does not own; a raw frame on a veth
can, and that is what the simulator's differential tests and the policy-merging tests
need to ask the kernel "what would you do with this first packet".

Run as `python -m markroute.lab.frames` inside a lab namespace, it reads a JSON list of
frame descriptions (see `frame`, plus "ifname") from stdin and sends each one.
"""

from __future__ import annotations

import ipaddress
import json
import socket
import struct
import sys
import time
from typing import Any

TCP, UDP, ICMP, ICMPV6 = 6, 17, 1, 58
_CHECKSUM_OFFSET = {TCP: 16, UDP: 6, ICMP: 2, ICMPV6: 2}
Address = ipaddress.IPv4Address | ipaddress.IPv6Address


def checksum(data: bytes) -> int:
    """The Internet checksum (RFC 1071)."""
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def frame(spec: dict[str, Any]) -> bytes:
    """A frame with a valid IPv4/IPv6 packet: a TCP SYN, a UDP datagram or an echo request.

    `spec`: src, dst (addresses), proto (6, 17, 1 or 58), sport, dport, dscp, seq,
    src_mac, dst_mac.
    """
    src = ipaddress.ip_address(spec["src"])
    dst = ipaddress.ip_address(spec["dst"])
    proto = spec["proto"]
    seq = spec.get("seq", 1)
    body = _transport(spec, seq, src, dst)
    tos = spec.get("dscp", 0) << 2
    if src.version == 4:
        header = struct.pack("!BBHHHBBH4s4s", 0x45, tos, 20 + len(body), seq & 0xFFFF, 0x4000, 64, proto, 0,
                             src.packed, dst.packed)
        header = header[:10] + struct.pack("!H", checksum(header)) + header[12:]
        ethertype = 0x0800
    else:
        header = struct.pack("!IHBB16s16s", (6 << 28) | (tos << 20), len(body), proto, 64, src.packed, dst.packed)
        ethertype = 0x86DD
    return _mac(spec["dst_mac"]) + _mac(spec["src_mac"]) + struct.pack("!H", ethertype) + header + body


def _transport(spec: dict[str, Any], seq: int, src: Address, dst: Address) -> bytes:
    proto = spec["proto"]
    if proto == TCP:
        header = struct.pack("!HHIIBBHHH", spec["sport"], spec["dport"], seq, 0, 5 << 4, 0x02, 64240, 0, 0)
    elif proto == UDP:
        header = struct.pack("!HHHH", spec["sport"], spec["dport"], 9, 0) + b"x"
    else:
        header = struct.pack("!BBHHH", 8 if proto == ICMP else 128, 0, 0, seq & 0xFFFF, 1) + b"probe"
    if proto == ICMP:
        value = checksum(header)
    else:
        value = checksum(_pseudo_header(src, dst, proto, len(header)) + header)
        if proto == UDP and value == 0:
            value = 0xFFFF
    offset = _CHECKSUM_OFFSET[proto]
    return header[:offset] + struct.pack("!H", value) + header[offset + 2:]


def _pseudo_header(src: Address, dst: Address, proto: int, length: int) -> bytes:
    """What TCP, UDP and ICMPv6 checksums cover besides their own bytes."""
    if src.version == 4:
        return src.packed + dst.packed + struct.pack("!BBH", 0, proto, length)
    return src.packed + dst.packed + struct.pack("!IxxxB", length, proto)


def _mac(text: str) -> bytes:
    return bytes.fromhex(text.replace(":", ""))


def send_all(specs: list[dict[str, Any]], gap: float = 0.0003) -> None:
    """Send each frame out of its `ifname`, a little apart so none is dropped on the way."""
    sockets: dict[str, socket.socket] = {}
    try:
        for spec in specs:
            sock = sockets.get(spec["ifname"])
            if sock is None:
                sock = sockets[spec["ifname"]] = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
                sock.bind((spec["ifname"], 0))
            sock.send(frame(spec))
            time.sleep(gap)
    finally:
        for sock in sockets.values():
            sock.close()


if __name__ == "__main__":
    send_all(json.load(sys.stdin))
