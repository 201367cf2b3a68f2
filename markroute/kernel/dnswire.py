"""Just enough of the DNS wire format to ask for a name's A or AAAA records and read them with their TTLs.

Used by the built-in resolver of domain sets (`markroute.daemon.resolver`) and by the
labs' test client (`markroute.lab.dns`): one question, recursion desired, over UDP.
Compressed names in answers are followed; records of other types (a CNAME on the way)
are skipped, the addresses at its end kept.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import struct
from dataclasses import dataclass

TYPES = {4: 1, 6: 28}  # A, AAAA
CLASS_IN = 1
HEADER = struct.Struct("!HHHHHH")
RECORD = struct.Struct("!HHIH")


class DnsError(Exception):
    """No usable answer: a timeout, a malformed packet, or an error code from the server."""


@dataclass(frozen=True)
class Answer:
    address: str
    ttl: int


def query_packet(name: str, version: int, ident: int) -> bytes:
    labels = b"".join(bytes([len(part)]) + part.encode("ascii") for part in name.rstrip(".").split("."))
    return HEADER.pack(ident, 0x0100, 1, 0, 0, 0) + labels + b"\0" + struct.pack("!HH", TYPES[version], CLASS_IN)


def _skip_name(packet: bytes, offset: int) -> int:
    while True:
        if offset >= len(packet):
            raise DnsError("truncated name")
        length = packet[offset]
        if length & 0xC0 == 0xC0:
            return offset + 2
        if length == 0:
            return offset + 1
        offset += 1 + length


def parse_answers(packet: bytes, ident: int, version: int) -> list[Answer]:
    """The A (version 4) or AAAA (6) records of a response to query IDENT."""
    if len(packet) < HEADER.size:
        raise DnsError("short packet")
    got, flags, questions, answers, _, _ = HEADER.unpack_from(packet)
    if got != ident or not flags & 0x8000:
        raise DnsError("not the answer to this query")
    if flags & 0x000F not in (0, 3):  # NOERROR, NXDOMAIN (no records)
        raise DnsError(f"server answered with error code {flags & 0x000F}")
    offset = HEADER.size
    for _ in range(questions):
        offset = _skip_name(packet, offset) + 4
    found: list[Answer] = []
    for _ in range(answers):
        offset = _skip_name(packet, offset)
        kind, klass, ttl, length = RECORD.unpack_from(packet, offset)
        offset += RECORD.size
        data = packet[offset:offset + length]
        offset += length
        if kind == TYPES[version] and klass == CLASS_IN and len(data) == (4 if version == 4 else 16):
            found.append(Answer(str(ipaddress.ip_address(data)), ttl))
    return found


def resolve(server: str, name: str, version: int, timeout: float = 2.0, port: int = 53) -> list[Answer]:
    """Ask SERVER for NAME's addresses of one IP version; raises DnsError."""
    ident = int.from_bytes(os.urandom(2), "big")
    family = socket.AF_INET6 if ":" in server else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout)
        try:
            sock.connect((server, port))
            sock.send(query_packet(name, version, ident))
            while True:
                packet = sock.recv(4096)
                try:
                    return parse_answers(packet, ident, version)
                except DnsError as exc:
                    if "not the answer" not in str(exc):
                        raise
        except OSError as exc:
            raise DnsError(f"{server}: {exc}") from None
