"""Constructors for libnftables JSON expressions and statements.

The compiler builds rules out of these instead of text so that the ruleset has one
machine-readable form; `nfttext` renders it for people and `nft -j -f` loads it.
"""

from __future__ import annotations

from typing import Any

Expr = dict[str, Any]
FAMILY = "inet"
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
