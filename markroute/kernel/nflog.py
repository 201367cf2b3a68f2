"""Reading packet log lines from nfnetlink_log (`log group N`), with the standard library.

`markroute log` binds markroute's group (`plan.packetlog.GROUP`) in the current network
namespace and decodes each line: the prefix says which policy or inbound drop wrote it;
the first bytes of the packet give its addresses and ports. Works in any namespace, which
the kernel log does not (nf_log_all_netns is the host's to set).

Only one socket can bind a group at a time in a namespace: the kernel refuses a second
`markroute log` with EPERM, reported as "another reader has it".
"""

from __future__ import annotations

import errno
import ipaddress
import os
import select
import socket
import struct
import time
from collections.abc import Iterator
from dataclasses import dataclass

from markroute.kernel import KernelError

NETLINK_NETFILTER = 12
NFNL_SUBSYS_ULOG = 4
NFULNL_MSG_PACKET, NFULNL_MSG_CONFIG = 0, 1
NFULA_CFG_CMD, NFULA_CFG_MODE = 1, 2
NFULNL_CFG_CMD_BIND, NFULNL_CFG_CMD_UNBIND = 1, 2
NFULNL_COPY_PACKET = 2
NFULA_MARK, NFULA_IFINDEX_INDEV, NFULA_IFINDEX_OUTDEV, NFULA_PAYLOAD, NFULA_PREFIX = 2, 4, 5, 9, 10
NLM_F_REQUEST, NLM_F_ACK = 1, 4
NLMSG_ERROR = 2
COPY_RANGE = 80  # enough for an IPv6 header and the ports after it
NLMSG_HEADER = struct.Struct("=IHHII")


@dataclass(frozen=True)
class LoggedPacket:
    """One packet log line: the rule's prefix and the packet's mark, interfaces and endpoints."""

    when: float
    prefix: str
    mark: int
    indev: str | None
    outdev: str | None
    version: int | None
    proto: int | None
    src: str | None
    dst: str | None
    sport: int | None
    dport: int | None


def _attribute(kind: int, data: bytes) -> bytes:
    length = 4 + len(data)
    return struct.pack("=HH", length, kind) + data + b"\0" * (-length % 4)


def _request(group: int, attributes: bytes, seq: int) -> bytes:
    body = struct.pack("=BBH", socket.AF_UNSPEC, 0, socket.htons(group)) + attributes
    kind = NFNL_SUBSYS_ULOG << 8 | NFULNL_MSG_CONFIG
    return NLMSG_HEADER.pack(NLMSG_HEADER.size + len(body), kind, NLM_F_REQUEST | NLM_F_ACK, seq, 0) + body


class PacketLogReader:
    """A socket bound to one nflog group; iterate `packets()` for the lines as they come."""

    def __init__(self, group: int) -> None:
        self.group = group
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
        self.sock.bind((0, 0))
        try:
            self._configure(_attribute(NFULA_CFG_CMD, struct.pack("=B", NFULNL_CFG_CMD_BIND)), 1)
            self._configure(_attribute(NFULA_CFG_MODE, struct.pack(">IBB", COPY_RANGE, NFULNL_COPY_PACKET, 0)), 2)
        except BaseException:
            self.sock.close()
            raise

    def __enter__(self) -> PacketLogReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        try:
            self.sock.send(_request(self.group, _attribute(NFULA_CFG_CMD, struct.pack("=B", NFULNL_CFG_CMD_UNBIND)), 3))
        except OSError:
            pass
        self.sock.close()

    def _configure(self, attributes: bytes, seq: int) -> None:
        self.sock.send(_request(self.group, attributes, seq))
        while True:
            for kind, payload in _messages(self.sock.recv(65536)):
                if kind == NLMSG_ERROR:
                    (code,) = struct.unpack_from("=i", payload)
                    if code:
                        busy = " (another reader has it)" if -code in (errno.EPERM, errno.EBUSY) else ""
                        raise KernelError(f"cannot bind packet log group {self.group}: {os.strerror(-code)}{busy}")
                    return

    def packets(self, timeout: float | None = None) -> Iterator[LoggedPacket]:
        """Lines as they arrive; ends when TIMEOUT seconds pass without one (None: never)."""
        while True:
            ready, _, _ = select.select([self.sock], [], [], timeout)
            if not ready:
                return
            data = self.sock.recv(65536)
            for kind, payload in _messages(data):
                if kind == (NFNL_SUBSYS_ULOG << 8 | NFULNL_MSG_PACKET):
                    yield _packet(payload[4:])


def _messages(data: bytes) -> Iterator[tuple[int, bytes]]:
    offset = 0
    while offset + NLMSG_HEADER.size <= len(data):
        length, kind, _, _, _ = NLMSG_HEADER.unpack_from(data, offset)
        if length < NLMSG_HEADER.size:
            return
        yield kind, data[offset + NLMSG_HEADER.size:offset + length]
        offset += (length + 3) & ~3


def _attributes(data: bytes) -> dict[int, bytes]:
    found: dict[int, bytes] = {}
    offset = 0
    while offset + 4 <= len(data):
        length, kind = struct.unpack_from("=HH", data, offset)
        if length < 4:
            break
        found[kind & 0x3FFF] = data[offset + 4:offset + length]
        offset += (length + 3) & ~3
    return found


def _interface(raw: bytes | None) -> str | None:
    if raw is None:
        return None
    try:
        return socket.if_indextoname(struct.unpack(">I", raw)[0])
    except OSError:
        return None


def _packet(body: bytes) -> LoggedPacket:
    attrs = _attributes(body)
    payload = attrs.get(NFULA_PAYLOAD, b"")
    version = proto = sport = dport = None
    src = dst = None
    if payload[:1] and payload[0] >> 4 == 4 and len(payload) >= 20:
        version, proto = 4, payload[9]
        src, dst = str(ipaddress.IPv4Address(payload[12:16])), str(ipaddress.IPv4Address(payload[16:20]))
        ports = payload[(payload[0] & 0xF) * 4:]
    elif payload[:1] and payload[0] >> 4 == 6 and len(payload) >= 40:
        version, proto = 6, payload[6]
        src, dst = str(ipaddress.IPv6Address(payload[8:24])), str(ipaddress.IPv6Address(payload[24:40]))
        ports = payload[40:]
    else:
        ports = b""
    if proto in (6, 17, 132) and len(ports) >= 4:
        sport, dport = struct.unpack(">HH", ports[:4])
    return LoggedPacket(
        when=time.time(),
        prefix=attrs.get(NFULA_PREFIX, b"").rstrip(b"\0").decode(errors="replace"),
        mark=struct.unpack(">I", attrs[NFULA_MARK])[0] if NFULA_MARK in attrs else 0,
        indev=_interface(attrs.get(NFULA_IFINDEX_INDEV)),
        outdev=_interface(attrs.get(NFULA_IFINDEX_OUTDEV)),
        version=version, proto=proto, src=src, dst=dst, sport=sport, dport=dport,
    )
