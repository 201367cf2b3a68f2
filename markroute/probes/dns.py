"""`method: dns`: a query for a name, sent to a resolver through the uplink.

Targets are `NAME@RESOLVER` (`example.com@192.0.2.53`, `example.com@[2001:db8::53]:5353`).
A resolver that answers at all has a working path behind it, so any answer counts
except SERVFAIL (the resolver itself could not reach the name's servers: for a
resolver at the ISP, that is the outage being looked for); with `expect:` the answer
must also hold one of those addresses (A records, or AAAA when every expected address
is IPv6), which catches a captive portal or a hijacking resolver answering everything.
One UDP socket per target; the query ID is the round's token.
"""

from __future__ import annotations

import ipaddress
import re
import selectors
import socket
import struct
import time

from markroute.model import HealthCheck
from markroute.probes.method import Answer, Egress, Loop, Method, any_targets
from markroute.probes.sockets import address_tuple, pinned, split_target, version_of
from markroute.values import parse_ip, parse_probe_target, yaml_text

DNS_PORT = 53
SERVFAIL = 2
TYPE_A, TYPE_AAAA = 1, 28
LABEL = re.compile(r"^(?!-)[A-Za-z0-9_-]{1,63}(?<!-)$")


def parse_target(value: object) -> str:
    text = yaml_text(value)
    name, at, server = text.rpartition("@")
    if not at or not name:
        raise ValueError(f"'{text}' is not NAME@RESOLVER (e.g. example.com@192.0.2.53)")
    labels = name.rstrip(".").split(".")
    if len(name) > 253 or not all(LABEL.match(label) for label in labels):
        raise ValueError(f"'{name}' is not a domain name")
    parse_probe_target(server)
    return text


def split(target: str) -> tuple[str, str, int]:
    """(name, resolver address, port) of a target."""
    name, _, server = target.rpartition("@")
    if server.startswith("[") or server.count(":") == 1:
        host, port = split_target(server)
    else:
        host, port = server, DNS_PORT
    return name.rstrip("."), host, port


def canonical(target: str) -> str:
    name, host, port = split(target)
    host = str(ipaddress.ip_address(host))
    server = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    return f"{name.lower()}@{server}"


def query(name: str, token: int, qtype: int) -> bytes:
    header = struct.pack("!HHHHHH", token, 0x0100, 1, 0, 0, 0)  # recursion desired, one question
    labels = b"".join(bytes([len(part)]) + part.encode() for part in name.split(".") if part)
    return header + labels + b"\0" + struct.pack("!HH", qtype, 1)


def skip_name(data: bytes, offset: int) -> int:
    """The offset after a (possibly compressed) name."""
    while offset < len(data):
        length = data[offset]
        if length & 0xC0 == 0xC0:
            return offset + 2
        if length == 0:
            return offset + 1
        offset += 1 + length
    raise ValueError("truncated name")


def addresses(data: bytes) -> set[str]:
    """The A and AAAA addresses in a response's answer section."""
    _, _, questions, answers = struct.unpack("!HHHH", data[:8])
    offset = 12
    for _ in range(questions):
        offset = skip_name(data, offset) + 4
    found: set[str] = set()
    for _ in range(answers):
        offset = skip_name(data, offset)
        kind, _, _, length = struct.unpack("!HHIH", data[offset:offset + 10])
        offset += 10
        rdata = data[offset:offset + length]
        if kind == TYPE_A and length == 4:
            found.add(str(ipaddress.IPv4Address(rdata)))
        elif kind == TYPE_AAAA and length == 16:
            found.add(str(ipaddress.IPv6Address(rdata)))
        offset += length
    return found


def judge(data: bytes, token: int, expect: frozenset[str]) -> bool:
    """Whether DATA is an acceptable answer to query TOKEN."""
    if len(data) < 12:
        return False
    ident, flags = struct.unpack("!HH", data[:4])
    if ident != token or not flags & 0x8000 or flags & 0xF == SERVFAIL:
        return False
    if not expect:
        return True
    try:
        return bool(addresses(data) & expect)
    except (ValueError, struct.error):
        return False


class DnsProber:
    """One UDP socket to one resolver for one name; answers are matched by query ID."""

    def __init__(self, loop: Loop, egress: Egress, target: str, on_answer: Answer, check: HealthCheck) -> None:
        self.loop = loop
        self.target = target
        self.on_answer = on_answer
        self.name, host, port = split(target)
        version = version_of(host)
        family = socket.AF_INET6 if version == 6 else socket.AF_INET
        self.expect = frozenset(str(ipaddress.ip_address(a)) for a in check.expect)
        self.qtype = TYPE_AAAA if self.expect and all(":" in a for a in self.expect) else TYPE_A
        self.sock = pinned(family, socket.SOCK_DGRAM, 0, egress, version)
        self.sock.connect(address_tuple(host, port, egress, version))
        self.pending: dict[int, float] = {}
        loop.watch(self.sock, selectors.EVENT_READ, self.readable)

    def send(self, target: str, token: int) -> None:
        self.pending[token] = time.time()
        try:
            self.sock.send(query(self.name, token, self.qtype))
        except OSError:
            self.pending.pop(token, None)
            raise

    def readable(self) -> None:
        while True:
            try:
                data = self.sock.recv(4096)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                continue  # an ICMP error for an earlier query: that probe simply gets no answer
            if len(data) < 2:
                continue
            token = struct.unpack("!H", data[:2])[0]
            sent = self.pending.get(token)
            if sent is not None and judge(data, token, self.expect):
                del self.pending[token]
                self.on_answer(self.target, token, time.time() - sent)

    def forget(self, target: str, token: int) -> None:
        self.pending.pop(token, None)

    def close(self) -> None:
        self.loop.unwatch(self.sock)
        self.sock.close()


def open_prober(loop: Loop, egress: Egress, key: str, on_answer: Answer, check: HealthCheck) -> DnsProber:
    return DnsProber(loop, egress, key, on_answer, check)


def probe_bytes(target: str) -> int:
    """The query (IP, UDP, header, question) and an answer with one record."""
    name, host, _ = split(target)
    asked = (40 if ":" in host else 20) + 8 + 12 + len(name) + 2 + 4
    return 2 * asked + 16


def parse_expect(value: object) -> str:
    return parse_ip(value)


METHOD = Method(
    name="dns",
    parse_target=parse_target,
    invalid_targets=any_targets,
    default_gateways=(),
    canonical=canonical,
    prober_key=lambda target: target,  # one socket per target (resolver and name)
    parse_expect=parse_expect,
    probe_bytes=probe_bytes,
    open_prober=open_prober,
)
