"""Parsing of the scalar values a policy can match on: addresses, ports, MACs, DSCP.

Each parser takes the text a user wrote and returns plain data, or raises `ValueError`
with a message fit to show that user. Address lists become merged integer intervals per
family, because that is the shape both nftables interval sets and the simulator want,
and merging once here keeps the per-packet work independent of how the list was written.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

Interval = tuple[int, int]

PROTOCOLS = {"tcp": 6, "udp": 17, "icmp": 1, "icmpv6": 58, "sctp": 132}
PROTOCOL_NAMES = {number: name for name, number in PROTOCOLS.items()}
PORT_PROTOCOLS = frozenset({6, 17, 132})

DSCP_CLASSES = {
    **{f"cs{n}": n * 8 for n in range(8)},
    **{f"af{c}{d}": c * 8 + d * 2 for c in range(1, 5) for d in range(1, 4)},
    "ef": 46,
    "va": 44,
    "le": 1,
}

_MAC = re.compile(r"^[0-9a-fA-F]{2}([:-])[0-9a-fA-F]{2}(\1[0-9a-fA-F]{2}){4}$")


@dataclass(frozen=True)
class AddressList:
    """Addresses as merged, sorted, inclusive integer intervals for each IP family."""

    v4: tuple[Interval, ...] = ()
    v6: tuple[Interval, ...] = ()

    def family(self, version: int) -> tuple[Interval, ...]:
        return self.v4 if version == 4 else self.v6

    @property
    def versions(self) -> frozenset[int]:
        return frozenset(v for v in (4, 6) if self.family(v))

    def covers(self, other: AddressList) -> bool:
        """True when every address of `other` is also in this list."""
        return all(
            _intervals_cover(self.family(v), other.family(v)) for v in (4, 6)
        )

    def __len__(self) -> int:
        return len(self.v4) + len(self.v6)


def _intervals_cover(outer: tuple[Interval, ...], inner: tuple[Interval, ...]) -> bool:
    import bisect

    starts = [first for first, _ in outer]
    for first, last in inner:
        index = bisect.bisect_right(starts, first) - 1
        if index < 0 or outer[index][1] < last:
            return False
    return True


def parse_address(text: str) -> tuple[int, Interval]:
    """One address, prefix or `a-b` range as (IP version, interval)."""
    text = text.strip()
    if "-" in text:
        first_text, _, last_text = text.partition("-")
        try:
            first = ipaddress.ip_address(first_text.strip())
            last = ipaddress.ip_address(last_text.strip())
        except ValueError:
            raise ValueError(f"'{text}' is not an address range (expected A-B)") from None
        if first.version != last.version:
            raise ValueError(f"range '{text}' mixes IPv4 and IPv6")
        if int(first) > int(last):
            raise ValueError(f"range '{text}' ends before it starts")
        return first.version, (int(first), int(last))
    try:
        if "/" in text:
            network = ipaddress.ip_network(text, strict=True)
        else:
            address = ipaddress.ip_address(text)
            return address.version, (int(address), int(address))
    except ValueError as exc:
        if "has host bits set" in str(exc):
            network = ipaddress.ip_network(text, strict=False)
            raise ValueError(
                f"'{text}' has host bits set; the network is {network}"
            ) from None
        raise ValueError(f"'{text}' is not an IP address, prefix or range") from None
    return network.version, (int(network.network_address), int(network.broadcast_address))


def merge(intervals: list[Interval]) -> tuple[Interval, ...]:
    """Sort and join overlapping or adjacent intervals."""
    merged: list[Interval] = []
    for first, last in sorted(intervals):
        if merged and first <= merged[-1][1] + 1:
            if last > merged[-1][1]:
                merged[-1] = (merged[-1][0], last)
        else:
            merged.append((first, last))
    return tuple(merged)


def address_list(items: list[tuple[int, Interval]]) -> AddressList:
    return AddressList(
        v4=merge([iv for version, iv in items if version == 4]),
        v6=merge([iv for version, iv in items if version == 6]),
    )


def interval_text(version: int, interval: Interval) -> str:
    """The shortest way to write an interval: an address, a prefix, or a range."""
    first, last = interval
    bits = 32 if version == 4 else 128
    make = ipaddress.IPv4Address if version == 4 else ipaddress.IPv6Address
    if first == last:
        return str(make(first))
    size = last - first + 1
    if size & (size - 1) == 0 and first % size == 0:
        return f"{make(first)}/{bits - size.bit_length() + 1}"
    return f"{make(first)}-{make(last)}"


def parse_port(value: object) -> Interval:
    """A port number or `a-b` range."""
    if isinstance(value, bool):
        raise ValueError(f"'{value}' is not a port")
    if isinstance(value, int):
        first = last = value
    else:
        text = str(value).strip()
        match = re.fullmatch(r"(\d+)\s*(?:-\s*(\d+))?", text)
        if not match:
            raise ValueError(f"'{text}' is not a port or port range (expected N or A-B)")
        first = int(match.group(1))
        last = int(match.group(2) or first)
    for port in (first, last):
        if not 0 < port < 65536:
            raise ValueError(f"port {port} is out of range 1-65535")
    if first > last:
        raise ValueError(f"port range {first}-{last} ends before it starts")
    return first, last


def parse_protocol(value: object) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        if 0 <= value <= 255:
            return value
        raise ValueError(f"protocol number {value} is out of range 0-255")
    text = str(value).strip().lower()
    if text in PROTOCOLS:
        return PROTOCOLS[text]
    if text.isdigit() and int(text) <= 255:
        return int(text)
    raise ValueError(f"unknown protocol '{value}'")


def parse_mac(value: object) -> str:
    text = str(value).strip()
    if not _MAC.match(text):
        raise ValueError(f"'{text}' is not a MAC address (expected six hex pairs like 52:54:00:12:34:56)")
    return text.lower().replace("-", ":")


def parse_dscp(value: object) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        if 0 <= value <= 63:
            return value
        raise ValueError(f"DSCP {value} is out of range 0-63")
    text = str(value).strip().lower()
    if text in DSCP_CLASSES:
        return DSCP_CLASSES[text]
    if text.isdigit() and int(text) <= 63:
        return int(text)
    raise ValueError(f"unknown DSCP class '{value}'")


def parse_mark(value: object) -> int:
    """A mark or mask written as a number or hex text, within 32 bits."""
    if isinstance(value, bool):
        raise ValueError(f"'{value}' is not a number")
    if isinstance(value, int):
        number = value
    else:
        try:
            number = int(str(value).strip(), 0)
        except ValueError:
            raise ValueError(f"'{value}' is not a number (write 0xff00 or 65280)") from None
    if not 0 <= number <= 0xFFFFFFFF:
        raise ValueError(f"{value} does not fit in 32 bits")
    return number
