"""Reading and validating markroute.yaml into a `Model`.

Validation never stops at the first problem: every mistake becomes a diagnostic with the
file, line and column where it was written, so `markroute check` shows them all at once.
Only when there is no error is a `Model` built.
"""

from __future__ import annotations

import difflib
import ipaddress
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from markroute import marks
from markroute.diagnostics import ConfigError, Diagnostic, Diagnostics, Where
from markroute.model import (
    SPECIAL_TARGETS,
    Addresses,
    Group,
    HealthCheck,
    Inbound,
    Match,
    Model,
    Nat,
    Policy,
    Settings,
    Uplink,
)
from markroute.source import Node, SourceError, load
from markroute.values import (
    PORT_PROTOCOLS,
    AddressList,
    Interval,
    address_list,
    merge,
    parse_address,
    parse_dscp,
    parse_mac,
    parse_mark,
    parse_port,
    parse_protocol,
)

DEFAULT_PATH = "/etc/markroute/markroute.yaml"

TOP_KEYS = ("uplinks", "groups", "policies", "sets", "settings")
UPLINK_KEYS = ("interface", "gateway", "gateway6", "nat", "ingress", "inbound", "table", "mark", "check")
MATCH_KEYS = ("from", "to", "proto", "sport", "dport", "iif", "mac", "dscp", "local", "not")
POLICY_KEYS = ("name", "via", *MATCH_KEYS)
SETTINGS_KEYS = (
    "mark_mask", "rule_priority", "table_base", "rp_filter", "last_resort",
    "reply_via_ingress", "forwarding",
)
CHECK_KEYS = ("targets", "method", "interval", "timeout", "down", "up", "max_loss", "max_rtt")
RESERVED_TABLES = {0: "unspec", 253: "default", 254: "main", 255: "local"}
NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,30}$")
INTERFACE = re.compile(r"^[^\s/:'\"]{1,15}$")
T = TypeVar("T")


def config_path(option: str | None) -> str:
    """`-c FILE` wins, then `$MARKROUTE_CONFIG`, then the system default."""
    return option or os.environ.get("MARKROUTE_CONFIG") or DEFAULT_PATH


def load_model(path: str) -> tuple[Model | None, list[Diagnostic]]:
    """Parse and validate; the model is None when any error was found."""
    try:
        root = load(path)
    except SourceError as exc:
        return None, [exc.diagnostic]
    return Validator(path).run(root)


def require_model(path: str) -> tuple[Model, list[Diagnostic]]:
    """Like `load_model`, but raise `ConfigError` carrying the diagnostics on error."""
    model, diagnostics = load_model(path)
    if model is None:
        raise ConfigError(diagnostics)
    return model, diagnostics


def _suggest(word: str, choices: list[str] | tuple[str, ...]) -> str | None:
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f"did you mean '{close[0]}'?" if close else None


class Validator:
    """Walks the YAML tree once, collecting diagnostics and the pieces of the model."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.diag = Diagnostics()
        self.sets: dict[str, AddressList] = {}
        self.set_where: dict[str, Where] = {}

    # -- generic helpers -------------------------------------------------------------

    def run(self, root: Node) -> tuple[Model | None, list[Diagnostic]]:
        if not self.kind(root, "map", "the config"):
            return None, self.diag.sorted()
        self.known_keys(root, TOP_KEYS, "the top level")
        settings = self.settings(root.items.get("settings"))
        self.read_sets(root.items.get("sets"))
        uplinks = self.uplinks(root.items.get("uplinks"), root, settings)
        groups = self.groups(root.items.get("groups"), uplinks)
        policies = self.policies(root.items.get("policies"), uplinks, groups)
        if not self.diag.errors:
            model = Model(self.path, uplinks, groups, tuple(policies), dict(self.sets), settings)
            self.warn_model(model)
            return model, self.diag.sorted()
        return None, self.diag.sorted()

    def kind(self, node: Node, kind: str, what: str) -> bool:
        if node.kind == kind:
            return True
        wanted = {"map": "a mapping", "seq": "a list", "scalar": "a single value"}[kind]
        self.diag.error(node.where, f"{what} must be {wanted}, not {node.describe()}")
        return False

    def known_keys(self, node: Node, allowed: tuple[str, ...], what: str) -> None:
        for key, where in node.key_where.items():
            if key not in allowed:
                self.diag.error(
                    where,
                    f"unknown key '{key}' in {what}",
                    _suggest(key, allowed) or f"allowed keys: {', '.join(allowed)}",
                )

    def scalar(self, node: Node, what: str, parse: Callable[[Any], T]) -> T | None:
        if not self.kind(node, "scalar", what):
            return None
        try:
            return parse(node.scalar)
        except ValueError as exc:
            self.diag.error(node.where, f"{what}: {exc}")
            return None

    def one_or_many(self, node: Node, what: str, parse: Callable[[Any], T]) -> list[T] | None:
        """A single value or a non-empty list of them."""
        elements = node.elements if node.kind == "seq" else [node]
        if node.kind == "seq" and not elements:
            self.diag.error(node.where, f"{what} is an empty list; it would never match")
            return None
        if node.kind == "map":
            self.diag.error(node.where, f"{what} must be a value or a list, not a mapping")
            return None
        values = [self.scalar(e, what, parse) for e in elements]
        return None if any(v is None for v in values) else values  # type: ignore[misc]

    def integer(self, node: Node, what: str, low: int, high: int) -> int | None:
        def parse(value: Any) -> int:
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"expected a whole number, got '{value}'")
            if not low <= value <= high:
                raise ValueError(f"{value} is out of range {low}-{high}")
            return value

        return self.scalar(node, what, parse)

    def choice(self, node: Node, what: str, choices: tuple[str, ...]) -> str | None:
        def parse(value: Any) -> str:
            if str(value) not in choices:
                raise ValueError(
                    f"'{value}' is not one of {', '.join(choices)}"
                    + (f"; {_suggest(str(value), choices)}" if _suggest(str(value), choices) else "")
                )
            return str(value)

        return self.scalar(node, what, parse)

    def boolean(self, node: Node, what: str) -> bool | None:
        def parse(value: Any) -> bool:
            if not isinstance(value, bool):
                raise ValueError(f"expected true or false, got '{value}'")
            return value

        return self.scalar(node, what, parse)

    def name(self, key: str, where: Where, what: str) -> bool:
        if key in SPECIAL_TARGETS:
            self.diag.error(where, f"'{key}' is reserved and cannot name {what}", "pick another name")
            return False
        if not NAME.match(key):
            self.diag.error(
                where,
                f"invalid name '{key}' for {what}",
                "start with a letter; use letters, digits and _ (at most 31 characters)",
            )
            return False
        return True

    # -- settings ---------------------------------------------------------------------

    def settings(self, node: Node | None) -> Settings:
        if node is None or not self.kind(node, "map", "settings"):
            return Settings()
        self.known_keys(node, SETTINGS_KEYS, "settings")
        values: dict[str, Any] = {}
        items = node.items
        if "mark_mask" in items:
            mask = self.scalar(items["mark_mask"], "mark_mask", parse_mark)
            if mask is not None and not marks.is_contiguous(mask):
                self.diag.error(
                    items["mark_mask"].where,
                    f"mark_mask {mask:#x} must be one run of set bits",
                    "for example 0xff00 or 0x3f00",
                )
            elif mask is not None and marks.capacity(mask) < 3:
                self.diag.error(items["mark_mask"].where, f"mark_mask {mask:#x} is too small", "give it at least two bits")
            elif mask is not None:
                values["mark_mask"] = mask
        if "rule_priority" in items:
            values["rule_priority"] = self.integer(items["rule_priority"], "rule_priority", 1, 32700)
        if "table_base" in items:
            values["table_base"] = self.integer(items["table_base"], "table_base", 1, 2**31)
        if "rp_filter" in items:
            values["rp_filter"] = self.choice(items["rp_filter"], "rp_filter", ("loose", "strict", "off"))
        if "last_resort" in items:
            values["last_resort"] = self.choice(items["last_resort"], "last_resort", SPECIAL_TARGETS)
        for key in ("reply_via_ingress", "forwarding"):
            if key in items:
                values[key] = self.boolean(items[key], key)
        return Settings(**{k: v for k, v in values.items() if v is not None})

    # -- sets -------------------------------------------------------------------------

    def read_sets(self, node: Node | None) -> None:
        if node is None or not self.kind(node, "map", "sets"):
            return
        for key, value in node.items.items():
            where = node.key_where[key]
            if not self.name(key, where, "a set"):
                continue
            self.set_where[key] = where
            if value.kind == "map":
                self.known_keys(value, ("file",), f"set '{key}'")
                file_node = value.items.get("file")
                if file_node is None:
                    self.diag.error(value.where, f"set '{key}' needs 'file:' or a list of addresses")
                    continue
                addresses = self.set_file(file_node)
            else:
                parsed = self.one_or_many(value, f"set '{key}'", parse_address)
                addresses = address_list(parsed) if parsed is not None else None
            if addresses is not None:
                self.sets[key] = addresses

    def set_file(self, node: Node) -> AddressList | None:
        if not self.kind(node, "scalar", "file"):
            return None
        path = Path(str(node.scalar))
        if not path.is_absolute():
            path = Path(self.path).resolve().parent / path
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
            self.diag.error(node.where, f"cannot read set file {path}: {reason}")
            return None
        items: list[tuple[int, Interval]] = []
        bad = 0
        for number, line in enumerate(lines, start=1):
            text = line.split("#", 1)[0].strip()
            if not text:
                continue
            try:
                items.append(parse_address(text))
            except ValueError as exc:
                bad += 1
                if bad <= 10:
                    self.diag.error(Where(str(path), number, 1), str(exc))
        if bad > 10:
            self.diag.error(node.where, f"{bad} bad lines in set file {path} (first 10 shown)")
        return address_list(items) if not bad else None

    # -- matches ----------------------------------------------------------------------

    def match(self, node: Node, what: str, keys: tuple[str, ...] = MATCH_KEYS) -> Match | None:
        """A MATCH mapping; unknown keys were already reported by the caller when shared."""
        if not self.kind(node, "map", what):
            return None
        if keys is MATCH_KEYS:
            self.known_keys(node, MATCH_KEYS, what)
        ok = True
        fields: dict[str, Any] = {}
        items = node.items
        for key, field in (("from", "src"), ("to", "dst")):
            if key in items:
                fields[field] = self.addresses(items[key], f"'{key}'")
                ok &= fields[field] is not None
        if "proto" in items:
            protocols = self.one_or_many(items["proto"], "'proto'", parse_protocol)
            fields["protocols"] = tuple(dict.fromkeys(protocols)) if protocols else None
            ok &= protocols is not None
        for key in ("sport", "dport"):
            if key in items:
                ports = self.one_or_many(items[key], f"'{key}'", parse_port)
                fields[key + "s"] = merge(ports) if ports else None
                ok &= ports is not None
        if "iif" in items:
            iifs = self.one_or_many(items["iif"], "'iif'", self.interface_name)
            fields["iifs"] = tuple(iifs) if iifs else None
            ok &= iifs is not None
        if "mac" in items:
            macs = self.one_or_many(items["mac"], "'mac'", parse_mac)
            fields["macs"] = tuple(sorted(set(macs))) if macs else None
            ok &= macs is not None
        if "dscp" in items:
            dscps = self.one_or_many(items["dscp"], "'dscp'", parse_dscp)
            fields["dscps"] = tuple(sorted(set(dscps))) if dscps else None
            ok &= dscps is not None
        if "local" in items:
            fields["local"] = self.boolean(items["local"], "'local'")
            ok &= fields["local"] is not None
        if "not" in items:
            fields["negated"] = self.match(items["not"], "'not'")
            ok &= fields["negated"] is not None
            if fields["negated"] is not None and fields["negated"].is_empty:
                self.diag.error(items["not"].where, "'not' with no conditions would never match")
                ok = False
            elif fields["negated"] is not None and fields["negated"].negated is not None:
                self.diag.error(items["not"].items["not"].where, "'not' inside 'not' is not supported",
                                "write the doubly negated condition directly")
                ok = False
            elif fields["negated"] is not None and fields["negated"].local is not None:
                self.diag.error(items["not"].items["local"].where, "write 'local' outside 'not'",
                                "local: false means only forwarded traffic")
                ok = False
        if not ok:
            return None
        result = Match(**fields)
        return result if self.consistent(result, node) else None

    def consistent(self, match: Match, node: Node) -> bool:
        """Reject combinations no packet can satisfy, at the key that makes them so."""
        items = node.items
        if (match.sports or match.dports) and match.protocols is not None:
            if not set(match.protocols) & PORT_PROTOCOLS:
                key = "sport" if match.sports else "dport"
                self.diag.error(items[key].where, "ports need proto tcp, udp or sctp", "add proto: tcp or drop the port")
                return False
        if not match.versions:
            self.diag.error(
                node.where,
                "this match mixes IPv4 and IPv6 so no packet can satisfy it",
                "split it into one policy per family",
            )
            return False
        if match.local is True and (match.iifs or match.macs):
            key = "iif" if match.iifs else "mac"
            self.diag.error(
                items[key].where,
                f"'{key}' never matches router-originated traffic (local: true)",
                "remove one of them",
            )
            return False
        return True

    def addresses(self, node: Node, what: str) -> Addresses | None:
        elements = node.elements if node.kind == "seq" else [node]
        if node.kind == "map" or (node.kind == "seq" and not elements):
            self.diag.error(node.where, f"{what} must be an address, prefix, range, @set or a non-empty list of them")
            return None
        items: list[tuple[int, Interval]] = []
        set_names: list[str] = []
        ok = True
        for element in elements:
            if not self.kind(element, "scalar", what):
                ok = False
                continue
            text = str(element.scalar).strip()
            if text.startswith("@"):
                name = text[1:]
                if name not in self.sets:
                    known = list(self.sets) + [n for n in self.set_where if n not in self.sets]
                    if name in self.set_where:
                        ok = False  # the set itself is broken and was reported there
                        continue
                    self.diag.error(element.where, f"unknown set '@{name}'", _suggest(name, known) or "define it under 'sets:'")
                    ok = False
                    continue
                set_names.append(name)
                items += [(4, iv) for iv in self.sets[name].v4] + [(6, iv) for iv in self.sets[name].v6]
                continue
            try:
                items.append(parse_address(text))
            except ValueError as exc:
                self.diag.error(element.where, f"{what}: {exc}")
                ok = False
        if not ok:
            return None
        single_set = set_names[0] if len(elements) == 1 and set_names else None
        if single_set is not None:
            return Addresses(self.sets[single_set], single_set)
        return Addresses(address_list(items))

    @staticmethod
    def interface_name(value: Any) -> str:
        text = str(value)
        if not INTERFACE.match(text):
            raise ValueError(f"'{text}' is not a valid interface name (1-15 characters, no spaces, '/' or ':')")
        return text

    # -- uplinks ----------------------------------------------------------------------

    def uplinks(self, node: Node | None, root: Node, settings: Settings) -> dict[str, Uplink]:
        if node is None:
            self.diag.error(root.where, "no 'uplinks:' defined", "describe at least one way out: interface and gateway")
            return {}
        if not self.kind(node, "map", "uplinks"):
            return {}
        if not node.items:
            self.diag.error(node.where, "'uplinks:' is empty", "describe at least one uplink")
        drafts: list[tuple[str, dict[str, Any], Node]] = []
        for key, value in node.items.items():
            where = node.key_where[key]
            if not self.name(key, where, "an uplink") or not self.kind(value, "map", f"uplink '{key}'"):
                continue
            fields = self.uplink_fields(key, value)
            if fields is not None:
                drafts.append((key, fields, value))
        self.shared_interfaces(drafts)
        return self.allocate(drafts, settings)

    def uplink_fields(self, name: str, node: Node) -> dict[str, Any] | None:
        self.known_keys(node, UPLINK_KEYS, f"uplink '{name}'")
        items = node.items
        fields: dict[str, Any] = {"where": node.where}
        ok = True
        if "interface" not in items:
            self.diag.error(node.where, f"uplink '{name}' has no 'interface'", "add interface: eth0 (the device it leaves by)")
            ok = False
        else:
            fields["interface"] = self.scalar(items["interface"], "interface", self.interface_name)
            ok &= fields["interface"] is not None
        for key, version in (("gateway", 4), ("gateway6", 6)):
            if key in items:
                fields[key] = self.scalar(items[key], key, lambda v, ver=version, k=key: _gateway(v, ver, k))
                ok &= fields[key] is not None
        if "nat" in items:
            fields["nat"] = self.nat(items["nat"])
            ok &= fields["nat"] is not None
        if "ingress" in items:
            fields["ingress"] = self.match(items["ingress"], f"ingress of '{name}'")
            ok &= fields["ingress"] is not None
            if fields["ingress"] is not None and fields["ingress"].local is not None:
                self.diag.error(items["ingress"].items["local"].where, "'local' has no meaning in an ingress match")
                ok = False
        if "inbound" in items:
            fields["inbound"] = self.inbound(items["inbound"], name)
            ok &= fields["inbound"] is not None
        for key in ("table", "mark"):
            if key in items:
                fields["pinned_" + key] = (self.scalar(items[key], key, parse_mark), items[key].where)
                ok &= fields["pinned_" + key][0] is not None
        if "check" in items:
            fields["check"] = self.health_check(items["check"], name)
            ok &= fields["check"] is not None
        return fields if ok else None

    def nat(self, node: Node) -> Nat | None:
        if node.kind == "scalar":
            value = self.choice(node, "nat", ("masquerade", "none"))
            return Nat(value) if value else None  # type: ignore[arg-type]
        if not self.kind(node, "map", "nat"):
            return None
        self.known_keys(node, ("snat",), "nat")
        if "snat" not in node.items:
            self.diag.error(node.where, "nat must be masquerade, none or {snat: ADDRESS}")
            return None

        def parse(value: Any) -> str:
            try:
                return str(ipaddress.ip_address(str(value)))
            except ValueError:
                raise ValueError(f"'{value}' is not an IP address") from None

        address = self.scalar(node.items["snat"], "snat", parse)
        return Nat("snat", address) if address else None

    def inbound(self, node: Node, name: str) -> Inbound | None:
        if not self.kind(node, "map", "inbound"):
            return None
        self.known_keys(node, ("policy", "allow"), f"inbound of '{name}'")
        policy = "accept"
        if "policy" in node.items:
            chosen = self.choice(node.items["policy"], "inbound policy", ("accept", "drop"))
            if chosen is None:
                return None
            policy = chosen
        allow: list[Match] = []
        if "allow" in node.items:
            allow_node = node.items["allow"]
            if not self.kind(allow_node, "seq", "allow"):
                return None
            for element in allow_node.elements:
                match = self.match(element, "an allow entry")
                if match is None:
                    return None
                allow.append(match)
            if policy == "accept" and allow:
                self.diag.warning(allow_node.where, "'allow' has no effect with policy accept", "set policy: drop")
        return Inbound(policy, tuple(allow))  # type: ignore[arg-type]

    def health_check(self, node: Node, name: str) -> HealthCheck | None:
        if not self.kind(node, "map", "check"):
            return None
        self.known_keys(node, CHECK_KEYS, f"check of '{name}'")
        items = node.items
        fields: dict[str, Any] = {}
        if "targets" in items:
            targets = self.one_or_many(items["targets"], "targets", _probe_target)
            if targets is None:
                return None
            fields["targets"] = tuple(targets)
        if "method" in items:
            fields["method"] = self.choice(items["method"], "method", ("icmp", "tcp", "arp"))
        for key in ("interval", "timeout", "max_rtt"):
            if key in items:
                fields[key] = self.scalar(items[key], key, _seconds)
        for key in ("down", "up"):
            if key in items:
                fields[key] = self.integer(items[key], key, 1, 100)
        if "max_loss" in items:
            fields["max_loss"] = self.scalar(items["max_loss"], "max_loss", _fraction)
        if any(v is None for v in fields.values()):
            return None
        check = HealthCheck(**fields)
        if check.method == "tcp" and any(":" not in t.rsplit("]", 1)[-1] for t in check.targets):
            self.diag.error(items.get("targets", node).where, "tcp checks need targets as host:port")
            return None
        return check

    def shared_interfaces(self, drafts: list[tuple[str, dict[str, Any], Node]]) -> None:
        plain: dict[str, str] = {}
        for name, fields, node in drafts:
            if fields.get("ingress") is not None:
                continue
            interface = fields["interface"]
            if interface in plain:
                self.diag.error(
                    node.items["interface"].where,
                    f"uplinks '{plain[interface]}' and '{name}' share interface {interface} "
                    "and nothing tells their connections apart",
                    f"give '{name}' an ingress: match, e.g. the router's MAC: ingress: {{mac: ...}}",
                )
            else:
                plain[interface] = name

    def allocate(self, drafts: list[tuple[str, dict[str, Any], Node]], settings: Settings) -> dict[str, Uplink]:
        """Give every uplink a mark and a table: pinned ones first, then the free ones in order."""
        mask = settings.mark_mask
        allowed_marks = [marks.value(mask, i) for i in marks.uplink_marks(mask)]
        foreign = marks.foreign_values(mask)
        used_marks: dict[int, str] = {}
        used_tables: dict[int, str] = {}
        for name, fields, _ in drafts:
            if "pinned_mark" in fields:
                mark, where = fields["pinned_mark"]
                if mark & ~mask or mark == 0:
                    self.diag.error(where, f"mark {mark:#x} of '{name}' does not fit mark_mask {mask:#x}",
                                    f"use a non-zero value made only of the mask's bits, e.g. {allowed_marks[0]:#x}")
                elif mark not in allowed_marks:
                    self.diag.error(where, f"mark {mark:#x} is reserved for markroute's unreachable/blackhole rules")
                elif mark in used_marks:
                    self.diag.error(where, f"mark {mark:#x} of '{name}' is already used by '{used_marks[mark]}'")
                else:
                    used_marks[mark] = name
            if "pinned_table" in fields:
                table, where = fields["pinned_table"]
                if table in RESERVED_TABLES:
                    self.diag.error(where, f"table {table} is the kernel's '{RESERVED_TABLES[table]}' table", "pick another id")
                elif table in used_tables:
                    self.diag.error(where, f"table {table} of '{name}' is already used by '{used_tables[table]}'")
                else:
                    used_tables[table] = name
        free_marks = iter(m for m in allowed_marks if m not in used_marks and m not in foreign)
        next_table = settings.table_base
        uplinks: dict[str, Uplink] = {}
        for name, fields, node in drafts:
            mark = fields.pop("pinned_mark", (None, None))[0]
            table = fields.pop("pinned_table", (None, None))[0]
            if mark is None:
                mark = next(free_marks, None)
                if mark is None:
                    self.diag.error(node.where, f"no mark left in mark_mask {mask:#x} for '{name}'", "widen mark_mask")
                    continue
            if table is None:
                while next_table in used_tables or next_table in RESERVED_TABLES:
                    next_table += 1
                table = next_table
                used_tables[table] = name
            uplinks[name] = Uplink(name=name, mark=mark, table=table, **fields)
        return uplinks

    # -- groups -----------------------------------------------------------------------

    def groups(self, node: Node | None, uplinks: dict[str, Uplink]) -> dict[str, Group]:
        if node is None or not self.kind(node, "map", "groups"):
            return {}
        names = list(node.items)
        groups: dict[str, Group] = {}
        for key, value in node.items.items():
            where = node.key_where[key]
            if not self.name(key, where, "a group") or not self.kind(value, "map", f"group '{key}'"):
                continue
            if key in uplinks:
                self.diag.error(where, f"'{key}' names both an uplink and a group", "rename one of them")
                continue
            self.known_keys(value, ("balance", "failover"), f"group '{key}'")
            kinds = [k for k in ("balance", "failover") if k in value.items]
            if len(kinds) != 1:
                self.diag.error(value.where, f"group '{key}' needs exactly one of 'balance' or 'failover'")
                continue
            group = self.group_members(key, kinds[0], value.items[kinds[0]], uplinks, names)
            if group is not None:
                groups[key] = group
        self.cycles(groups)
        return groups

    def group_members(
        self, name: str, kind: str, node: Node, uplinks: dict[str, Uplink], groups: list[str]
    ) -> Group | None:
        members: list[tuple[str, int, Node]] = []
        if kind == "balance":
            if not self.kind(node, "map", f"balance of '{name}'"):
                return None
            for member, weight_node in node.items.items():
                weight = self.scalar(weight_node, f"weight of '{member}'", _weight)
                if weight is not None:
                    members.append((member, weight, weight_node))
                else:
                    return None
            wheres = {m: node.key_where[m] for m, _, _ in members}
        else:
            if not self.kind(node, "seq", f"failover of '{name}'"):
                return None
            for element in node.elements:
                if self.kind(element, "scalar", "a failover member"):
                    members.append((str(element.scalar), 1, element))
            wheres = {m: n.where for m, _, n in members}
        if not members:
            self.diag.error(node.where, f"group '{name}' has no members")
            return None
        ok = True
        seen: set[str] = set()
        for member, _, _ in members:
            where = wheres[member]
            if member in seen:
                self.diag.error(where, f"'{member}' is listed twice in group '{name}'")
                ok = False
            seen.add(member)
            if member not in uplinks and member not in groups:
                self.diag.error(where, f"unknown uplink or group '{member}' in group '{name}'",
                                _suggest(member, list(uplinks) + groups))
                ok = False
            elif member == name:
                self.diag.error(where, f"group '{name}' contains itself")
                ok = False
        if not ok:
            return None
        return Group(name, kind, tuple((m, w) for m, w, _ in members), node.where)  # type: ignore[arg-type]

    def cycles(self, groups: dict[str, Group]) -> None:
        state: dict[str, int] = {}

        def visit(name: str, path: list[str]) -> None:
            state[name] = 1
            for member, _ in groups[name].members:
                if member not in groups:
                    continue
                if state.get(member) == 1:
                    cycle = path[path.index(member):] + [member] if member in path else [name, member]
                    self.diag.error(groups[member].where, f"groups form a cycle: {' -> '.join(cycle)}",
                                    "a group may not contain itself, directly or through other groups")
                elif member not in state:
                    visit(member, path + [member])
            state[name] = 2

        for name in groups:
            if name not in state:
                visit(name, [name])

    # -- policies ---------------------------------------------------------------------

    def policies(self, node: Node | None, uplinks: dict[str, Uplink], groups: dict[str, Group]) -> list[Policy]:
        if node is None or not self.kind(node, "seq", "policies"):
            return []
        targets = list(uplinks) + list(groups) + list(SPECIAL_TARGETS)
        policies: list[Policy] = []
        names: dict[str, Where] = {}
        for index, element in enumerate(node.elements, start=1):
            if not self.kind(element, "map", f"policy #{index}"):
                continue
            self.known_keys(element, POLICY_KEYS, f"policy #{index}")
            name = f"policy-{index}"
            if "name" in element.items:
                given = self.scalar(element.items["name"], "name", _policy_name)
                if given is None:
                    continue
                name = given
            if name in names:
                self.diag.error(element.items.get("name", element).where,
                                f"policy name '{name}' is already used at line {names[name].line}")
                continue
            names[name] = element.where
            if "via" not in element.items:
                self.diag.error(element.where, f"policy '{name}' has no 'via'", "add via: UPLINK, GROUP or main")
                continue
            via_node = element.items["via"]
            if not self.kind(via_node, "scalar", "via"):
                continue
            via = str(via_node.scalar)
            if via not in targets:
                self.diag.error(via_node.where, f"unknown uplink or group '{via}' in policy '{name}'",
                                _suggest(via, targets) or f"known: {', '.join(targets)}")
                continue
            match = self.match(element, f"policy '{name}'", keys=POLICY_KEYS)
            if match is None:
                continue
            policy = Policy(name, match, via, element.where)
            if self.reachable_family(policy, uplinks, groups, via_node):
                policies.append(policy)
        return policies

    def reachable_family(self, policy: Policy, uplinks: dict[str, Uplink], groups: dict[str, Group], via: Node) -> bool:
        model = Model(self.path, uplinks, groups)
        if policy.match.versions & model.target_versions(policy.via):
            return True
        family = "IPv6" if policy.match.versions == {6} else "IPv4"
        self.diag.error(via.where, f"policy '{policy.name}' matches only {family} but '{policy.via}' has no {family} gateway",
                        f"add gateway{'6' if family == 'IPv6' else ''}: to the uplink or pick another via")
        return False

    # -- warnings ---------------------------------------------------------------------

    def warn_model(self, model: Model) -> None:
        from markroute.analysis import model_warnings

        for where, message, hint in model_warnings(model):
            self.diag.warning(where, message, hint)


def _gateway(value: Any, version: int, key: str) -> str:
    try:
        address = ipaddress.ip_address(str(value))
    except ValueError:
        raise ValueError(f"'{value}' is not an IP address") from None
    if address.version != version:
        other = "gateway6" if version == 4 else "gateway"
        raise ValueError(f"{address} is IPv{address.version}; write it as '{other}:'")
    return str(address)


def _weight(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"'{value}' is not a positive whole number")
    if value > 1000:
        raise ValueError(f"{value} is too large (at most 1000)")
    return value


def _seconds(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        text = str(value).strip()
        factor = 0.001 if text.endswith("ms") else 1.0
        try:
            value = float(text.removesuffix("ms").removesuffix("s")) * factor
        except ValueError:
            raise ValueError(f"'{text}' is not a duration (e.g. 0.2, 200ms, 1s)") from None
    if not 0 < float(value) <= 3600:
        raise ValueError(f"{value} is out of range (0-3600 s)")
    return float(value)


def _fraction(value: Any) -> float:
    text = str(value).strip()
    try:
        number = float(text.removesuffix("%")) / (100 if text.endswith("%") else 1)
    except ValueError:
        raise ValueError(f"'{text}' is not a fraction (e.g. 0.2 or 20%)") from None
    if not 0 <= number <= 1:
        raise ValueError(f"{text} is out of range 0-1")
    return number


def _probe_target(value: Any) -> str:
    text = str(value).strip()
    host = text
    if text.startswith("["):
        host = text[1:].split("]", 1)[0]
    elif text.count(":") == 1:
        host, _, port = text.partition(":")
        parse_port(port)
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"'{text}' is not an address or address:port") from None
    return text


def _policy_name(value: Any) -> str:
    text = str(value)
    if not text or len(text) > 64 or '"' in text or "\\" in text or not text.isprintable():
        raise ValueError(f"'{text}' is not a usable policy name (1-64 printable characters, no quotes)")
    return text


__all__ = ["DEFAULT_PATH", "config_path", "load_model", "require_model", "ConfigError"]
