"""Constructors for libnftables JSON expressions and statements.

The compiler builds rules out of these instead of text so that the ruleset has one
machine-readable form; `nfttext` renders it for people and `nft -j -f` loads it.
Address-set elements are written the way nft lists them (`address_element`) and read
back into intervals (`element_interval`) when apply sends them over netlink.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from typing import Any

from markroute.values import Interval

Expr = dict[str, Any]
FAMILY = "inet"
ADDRESS_SET_TYPES = {4: "ipv4_addr", 6: "ipv6_addr"}
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


def named_set(table_name: str, name: str, kind: str, elements: list[Any]) -> Expr:
    return {
        "set": {
            "family": FAMILY,
            "table": table_name,
            "name": name,
            "type": kind,
            "flags": ["interval"],
            "elem": elements,
        }
    }


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
