"""Constructors for libnftables JSON expressions and statements.

The compiler builds rules out of these instead of text so that the ruleset has one
machine-readable form; `nfttext` renders it for people and `nft -j -f` loads it.
A named address set holds `AddressElements`: its intervals, read as the list of nft
JSON elements nft itself would list (`address_element`). Apply, the state record, the
fingerprint and the simulator use the intervals; only output meant for nft or people
formats them, so 100,000 prefixes are not turned into text and back on every apply.
`json_default` lets `json.dumps` write them.
"""

from __future__ import annotations

import base64
import json
import re
import socket
from collections.abc import Callable, Iterator, Sequence
from typing import Any, overload

from markroute.values import Interval, Ipv4Intervals

Expr = dict[str, Any]
FAMILY = "inet"
ADDRESS_SET_TYPES = {4: "ipv4_addr", 6: "ipv6_addr"}
SET_VERSIONS = {kind: version for version, kind in ADDRESS_SET_TYPES.items()}
HOOK_PRIORITIES = {"raw": -300, "mangle": -150, "dstnat": -100, "filter": 0, "security": 50, "srcnat": 100}


def match(left: Expr, right: Any, op: str = "==") -> Expr:
    return {"match": {"op": op, "left": left, "right": right}}


def meta(key: str) -> Expr:
    return {"meta": {"key": key}}


def ct(key: str) -> Expr:
    return {"ct": {"key": key}}


def payload(protocol: str, field: str) -> Expr:
    return {"payload": {"protocol": protocol, "field": field}}


def band(left: Any, right: Any) -> Expr:
    return {"&": [left, right]}


def bor(left: Any, right: Any) -> Expr:
    return {"|": [left, right]}


def setvalue(elements: list[Any]) -> Any:
    """A single value stays bare; several become an anonymous set."""
    return elements[0] if len(elements) == 1 else {"set": elements}


def prefix(address: str, length: int) -> Expr:
    return {"prefix": {"addr": address, "len": length}}


def span(first: Any, last: Any) -> Expr:
    return {"range": [first, last]}


def mangle(key: Expr, value: Any) -> Expr:
    return {"mangle": {"key": key, "value": value}}


def set_bits(key: Expr, mask: int, value: int) -> Expr:
    """`key set key and ~mask or value`: writes only markroute's bits, keeps everyone else's."""
    return mangle(key, bor(band(key, ~mask & 0xFFFFFFFF), value))


def vmap(key: Expr, entries: list[tuple[Any, Expr]]) -> Expr:
    return {"vmap": {"key": key, "data": {"set": [[k, v] for k, v in entries]}}}


def numgen(modulus: int) -> Expr:
    return {"numgen": {"mode": "random", "mod": modulus, "offset": 0}}


def fib_daddr_type() -> Expr:
    return {"fib": {"result": "type", "flags": ["daddr"]}}


def fib_saddr_type() -> Expr:
    return {"fib": {"result": "type", "flags": ["saddr"]}}


def counter() -> Expr:
    return {"counter": {"packets": 0, "bytes": 0}}


def verdict(kind: str, target: str | None = None) -> Expr:
    return {kind: {"target": target}} if target else {kind: None}


def table(name: str) -> Expr:
    return {"table": {"family": FAMILY, "name": name}}


def chain(table_name: str, name: str, hook: str | None = None, kind: str = "filter", priority: str = "filter") -> Expr:
    body: dict[str, Any] = {"family": FAMILY, "table": table_name, "name": name}
    if hook:
        body.update(type=kind, hook=hook, prio=HOOK_PRIORITIES[priority], policy="accept")
    return {"chain": body}


def rule(table_name: str, chain_name: str, expr: list[Expr], comment: str | None = None) -> Expr:
    body: dict[str, Any] = {"family": FAMILY, "table": table_name, "chain": chain_name, "expr": expr}
    if comment:
        body["comment"] = comment
    return {"rule": body}


def named_set(table_name: str, name: str, kind: str, elements: AddressElements) -> Expr:
    """An interval set holding ELEMENTS; an empty one has no `elem` key, as nft lists it
    (nft 1.0.6's JSON parser refuses `"elem": []`: "Invalid set elem expression")."""
    body: dict[str, Any] = {"family": FAMILY, "table": table_name, "name": name, "type": kind, "flags": ["interval"]}
    if len(elements):
        body["elem"] = elements
    return {"set": body}


def dynamic_set(table_name: str, name: str, kind: str, timeout: int | None) -> Expr:
    """A set others fill: intervals (an admin may add a prefix), elements with a lifetime.

    The `timeout` flag is what tells markroute's own code that a set's elements are not
    its own (`is_dynamic`); `timeout`, when given, is the lifetime of an element added without one.
    """
    body: Expr = {"family": FAMILY, "table": table_name, "name": name, "type": kind, "flags": ["interval", "timeout"]}
    if timeout is not None:
        body["timeout"] = timeout
    return {"set": body}


CGROUP_SET_TYPE = "cgroupsv2"
_CGROUP_SET = re.compile(r"_cgroup\d+_l(\d+)")


def socket_cgroup(level: int) -> Expr:
    """The cgroup v2 id of the local socket's ancestor at depth LEVEL (root 0), as newer nft writes it.

    nft 1.0.6 can neither read this form nor list the level (`kernel/nft` loads such
    rules as text and puts the level back into listings from the set's name).
    """
    return {"socket": {"key": "cgroupv2", "level": level}}


def cgroup_set_name(index: int, level: int) -> str:
    """The name of the INDEXth set of cgroup paths; it carries the paths' depth, which
    `cgroup_set_level` reads back (nft 1.0.6 lists the rule without it)."""
    return f"_cgroup{index}_l{level}"


def cgroup_set_level(name: str) -> int | None:
    """The depth a `cgroup_set_name` stands for; None for any other set."""
    found = _CGROUP_SET.fullmatch(name)
    return int(found.group(1)) if found else None


def cgroup_set(table_name: str, name: str, paths: Sequence[str]) -> Expr:
    """A set of cgroup v2 paths (relative to the cgroup2 root). In a plan its elements are
    the configured paths; nft resolves a path to the cgroup's id when it loads it, so the
    kernel layer hands nft only the paths that exist then, and keeps the set true at run time."""
    return {"set": {"family": FAMILY, "table": table_name, "name": name, "type": CGROUP_SET_TYPE,
                    "elem": list(paths)}}


def is_cgroup_set(body: Expr) -> bool:
    """Whether a set (a plan's or a listing's body) holds cgroups: its elements are run-time data."""
    return body.get("type") == CGROUP_SET_TYPE


def is_dynamic(body: Expr) -> bool:
    """Whether a set (a plan's or a listing's body) is one others fill (`dynamic_set`)."""
    return "timeout" in body.get("flags", ())


def address_element(version: int, interval: Interval) -> Any:
    """An address interval as nft JSON: an address, a prefix, or a range (fast: no `ipaddress`)."""
    first, last = interval
    text = _ADDRESS_TEXT[version]
    if first == last:
        return text(first)
    size = last - first + 1
    if size & (size - 1) == 0 and first % size == 0:
        return prefix(text(first), (32 if version == 4 else 128) - size.bit_length() + 1)
    return span(text(first), text(last))


def element_interval(version: int, element: Any) -> Interval:
    """The interval an `address_element` (or nft's listing of one) stands for.

    Read straight with the C library: apply turns 100,000 elements back into intervals.
    """
    family, bits = (socket.AF_INET, 32) if version == 4 else (socket.AF_INET6, 128)
    if isinstance(element, str):
        first = int.from_bytes(socket.inet_pton(family, element), "big")
        return first, first
    if "range" in element:
        first_text, last_text = element["range"]
        return (int.from_bytes(socket.inet_pton(family, first_text), "big"),
                int.from_bytes(socket.inet_pton(family, last_text), "big"))
    first = int.from_bytes(socket.inet_pton(family, element["prefix"]["addr"]), "big")
    return first, first + (1 << (bits - element["prefix"]["len"])) - 1


_ADDRESS_TEXT: dict[int, Callable[[int], str]] = {
    4: lambda n: socket.inet_ntop(socket.AF_INET, n.to_bytes(4, "big")),
    6: lambda n: socket.inet_ntop(socket.AF_INET6, n.to_bytes(16, "big")),
}


class AddressElements(Sequence[Any]):
    """The elements of a named address set: sorted, disjoint intervals of one IP version.

    As a sequence it is the list of nft JSON elements (`address_element`), formatted on
    first use; it compares equal to that list, so a recorded set still matches nft's
    listing of it. `pack`/`unpack` give the compact form the state record keeps. IPv4
    intervals stay packed (`Ipv4Intervals`) from the set file to the kernel and the record.
    """

    __slots__ = ("version", "intervals", "_listed", "_packed")

    def __init__(self, version: int, intervals: Sequence[Interval]) -> None:
        self.version = version
        self.intervals: Sequence[Interval] = intervals
        if version == 4 and not isinstance(intervals, Ipv4Intervals):
            self.intervals = Ipv4Intervals.of(intervals)
        self._listed: list[Any] | None = None
        self._packed: bytes | None = None

    def listed(self) -> list[Any]:
        if self._listed is None:
            self._listed = [address_element(self.version, interval) for interval in self.intervals]
        return self._listed

    def __len__(self) -> int:
        return len(self.intervals)

    @overload
    def __getitem__(self, index: int) -> Any: ...

    @overload
    def __getitem__(self, index: slice) -> list[Any]: ...

    def __getitem__(self, index: int | slice) -> Any:
        return self.listed()[index]

    def __iter__(self) -> Iterator[Any]:
        return iter(self.listed())

    def __eq__(self, other: object) -> bool:
        if isinstance(other, AddressElements):
            return self.version == other.version and self.intervals == other.intervals
        if isinstance(other, list):
            return self.listed() == other
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"AddressElements(ipv{self.version}, {len(self.intervals)} intervals)"

    def pack(self) -> bytes:
        """The intervals as big-endian (first, last) pairs of fixed width: 8 bytes for IPv4, 32 for IPv6."""
        if self._packed is None:
            if isinstance(self.intervals, Ipv4Intervals):
                self._packed = self.intervals.big_endian()
            else:
                self._packed = b"".join(n.to_bytes(16, "big") for interval in self.intervals for n in interval)
        return self._packed

    def packed_text(self) -> str:
        return base64.b64encode(self.pack()).decode("ascii")

    @classmethod
    def unpack(cls, version: int, data: bytes) -> AddressElements:
        if version == 4:
            return cls(version, Ipv4Intervals.from_big_endian(data))
        if len(data) % 32:
            raise ValueError(f"packed IPv{version} intervals must be a multiple of 32 bytes")
        numbers = [int.from_bytes(data[i:i + 16], "big") for i in range(0, len(data), 16)]
        return cls(version, tuple(zip(numbers[::2], numbers[1::2])))

    @classmethod
    def from_packed_text(cls, version: int, text: str) -> AddressElements:
        return cls.unpack(version, base64.b64decode(text, validate=True))

    @classmethod
    def from_listing(cls, version: int, elements: Sequence[Any]) -> AddressElements:
        """The intervals of elements as nft lists them (or as `address_element` writes them)."""
        if isinstance(elements, AddressElements):
            return elements
        return cls(version, tuple(element_interval(version, element) for element in elements))


def set_elements(body: Expr) -> AddressElements:
    """A named address set's elements as intervals: a plan's are already; a listing (or an old
    record) holds them as nft JSON."""
    return AddressElements.from_listing(SET_VERSIONS[body["type"]], body.get("elem", []))


def plain(obj: Expr) -> Expr:
    """OBJ with `AddressElements` written out as the nft JSON list: for documents handed to others."""
    body = obj.get("set")
    if body is not None and isinstance(body.get("elem"), AddressElements):
        return {"set": {**body, "elem": body["elem"].listed()}}
    return obj


def compact_json(document: Any) -> str:
    """DOCUMENT (an nft batch, a record) as compact JSON, set elements written by `json_default`.

    Neither holds cycles, so the encoder need not look for them; no spaces after separators.
    Each saves ~20% of the encoder's time for a 6 MB batch of 10,000 policies (issue 15).
    """
    return json.dumps(document, default=json_default, check_circular=False, separators=(",", ":"))


def json_default(value: object) -> Any:
    """`json.dumps(..., default=json_default)`: set elements are written as the nft JSON list,
    packed IPv4 intervals (a journaled set change) as their packed text, as the state record keeps
    a set's elements (`AddressElements.packed_text`; `kernel/journal.py` reads it back)."""
    if isinstance(value, AddressElements):
        return value.listed()
    if isinstance(value, Ipv4Intervals):
        return AddressElements(4, value).packed_text()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")
