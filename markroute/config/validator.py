"""Reading and validating markroute.yaml into a `Model`.

Validation never stops at the first problem: every mistake becomes a diagnostic with the
file, line and column where it was written, so `markroute check` shows them all at once.
Only when there is no error is a `Model` built.

A mistake is reported once, where it was made: an uplink, group or set that is itself
invalid is remembered as broken, and later references to it are skipped silently
instead of being called "unknown".
"""

from __future__ import annotations

import difflib
import functools
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from markroute import marks
from markroute import match as match_keys
from markroute.config import dynamicsets
from markroute.config.source import Node, SourceError, byte_position, load
from markroute.config.warnings import model_warnings
from markroute.diagnostics import Diagnostic, Diagnostics, Where
from markroute.match import NOT, MatchKey
from markroute.model import (
    SPECIAL_TARGETS,
    Addresses,
    DynamicSet,
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
from markroute.values import (
    FOREIGN_TABLES,
    RESERVED_TABLES,
    AddressList,
    Interval,
    address_list,
    ipv4_lines,
    parse_address,
    parse_argument,
    parse_bool,
    parse_fraction,
    parse_gateway,
    parse_interface,
    parse_ip,
    parse_mark,
    parse_policy_name,
    parse_probe_target,
    parse_seconds,
    parse_table,
    parse_weight,
    parse_whole,
    yaml_text,
)

DEFAULT_PATH = "/etc/markroute/markroute.yaml"

TOP_KEYS = ("uplinks", "groups", "policies", "sets", "settings")
UPLINK_KEYS = ("interface", "gateway", "gateway6", "nat", "ingress", "inbound", "table", "mark", "check")
MATCH_KEYS = match_keys.YAML_KEYS
POLICY_KEYS = ("name", "via", *MATCH_KEYS)
SETTINGS_KEYS = (
    "mark_mask", "rule_priority", "table_base", "rp_filter", "last_resort",
    "reply_via_ingress", "forwarding", "on_change", "exec", *dynamicsets.DNS_KEYS,
)
CHECK_KEYS = ("targets", "method", "interval", "timeout", "down", "up", "max_loss", "max_rtt")
NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,30}$")
MAX_BAD_SET_LINES = 10
T = TypeVar("T")
Draft = tuple[str, dict[str, Any], Node]


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


def suggest(word: str, choices: list[str] | tuple[str, ...]) -> str | None:
    """A did-you-mean hint for a misspelt key or name, or None when nothing is close.

    Typing slips (a letter dropped, doubled, swapped) are found by edit distance, which
    ranks 'dprot' next to 'dport' rather than 'proto'; longer misrememberings
    ('streams' for 'streaming') by difflib's similarity.
    """
    distances = [(_edit_distance(word, choice), index) for index, choice in enumerate(choices)]
    near = [d for d in distances if d[0] <= max(1, len(word) // 3)]
    if near:
        return f"did you mean '{choices[min(near)[1]]}'?"
    started = [choice for choice in choices if len(word) >= 3 and choice.startswith(word)]
    if len(started) == 1:
        return f"did you mean '{started[0]}'?"
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f"did you mean '{close[0]}'?" if close else None


def _edit_distance(a: str, b: str) -> int:
    """Insertions, deletions, substitutions and swaps of neighbours needed to turn a into b."""
    previous2: list[int] = []
    previous = list(range(len(b) + 1))
    for i, char_a in enumerate(a, start=1):
        current = [i] + [0] * len(b)
        for j, char_b in enumerate(b, start=1):
            current[j] = min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (char_a != char_b))
            if i > 1 and j > 1 and char_a == b[j - 2] and a[i - 2] == char_b:
                current[j] = min(current[j], previous2[j - 2] + 1)
        previous2, previous = previous, current
    return previous[-1]


class Validator:
    """Walks the YAML tree once, collecting diagnostics and the pieces of the model."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.diag = Diagnostics()
        self.sets: dict[str, AddressList] = {}
        self.set_where: dict[str, Where] = {}
        self.used_sets: set[str] = set()
        self.dynamic_sets: dict[str, DynamicSet] = {}
        self.broken: set[str] = set()  # declared uplinks/groups that are invalid: reported already

    # -- generic helpers -------------------------------------------------------------

    def run(self, root: Node) -> tuple[Model | None, list[Diagnostic]]:
        if root.kind == "map" and not root.items and not root.odd_keys:
            self.diag.error(root.where, "the config is empty",
                            "start with 'uplinks:' and describe at least one way out: interface and gateway")
            return None, self.diag.sorted()
        if not self.kind(root, "map", "the config"):
            return None, self.diag.sorted()
        self.odd_keys(root)
        self.known_keys(root, TOP_KEYS, "the top level")
        settings = self.settings(root.items.get("settings"))
        self.read_sets(root.items.get("sets"))
        uplinks = self.uplinks(root.items.get("uplinks"), root, settings)
        groups = self.groups(root.items.get("groups"), uplinks)
        policies = self.policies(root.items.get("policies"), uplinks, groups)
        if self.diag.errors:
            return None, self.diag.sorted()
        model = Model(self.path, uplinks, groups, tuple(policies), dict(self.sets), settings, dict(self.dynamic_sets))
        self.warn_unused_sets()
        self.warn_model(model)
        return model, self.diag.sorted()

    def odd_keys(self, node: Node) -> None:
        """Every mapping key that is not text (a number, null, a list) is a mistake."""
        for key, where in node.odd_keys.items():
            self.diag.error(where, f"key {key} is not text", "names start with a letter; quote the key if you must")
        for child in list(node.items.values()) + node.elements:
            self.odd_keys(child)

    def kind(self, node: Node, kind: str, what: str) -> bool:
        if node.kind == kind:
            return True
        wanted = {"map": "a mapping", "seq": "a list", "scalar": "a single value"}[kind]
        hint = "write key: value pairs under it" if kind == "map" and node.describe() == "nothing (null)" else None
        self.diag.error(node.where, f"{what} must be {wanted}, not {node.describe()}", hint)
        return False

    def known_keys(self, node: Node, allowed: tuple[str, ...], what: str) -> None:
        for key, where in node.key_where.items():
            if key not in allowed:
                self.diag.error(
                    where,
                    f"unknown key '{key}' in {what}",
                    suggest(key, allowed) or f"allowed keys: {', '.join(allowed)}",
                )

    def scalar(self, node: Node, what: str, parse: Callable[[Any], T]) -> T | None:
        if not self.kind(node, "scalar", what):
            return None
        if node.scalar is None:
            self.diag.error(node.where, f"{what} has no value", "write a value after the ':' or remove the key")
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
        present = [v for v in values if v is not None]
        return present if len(present) == len(values) else None

    def integer(self, node: Node, what: str, low: int, high: int) -> int | None:
        return self.scalar(node, what, lambda value: parse_whole(value, low, high))

    def choice(self, node: Node, what: str, choices: tuple[str, ...]) -> str | None:
        def parse(value: Any) -> str:
            text = yaml_text(value)
            if text not in choices:
                close = suggest(text, choices)
                raise ValueError(f"'{text}' is not one of {', '.join(choices)}" + (f"; {close}" if close else ""))
            return text

        return self.scalar(node, what, parse)

    def boolean(self, node: Node, what: str) -> bool | None:
        return self.scalar(node, what, parse_bool)

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
                self.diag.error(items["mark_mask"].where, f"mark_mask {mask:#x} is too small",
                                "give it at least two bits")
            elif mask is not None:
                values["mark_mask"] = mask
                for message, hint in marks.mask_overlaps(mask):
                    self.diag.warning(items["mark_mask"].where, message, hint)
        if "rule_priority" in items:
            values["rule_priority"] = self.integer(items["rule_priority"], "rule_priority", 1, 32700)
        if "table_base" in items:
            values["table_base"] = self.integer(items["table_base"], "table_base", 1, 2**31)
        if "rp_filter" in items:
            values["rp_filter"] = self.choice(items["rp_filter"], "rp_filter", ("loose", "strict", "off"))
        if "last_resort" in items:
            values["last_resort"] = self.choice(items["last_resort"], "last_resort", SPECIAL_TARGETS)
        for key in ("reply_via_ingress", "forwarding", "exec"):
            if key in items:
                values[key] = self.boolean(items[key], key)
        if "on_change" in items:
            values["on_change"] = self.command(items["on_change"], "on_change")
        values.update(dynamicsets.dns_settings(self, items))
        return Settings(**{k: v for k, v in values.items() if v is not None})

    def command(self, node: Node, what: str) -> tuple[str, ...] | None:
        """A command as its argument list: it is executed directly, so a shell string is refused."""
        hint = f"the program and its arguments, run without a shell: {what}: [/usr/local/sbin/notify, --uplink]"
        if node.kind == "scalar" and node.scalar is not None:
            self.diag.error(node.where, f"{what} must be a list, not the text '{yaml_text(node.scalar)}'", hint)
            return None
        if not self.kind(node, "seq", what):
            return None
        if not node.elements:
            self.diag.error(node.where, f"{what} is an empty list", hint)
            return None
        words = [self.scalar(element, f"an argument of {what}", parse_argument) for element in node.elements]
        return None if any(word is None for word in words) else tuple(words)  # type: ignore[arg-type]

    # -- sets -------------------------------------------------------------------------

    def read_sets(self, node: Node | None) -> None:
        if node is None or not self.kind(node, "map", "sets"):
            return
        for key, value in node.items.items():
            where = node.key_where[key]
            if not self.name(key, where, "a set"):
                continue
            self.set_where[key] = where
            if dynamicsets.is_dynamic(value):
                dynamic = dynamicsets.read(self, key, value, where)
                if dynamic is not None:
                    self.dynamic_sets[key] = dynamic
                    self.sets[key] = AddressList()
                continue
            if value.kind == "map":
                self.known_keys(value, ("file",), f"set '{key}'")
                file_node = value.items.get("file")
                if file_node is None:
                    self.diag.error(value.where, f"set '{key}' needs 'file:' or a list of addresses")
                    continue
                addresses = self.set_file(key, file_node)
            else:
                parsed = self.one_or_many(value, f"set '{key}'", parse_address)
                addresses = address_list(parsed) if parsed is not None else None
            if addresses is not None:
                self.sets[key] = addresses

    def set_file(self, name: str, node: Node) -> AddressList | None:
        """One address, prefix or range a line; '#' starts a comment. Bad lines are reported there."""
        text_path = self.scalar(node, "file", yaml_text)
        if text_path is None:
            return None
        path = Path(text_path)
        if not path.is_absolute():
            path = Path(self.path).parent / path
        try:
            data = path.read_bytes()
        except OSError as exc:
            self.diag.error(node.where, f"cannot read set file {path}: {exc.strerror or exc}")
            return None
        try:
            lines = data.decode("utf-8").splitlines()
        except UnicodeDecodeError as exc:
            self.diag.error(byte_position(str(path), data, exc.start),
                            f"set file is not UTF-8 text (byte {data[exc.start]:#04x})", "save it as UTF-8")
            return None
        v4, others = ipv4_lines(lines)
        items: list[tuple[int, Interval]] = []
        bad = 0
        for number, text in others:
            try:
                items.append(parse_address(text))
            except ValueError as exc:
                bad += 1
                if bad <= MAX_BAD_SET_LINES:
                    line = lines[number - 1]
                    self.diag.error(Where(str(path), number, len(line) - len(line.lstrip()) + 1), str(exc))
        if bad > MAX_BAD_SET_LINES:
            self.diag.error(node.where, f"{bad} bad lines in set file {path} (first {MAX_BAD_SET_LINES} shown)")
        if bad:
            return None
        if not items and not v4:
            self.diag.error(node.where, f"set file {path} holds no addresses",
                            f"a policy using '@{name}' would never match; add one prefix a line")
            return None
        return address_list(items, v4)

    def warn_unused_sets(self) -> None:
        for name, where in self.set_where.items():
            if name not in self.used_sets:
                self.diag.warning(where, f"set '{name}' is not used by any policy", "refer to it as '@" + name + "'")

    # -- matches ----------------------------------------------------------------------

    def match(self, node: Node, what: str, keys_checked: bool = False) -> Match | None:
        """A MATCH mapping, each key read as its `MatchKey` says.

        `keys_checked`: the mapping is shared with the caller's own keys (a policy's `name`
        and `via`), and the caller has already reported the unknown ones.
        """
        if not self.kind(node, "map", what):
            return None
        if not keys_checked:
            self.known_keys(node, MATCH_KEYS, what)
        ok = True
        fields: dict[str, Any] = {}
        items = node.items
        for key in match_keys.KEYS:
            if key.key in items:
                fields[key.field] = self.match_value(key, items[key.key])
                ok &= fields[key.field] is not None
        if NOT in items:
            fields["negated"] = self.negation(items[NOT])
            ok &= fields["negated"] is not None
        if not ok:
            return None
        result = Match(**fields)
        return result if self.consistent(result, node) else None

    def match_value(self, key: MatchKey, node: Node) -> Any:
        """The value of one match key, or None when it was reported as wrong."""
        what = f"'{key.key}'"
        if key.read == "addresses":
            return self.addresses(node, what, key)
        if key.read == "one":
            value = self.scalar(node, what, key.parse)
            return None if value is None else key.collect([value])
        values = self.one_or_many(node, what, key.parse)
        return key.collect(values) if values else None

    def negation(self, node: Node) -> Match | None:
        negated = self.match(node, f"'{NOT}'")
        if negated is None:
            return None
        if negated.is_empty:
            if not node.items:  # otherwise its unknown keys were reported
                self.diag.error(node.where, "'not' with no conditions would never match")
            return None
        if negated.negated is not None:
            self.diag.error(node.items[NOT].where, "'not' inside 'not' is not supported",
                            "write the doubly negated condition directly")
            return None
        for key in match_keys.KEYS:
            if key.in_not is not None and key.value(negated) is not None:
                self.diag.error(node.items[key.key].where, *key.in_not)
                return None
        return negated

    def consistent(self, match: Match, node: Node) -> bool:
        """Reject combinations no packet can satisfy, at the key that makes them so."""
        items = node.items
        for key in match_keys.KEYS:
            problem = key.needs(match) if key.needs is not None else None
            if problem is not None:
                self.diag.error(items[key.key].where, *problem)
                return False
        if not match.versions:
            self.diag.error(
                node.where,
                "this match mixes IPv4 and IPv6 so no packet can satisfy it",
                "split it into one policy per family",
            )
            return False
        if match.local is True:
            for key in match_keys.KEYS:
                value = key.value(match)
                if value and not key.applies(value, True):
                    self.diag.error(
                        items[key.key].where,
                        f"'{key.key}' never matches router-originated traffic (local: true)",
                        "remove one of them",
                    )
                    return False
        return True

    def addresses(self, node: Node, what: str, key: MatchKey) -> Addresses | None:
        """A `from`/`to` list; `@name` elements are resolved against `sets:` here, the rest by `key.parse`."""
        elements = node.elements if node.kind == "seq" else [node]
        if node.kind == "map" or (node.kind == "seq" and not elements):
            self.diag.error(node.where, f"{what} must be an address, prefix, range, @set or a non-empty list of them")
            return None
        items: list[tuple[int, Interval]] = []
        set_names: list[str] = []
        ok = True
        for element in elements:
            text = self.scalar(element, what, yaml_text)
            if text is None:
                ok = False
                continue
            if text.startswith("@"):
                name = text[1:]
                self.used_sets.add(name)
                if name not in self.sets:
                    ok = False
                    if name not in self.set_where:  # a broken set was reported where it is defined
                        self.diag.error(element.where, f"unknown set '@{name}'",
                                        suggest(name, list(self.set_where)) or "define it under 'sets:'")
                    continue
                set_names.append(name)
                items += [(4, iv) for iv in self.sets[name].v4] + [(6, iv) for iv in self.sets[name].v6]
                continue
            try:
                items.append(key.parse(element.scalar))
            except ValueError as exc:
                self.diag.error(element.where, f"{what}: {exc}")
                ok = False
        if not ok:
            return None
        if len(elements) == 1 and set_names:
            return Addresses(self.sets[set_names[0]], set_names[0], dynamic=set_names[0] in self.dynamic_sets)
        if any(name in self.dynamic_sets for name in set_names):
            self.diag.error(node.where, f"{what}: a dynamic set must be used alone, its elements are not known here",
                            "write one policy for the set and one for the other addresses")
            return None
        collected: Addresses = key.collect(items)
        return collected

    # -- uplinks ----------------------------------------------------------------------

    def uplinks(self, node: Node | None, root: Node, settings: Settings) -> dict[str, Uplink]:
        if node is None:
            self.diag.error(root.where, "no 'uplinks:' defined", "describe at least one way out: interface and gateway")
            return {}
        if not self.kind(node, "map", "uplinks"):
            return {}
        if not node.items and not node.odd_keys:
            self.diag.error(node.where, "'uplinks:' is empty", "describe at least one uplink")
        drafts: list[Draft] = []
        for key, value in node.items.items():
            where = node.key_where[key]
            if not self.name(key, where, "an uplink"):
                continue
            fields = self.uplink_fields(key, value, where) if self.kind(value, "map", f"uplink '{key}'") else None
            if fields is None:
                self.broken.add(key)
            else:
                drafts.append((key, fields, value))
        self.shared_interfaces(drafts)
        return self.allocate(drafts, settings)

    def uplink_fields(self, name: str, node: Node, where: Where) -> dict[str, Any] | None:
        self.known_keys(node, UPLINK_KEYS, f"uplink '{name}'")
        items = node.items
        fields: dict[str, Any] = {"where": where}
        ok = True
        if "interface" not in items:
            self.diag.error(node.where, f"uplink '{name}' has no 'interface'",
                            "add interface: eth0 (the device it leaves by)")
            ok = False
        else:
            fields["interface"] = self.scalar(items["interface"], "interface", parse_interface)
            ok &= fields["interface"] is not None
        for key, version in (("gateway", 4), ("gateway6", 6)):
            if key in items:
                fields[key] = self.scalar(items[key], key, functools.partial(parse_gateway, version=version))
                ok &= fields[key] is not None
        if "nat" in items:
            fields["nat"] = self.nat(items["nat"], name, fields)
            ok &= fields["nat"] is not None
        if "ingress" in items:
            fields["ingress"] = self.ingress(items["ingress"], name)
            ok &= fields["ingress"] is not None
        if "inbound" in items:
            fields["inbound"] = self.inbound(items["inbound"], name)
            ok &= fields["inbound"] is not None
        for key, parse in (("table", parse_table), ("mark", parse_mark)):
            if key in items:
                fields["pinned_" + key] = (self.scalar(items[key], key, parse), items[key].where)
                ok &= fields["pinned_" + key][0] is not None
        if "check" in items:
            fields["check"] = self.health_check(items["check"], name)
            ok &= fields["check"] is not None
        return fields if ok else None

    def nat(self, node: Node, name: str, fields: dict[str, Any]) -> Nat | None:
        if node.kind == "scalar":
            value = self.choice(node, "nat", ("masquerade", "none"))
            return Nat(value) if value else None  # type: ignore[arg-type]
        if not self.kind(node, "map", "nat"):
            return None
        self.known_keys(node, ("snat",), "nat")
        if "snat" not in node.items:
            if not node.items:  # otherwise the unknown key was reported
                self.diag.error(node.where, "nat must be masquerade, none or {snat: ADDRESS}")
            return None
        address = self.scalar(node.items["snat"], "snat", parse_ip)
        if address is None:
            return None
        version = 6 if ":" in address else 4
        gateways = {4: fields.get("gateway"), 6: fields.get("gateway6")}
        if any(gateways.values()) and not gateways[version]:
            self.diag.error(node.items["snat"].where,
                            f"snat address {address} is IPv{version} but uplink '{name}' has no IPv{version} gateway",
                            "use an address of the uplink's own family")
            return None
        return Nat("snat", address)

    def ingress(self, node: Node, name: str) -> Match | None:
        match = self.match(node, f"ingress of '{name}'")
        if match is None:
            return None
        for key in match_keys.KEYS:
            if key.in_ingress is not None and key.value(match) is not None:
                self.diag.error(node.items[key.key].where, *key.in_ingress)
                return None
        if match.is_empty:
            if not node.items:  # otherwise its unknown keys were reported
                self.diag.error(node.where, f"ingress of '{name}' is empty",
                                "leave ingress out to take every connection arriving on the interface")
            return None
        return match

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
            matches = [self.match(element, "an allow entry") for element in allow_node.elements]
            if any(m is None for m in matches):
                return None
            allow = [m for m in matches if m is not None]
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
            targets = self.one_or_many(items["targets"], "targets", parse_probe_target)
            fields["targets"] = tuple(targets) if targets is not None else None
        if "method" in items:
            fields["method"] = self.choice(items["method"], "method", ("icmp", "tcp", "arp"))
        for key in ("interval", "timeout", "max_rtt"):
            if key in items:
                fields[key] = self.scalar(items[key], key, parse_seconds)
        for key in ("down", "up"):
            if key in items:
                fields[key] = self.integer(items[key], key, 1, 100)
        if "max_loss" in items:
            fields["max_loss"] = self.scalar(items["max_loss"], "max_loss", parse_fraction)
        if any(v is None for v in fields.values()):
            return None
        check = HealthCheck(**fields)
        if check.method == "tcp" and any(":" not in t.rsplit("]", 1)[-1] for t in check.targets):
            self.diag.error(items.get("targets", node).where, "tcp checks need targets as host:port")
            return None
        return check

    def shared_interfaces(self, drafts: list[Draft]) -> None:
        """Several uplinks may share an interface only if all but one say how to recognise theirs."""
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

    def allocate(self, drafts: list[Draft], settings: Settings) -> dict[str, Uplink]:
        """Give every uplink a mark and a table: pinned ones first, then the free ones in order."""
        mask = settings.mark_mask
        indices = marks.uplink_marks(mask)  # a range: a 32-bit mask allows billions, never list them
        first, last = marks.value(mask, indices[0]), marks.value(mask, indices[-1])
        foreign = marks.foreign_values(mask)
        used_marks: dict[int, str] = {}
        used_tables: dict[int, str] = {}
        for name, fields, _ in drafts:
            if "pinned_mark" in fields:
                mark, where = fields["pinned_mark"]
                if mark & ~mask or mark == 0:
                    self.diag.error(where, f"mark {mark:#x} of '{name}' does not fit mark_mask {mask:#x}",
                                    f"use a non-zero value made only of the mask's bits, e.g. {first:#x}")
                elif mark >> marks.shift(mask) not in indices:
                    self.diag.error(where, f"mark {mark:#x} is reserved for markroute's unreachable/blackhole rules",
                                    f"pick one of {first:#x}-{last:#x}")
                elif mark in used_marks:
                    self.diag.error(where, f"mark {mark:#x} of '{name}' is already used by '{used_marks[mark]}'")
                else:
                    used_marks[mark] = name
            if "pinned_table" in fields:
                table, where = fields["pinned_table"]
                if table in used_tables:
                    self.diag.error(where, f"table {table} of '{name}' is already used by '{used_tables[table]}'")
                else:
                    used_tables[table] = name
                if table in FOREIGN_TABLES:
                    self.diag.warning(where,
                                      f"table {table} is the one {FOREIGN_TABLES[table]} fills with its own routes",
                                      "if it runs here, pick another table id")
        free_marks = (
            m for m in (marks.value(mask, i) for i in indices) if m not in used_marks and m not in foreign
        )
        next_table = settings.table_base
        uplinks: dict[str, Uplink] = {}
        for name, fields, _ in drafts:
            mark = fields.pop("pinned_mark", (None, None))[0]
            table = fields.pop("pinned_table", (None, None))[0]
            if mark is None:
                mark = next(free_marks, None)
                if mark is None:
                    self.diag.error(fields["where"], f"no mark left in mark_mask {mask:#x} for '{name}'",
                                    "widen mark_mask")
                    self.broken.add(name)
                    continue
            if table is None:
                while next_table in used_tables or next_table in RESERVED_TABLES or next_table in FOREIGN_TABLES:
                    next_table += 1
                table = next_table
                used_tables[table] = name
            uplinks[name] = Uplink(name=name, mark=mark, table=table, **fields)
        return uplinks

    # -- groups -----------------------------------------------------------------------

    def groups(self, node: Node | None, uplinks: dict[str, Uplink]) -> dict[str, Group]:
        if node is None or not self.kind(node, "map", "groups"):
            return {}
        declared = list(node.items)
        groups: dict[str, Group] = {}
        references: dict[tuple[str, str], Where] = {}
        for key, value in node.items.items():
            where = node.key_where[key]
            if not self.name(key, where, "a group"):
                continue
            if key in uplinks or key in self.broken:
                self.diag.error(where, f"'{key}' names both an uplink and a group", "rename one of them")
                continue
            group = self.group(key, where, value, uplinks, declared, references)
            if group is None:
                self.broken.add(key)
            else:
                groups[key] = group
        self.drop_broken_members(groups)
        self.cycles(groups, references)
        return groups

    def group(
        self, name: str, where: Where, node: Node, uplinks: dict[str, Uplink], declared: list[str],
        references: dict[tuple[str, str], Where],
    ) -> Group | None:
        if not self.kind(node, "map", f"group '{name}'"):
            return None
        self.known_keys(node, ("balance", "failover"), f"group '{name}'")
        kinds = [k for k in ("balance", "failover") if k in node.items]
        if len(kinds) != 1:
            self.diag.error(node.where, f"group '{name}' needs exactly one of 'balance' or 'failover'",
                            "balance: {a: 1, b: 1} spreads connections, failover: [a, b] uses the first usable")
            return None
        kind = kinds[0]
        members = self.group_members(name, kind, node.items[kind])
        if members is None:
            return None
        if not members:
            self.diag.error(node.items[kind].where, f"group '{name}' has no members")
            return None
        ok = True
        known = list(uplinks) + [g for g in declared if g != name]
        for member, _, member_where in members:
            references[(name, member)] = member_where
            if member == name:
                self.diag.error(member_where, f"group '{name}' contains itself")
                ok = False
            elif member not in uplinks and member not in declared and member not in self.broken:
                self.diag.error(member_where, f"unknown uplink or group '{member}' in group '{name}'",
                                suggest(member, known) or f"known: {', '.join(known)}")
                ok = False
        if not ok:
            return None
        return Group(name, kind, tuple((m, w) for m, w, _ in members), where)  # type: ignore[arg-type]

    def group_members(self, name: str, kind: str, node: Node) -> list[tuple[str, int, Where]] | None:
        """(member, weight, where) in the order written; failover members weigh 1."""
        members: list[tuple[str, int, Where]] = []
        if kind == "balance":
            if node.kind == "seq":
                self.diag.error(node.where, f"balance of '{name}' must be a mapping of members to weights, not a list",
                                "give every member a weight: {a: 1, b: 1}")
                return None
            if not self.kind(node, "map", f"balance of '{name}'"):
                return None
            weights = [(m, self.scalar(w, f"weight of '{m}'", parse_weight)) for m, w in node.items.items()]
            if any(weight is None for _, weight in weights):
                return None
            return [(m, w, node.key_where[m]) for m, w in weights if w is not None]
        if not self.kind(node, "seq", f"failover of '{name}'"):
            return None
        seen: set[str] = set()
        ok = True
        for element in node.elements:
            member = self.scalar(element, "a failover member", yaml_text)
            if member is None:
                ok = False
            elif member in seen:
                self.diag.error(element.where, f"'{member}' is listed twice in group '{name}'")
                ok = False
            else:
                seen.add(member)
                members.append((member, 1, element.where))
        return members if ok else None

    def drop_broken_members(self, groups: dict[str, Group]) -> None:
        """A group built on a broken uplink or group is broken too; the root cause was reported."""
        changed = True
        while changed:
            changed = False
            for name, group in list(groups.items()):
                if any(member in self.broken for member, _ in group.members):
                    del groups[name]
                    self.broken.add(name)
                    changed = True

    def cycles(self, groups: dict[str, Group], references: dict[tuple[str, str], Where]) -> None:
        """Report each cycle once, at the reference that closes it, and drop its groups."""
        state: dict[str, int] = {}
        cyclic: set[str] = set()

        def visit(name: str, path: list[str]) -> None:
            state[name] = 1
            for member, _ in groups[name].members:
                if member not in groups:
                    continue
                if state.get(member) == 1:
                    cycle = path[path.index(member):] + [member]
                    cyclic.update(cycle)
                    self.diag.error(references[(name, member)], f"groups form a cycle: {' -> '.join(cycle)}",
                                    "a group may not contain itself, directly or through other groups")
                elif member not in state:
                    visit(member, path + [member])
            state[name] = 2

        for name in groups:
            if name not in state:
                visit(name, [name])
        for name in cyclic:
            del groups[name]
            self.broken.add(name)
        self.drop_broken_members(groups)

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
                given = self.scalar(element.items["name"], "name", parse_policy_name)
                if given is None:
                    continue
                name = given
            if name in names:
                self.diag.error(element.items.get("name", element).where,
                                f"policy name '{name}' is already used at line {names[name].line}")
                continue
            names[name] = element.where
            match = self.match(element, f"policy '{name}'", keys_checked=True)
            via = self.via(element, name, targets)
            if match is None or via is None:
                continue
            policy = Policy(name, match, via, element.where)
            if self.reachable_family(policy, uplinks, groups, element.items["via"]):
                policies.append(policy)
        return policies

    def via(self, element: Node, name: str, targets: list[str]) -> str | None:
        if "via" not in element.items:
            self.diag.error(element.where, f"policy '{name}' has no 'via'", "add via: UPLINK, GROUP or main")
            return None
        via = self.scalar(element.items["via"], "via", yaml_text)
        if via is None or via in self.broken:
            return None
        if via not in targets:
            self.diag.error(element.items["via"].where, f"unknown uplink or group '{via}' in policy '{name}'",
                            suggest(via, targets) or f"known: {', '.join(targets)}")
            return None
        return via

    def reachable_family(self, policy: Policy, uplinks: dict[str, Uplink], groups: dict[str, Group], via: Node) -> bool:
        model = Model(self.path, uplinks, groups)
        if policy.match.versions & model.target_versions(policy.via):
            return True
        family = "IPv6" if policy.match.versions == {6} else "IPv4"
        self.diag.error(via.where,
                        f"policy '{policy.name}' matches only {family} but '{policy.via}' has no {family} gateway",
                        f"add gateway{'6' if family == 'IPv6' else ''}: to the uplink or pick another via")
        return False

    # -- warnings ---------------------------------------------------------------------

    def warn_model(self, model: Model) -> None:
        for where, message, hint in model_warnings(model):
            self.diag.warning(where, message, hint)
