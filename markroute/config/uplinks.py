"""The `uplinks:` section: each uplink's fields, checked one by one, as drafts.

A draft is everything an uplink says except the mark and table it gets: those are handed
out over all uplinks at once (`allocation.allocate`). An uplink that is itself wrong is
named in `broken` so that later references to it are not reported again.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any

from markroute import match as match_keys
from markroute.config.reader import MatchReader, Reader
from markroute.config.source import Node
from markroute.diagnostics import Where
from markroute.model import HealthCheck, Inbound, Match, Nat
from markroute.probes import METHODS
from markroute.values import (
    parse_fraction,
    parse_gateway,
    parse_interface,
    parse_ip,
    parse_mark,
    parse_seconds,
    parse_table,
)

UPLINK_KEYS = ("interface", "gateway", "gateway6", "nat", "ingress", "inbound", "table", "mark", "check")
CHECK_KEYS = ("targets", "method", "interval", "timeout", "down", "up", "max_loss", "max_rtt", "min_up", "expect")
Draft = tuple[str, dict[str, Any], Node]  # name, Uplink fields (a pinned mark/table with its Where), node


@dataclass
class UplinkDrafts:
    """The valid uplinks in the order written, and the names of the invalid ones."""

    drafts: list[Draft] = field(default_factory=list)
    broken: set[str] = field(default_factory=set)


def read_uplinks(reader: Reader, node: Node | None, root: Node, match: MatchReader) -> UplinkDrafts:
    found = UplinkDrafts()
    if node is None:
        reader.diag.error(root.where, "no 'uplinks:' defined", "describe at least one way out: interface and gateway")
        return found
    if not reader.kind(node, "map", "uplinks"):
        return found
    if not node.items and not node.odd_keys:
        reader.diag.error(node.where, "'uplinks:' is empty", "describe at least one uplink")
    for key, value in node.items.items():
        where = node.key_where[key]
        if not reader.name(key, where, "an uplink"):
            continue
        fields = uplink_fields(reader, match, key, value, where) if reader.kind(value, "map", f"uplink '{key}'") else None
        if fields is None:
            found.broken.add(key)
        else:
            found.drafts.append((key, fields, value))
    shared_interfaces(reader, found.drafts)
    return found


def uplink_fields(reader: Reader, match: MatchReader, name: str, node: Node, where: Where) -> dict[str, Any] | None:
    reader.known_keys(node, UPLINK_KEYS, f"uplink '{name}'")
    items = node.items
    fields: dict[str, Any] = {"where": where}
    ok = True
    if "interface" not in items:
        reader.diag.error(node.where, f"uplink '{name}' has no 'interface'",
                          "add interface: eth0 (the device it leaves by)")
        ok = False
    else:
        fields["interface"] = reader.scalar(items["interface"], "interface", parse_interface)
        ok &= fields["interface"] is not None
    for key, version in (("gateway", 4), ("gateway6", 6)):
        if key in items:
            fields[key] = reader.scalar(items[key], key, functools.partial(parse_gateway, version=version))
            ok &= fields[key] is not None
    if "nat" in items:
        fields["nat"] = nat(reader, items["nat"], name, fields)
        ok &= fields["nat"] is not None
    if "ingress" in items:
        fields["ingress"] = ingress(reader, match, items["ingress"], name)
        ok &= fields["ingress"] is not None
    if "inbound" in items:
        fields["inbound"] = inbound(reader, match, items["inbound"], name)
        ok &= fields["inbound"] is not None
    for key, parse in (("table", parse_table), ("mark", parse_mark)):
        if key in items:
            fields["pinned_" + key] = (reader.scalar(items[key], key, parse), items[key].where)
            ok &= fields["pinned_" + key][0] is not None
    if "check" in items:
        fields["check"] = health_check(reader, items["check"], name)
        ok &= fields["check"] is not None
    return fields if ok else None


def nat(reader: Reader, node: Node, name: str, fields: dict[str, Any]) -> Nat | None:
    if node.kind == "scalar":
        value = reader.choice(node, "nat", ("masquerade", "none"))
        return Nat(value) if value else None  # type: ignore[arg-type]
    if not reader.kind(node, "map", "nat"):
        return None
    reader.known_keys(node, ("snat",), "nat")
    if "snat" not in node.items:
        if not node.items:  # otherwise the unknown key was reported
            reader.diag.error(node.where, "nat must be masquerade, none or {snat: ADDRESS}")
        return None
    address = reader.scalar(node.items["snat"], "snat", parse_ip)
    if address is None:
        return None
    version = 6 if ":" in address else 4
    gateways = {4: fields.get("gateway"), 6: fields.get("gateway6")}
    if any(gateways.values()) and not gateways[version]:
        reader.diag.error(node.items["snat"].where,
                          f"snat address {address} is IPv{version} but uplink '{name}' has no IPv{version} gateway",
                          "use an address of the uplink's own family")
        return None
    return Nat("snat", address)


def ingress(reader: Reader, match: MatchReader, node: Node, name: str) -> Match | None:
    found = match(node, f"ingress of '{name}'")
    if found is None:
        return None
    for key in match_keys.KEYS:
        if key.in_ingress is not None and key.value(found) is not None:
            reader.diag.error(node.items[key.key].where, *key.in_ingress)
            return None
    if found.is_empty:
        if not node.items:  # otherwise its unknown keys were reported
            reader.diag.error(node.where, f"ingress of '{name}' is empty",
                              "leave ingress out to take every connection arriving on the interface")
        return None
    return found


def inbound(reader: Reader, match: MatchReader, node: Node, name: str) -> Inbound | None:
    if not reader.kind(node, "map", "inbound"):
        return None
    reader.known_keys(node, ("policy", "allow"), f"inbound of '{name}'")
    policy = "accept"
    if "policy" in node.items:
        chosen = reader.choice(node.items["policy"], "inbound policy", ("accept", "drop"))
        if chosen is None:
            return None
        policy = chosen
    allow: list[Match] = []
    if "allow" in node.items:
        allow_node = node.items["allow"]
        if not reader.kind(allow_node, "seq", "allow"):
            return None
        matches = [match(element, "an allow entry") for element in allow_node.elements]
        if any(m is None for m in matches):
            return None
        allow = [m for m in matches if m is not None]
        if policy == "accept" and allow:
            reader.diag.warning(allow_node.where, "'allow' has no effect with policy accept", "set policy: drop")
    return Inbound(policy, tuple(allow))  # type: ignore[arg-type]


def health_check(reader: Reader, node: Node, name: str) -> HealthCheck | None:
    if not reader.kind(node, "map", "check"):
        return None
    reader.known_keys(node, CHECK_KEYS, f"check of '{name}'")
    items = node.items
    fields: dict[str, Any] = {}
    named = items["method"].scalar if "method" in items else HealthCheck.method
    method = METHODS.get(str(named), METHODS[HealthCheck.method])  # a wrong name is reported below
    if "targets" in items:
        targets = reader.one_or_many(items["targets"], "targets", method.parse_target)
        fields["targets"] = tuple(targets) if targets is not None else None
    if "method" in items:
        fields["method"] = reader.choice(items["method"], "method", tuple(METHODS))
    for key in ("interval", "timeout", "max_rtt"):
        if key in items:
            fields[key] = reader.scalar(items[key], key, parse_seconds)
    for key in ("down", "up", "min_up"):
        if key in items:
            fields[key] = reader.integer(items[key], key, 1, 100)
    if "max_loss" in items:
        fields["max_loss"] = reader.scalar(items["max_loss"], "max_loss", parse_fraction)
    if "expect" in items:
        expect = reader.one_or_many(items["expect"], "expect", method.parse_expect)
        fields["expect"] = tuple(expect) if expect is not None else None
    if any(v is None for v in fields.values()):
        return None
    check = HealthCheck(**fields)
    if check.min_up > max(1, len(check.targets)):
        reader.diag.error(items["min_up"].where, f"min_up {check.min_up} but only {len(check.targets)} targets",
                          "min_up counts the targets that must answer in a round; list at least that many")
        return None
    problem = METHODS[check.method].invalid_targets(check.targets)
    if problem is not None:
        reader.diag.error(items.get("targets", node).where, problem)
        return None
    return check


def shared_interfaces(reader: Reader, drafts: list[Draft]) -> None:
    """Several uplinks may share an interface only if all but one say how to recognise theirs."""
    plain: dict[str, str] = {}
    for name, fields, node in drafts:
        if fields.get("ingress") is not None:
            continue
        interface = fields["interface"]
        if interface in plain:
            reader.diag.error(
                node.items["interface"].where,
                f"uplinks '{plain[interface]}' and '{name}' share interface {interface} "
                "and nothing tells their connections apart",
                f"give '{name}' an ingress: match, e.g. the router's MAC: ingress: {{mac: ...}}",
            )
        else:
            plain[interface] = name
