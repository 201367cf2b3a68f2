"""An interpreter of nftables rulesets in libnftables JSON list form.

The input is exactly what `nft -j list ruleset` prints and what `Plan.nft_document()`
returns: table, set, map, chain and rule objects. Every rule is compiled once into a
tuple of closures (one per expression) and every set into a `Lookup`, so running a
packet through a chain is a loop over plain function calls.

Each closure returns None to go on with the rule, `BREAK` when the rule does not match
(as the kernel's NFT_BREAK: a failed comparison, a header the packet lacks, a failed
set or map lookup), or a `Verdict`. Anything not modelled compiles to a closure that
raises `Indeterminate` when a packet reaches it, so an unmodelled expression costs
nothing until it could change the answer.
"""

from __future__ import annotations

import bisect
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING, Any

from markroute.plan import nfttext
from markroute.plan.nftjson import AddressElements, is_dynamic
from markroute.sim.datatypes import (
    BITMASK_TYPES,
    CT_STATUS,
    FIB_TYPES,
    Span,
    UnsupportedValue,
    parse,
)
from markroute.sim.inert import skippable
from markroute.sim.packet import CT_INVALID, CT_UNTRACKED, Indeterminate, Packet
from markroute.sim.rpdb import Query
from markroute.sim.ruleindex import ABSENT, ChainIndex
from markroute.sim.sets import Lookup
from markroute.sim.system import System
from markroute.sim.words import plain

if TYPE_CHECKING:
    from markroute.sim.xt import Iptables, XtRule

Getter = Callable[[Packet], Any]
Op = Callable[[Packet], Any]
# the transport headers that carry ports: nft payload protocol name -> IP protocol number
PORT_PROTOCOL_NUMBERS = {"tcp": 6, "udp": 17, "sctp": 132, "udplite": 136, "dccp": 33}
TRANSPORT_PORTS = frozenset(PORT_PROTOCOL_NUMBERS.values())
NAT_HOOK_PRIORITY = {"prerouting": -100, "output": -100, "postrouting": 100, "input": 100}
FAMILY_VERSIONS = {"ip": (4,), "ip6": (6,), "inet": (4, 6), "netdev": (4, 6)}
IGNORED_STATEMENTS = {"counter", "log", "ct helper", "ct timeout", "ct expectation", "secmark", "flow", "set"}


class _Marker:
    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


BREAK = _Marker("BREAK")
MISSING = _Marker("MISSING")
UNKNOWN = _Marker("UNKNOWN")


class Partial:
    """A concatenation some of whose parts are not known; a set lookup may still decide it."""

    __slots__ = ("parts", "reason")

    def __init__(self, parts: tuple[Any, ...], reason: Indeterminate) -> None:
        self.parts = parts
        self.reason = reason

    def decide(self, lookup: Lookup) -> bool:
        """False when no element can match whatever the unknown parts are; else re-raise."""
        if lookup.could_match(self.parts, UNKNOWN):
            raise self.reason
        return False


class Verdict:
    """A terminal or chain-changing decision: accept, drop, return, jump or goto."""

    __slots__ = ("kind", "target", "reason")

    def __init__(self, kind: str, target: Chain | None = None, reason: str = "") -> None:
        self.kind = kind
        self.target = target
        self.reason = reason

    def text(self) -> str:
        return f"{self.kind} {self.target.name}" if self.target is not None else self.kind


ACCEPT = Verdict("accept")
DROP = Verdict("drop")
RETURN = Verdict("return")


@dataclass
class Rule:
    """One compiled rule. CHAIN, which holds it, is a weak proxy: a ruleset without reference
    cycles is freed as soon as it is dropped, not when the cycle collector (paused by the
    commands of a big config, `cliutil.without_cycle_collector`) walks its half million
    objects at 10,000 policies, about half a second."""

    ops: tuple[Op, ...]
    body: dict[str, Any]
    chain: Chain
    policy: str | None = None  # markroute's compiler comments its policy rules "policy NAME"
    position: int = 0  # its index in the chain
    source: str | None = None  # the iptables command that wrote it, where iptables-nft did

    def __post_init__(self) -> None:
        comment = self.body.get("comment")
        if isinstance(comment, str) and comment.startswith("policy "):
            self.policy = comment[len("policy "):]

    @property
    def comment(self) -> str | None:
        comment = self.body.get("comment")
        return str(comment) if comment is not None else None

    @cached_property
    def text(self) -> str:
        if self.source is not None:
            return self.source
        return " ".join(_statement_text(expr) for expr in self.body.get("expr", []))

    @cached_property
    def location(self) -> str:
        """Where the rule is, in words: its table, chain and handle (or position, offline)."""
        handle = self.body.get("handle")
        which = f"rule handle {handle}" if handle is not None else f"rule {self.position + 1}"
        return f"table {self.chain.family} {self.chain.table}, chain {self.chain.name}, {which}"


@dataclass
class Chain:
    family: str
    table: str
    name: str
    rules: list[Rule] = field(default_factory=list)
    hook: str | None = None
    kind: str = "filter"
    priority: int = 0
    policy: str = "accept"
    devices: tuple[str, ...] = ()
    order: int = 0
    index: ChainIndex | None = None  # which rules a packet can reach, for long chains (`sim.ruleindex`)

    @property
    def label(self) -> str:
        return f"{self.family} {self.table} {self.name}"

    @property
    def effective_priority(self) -> int:
        """NAT chains run inside the NAT core's hook, at its fixed priority, ordered among themselves."""
        if self.kind == "nat" and self.hook in NAT_HOOK_PRIORITY:
            return NAT_HOOK_PRIORITY[self.hook]
        return self.priority

    def versions(self) -> tuple[int, ...]:
        return FAMILY_VERSIONS.get(self.family, ())


@dataclass(frozen=True)
class Value:
    """A compiled expression: how to read it from a packet, its nft datatype, its text."""

    get: Getter
    dtype: Any
    text: str


class Ruleset:
    """A compiled ruleset: base chains per hook, in the order the kernel runs them."""

    def __init__(
        self, document: dict[str, Any], system: System, iptables: Iptables | None = None, offline: bool = False
    ) -> None:
        self.system = system
        self.iptables = iptables  # iptables-nft-save's view, to read the options of `xt` expressions
        self.offline = offline  # a plan, not a live table: dynamic sets' elements are not known
        self.chains: dict[tuple[str, str, str], Chain] = {}
        self.sets: dict[tuple[str, str, str], dict[str, Any]] = {}
        self.ignored: list[str] = []
        self.hooks: dict[tuple[str, int, str | None], list[Chain]] = {}
        objects = document.get("nftables", [])
        if not isinstance(objects, list):
            raise ValueError("not an nftables JSON document: 'nftables' must be a list")
        for obj in objects:
            if not isinstance(obj, dict) or len(obj) != 1:
                raise ValueError(f"not an nftables JSON object: {obj!r}")
            kind, body = next(iter(obj.items()))
            if kind == "chain":
                self._add_chain(body)
            elif kind in ("set", "map"):
                self.sets[(body["family"], body["table"], body["name"])] = body
        # the chains a hook runs, apart from the thousands of policy chains jumped to
        self.hooked = [chain for chain in self.chains.values() if chain.hook is not None]
        self.lookups: dict[tuple[str, str, str], tuple[Lookup, list[Any], Any]] = {}
        for obj in objects:
            if "rule" in obj:
                body = obj["rule"]
                chain = self.chains.get((body["family"], body["table"], body["chain"]))
                if chain is None:
                    raise ValueError(f"rule for unknown chain {body['family']} {body['table']} {body['chain']}")
                xt = self._xt_binding(chain, body)
                ops = RuleBuilder(self, chain, xt).rule(body.get("expr", []))
                chain.rules.append(Rule(ops, body, weakref.proxy(chain), position=len(chain.rules),
                                        source=xt.text if xt is not None else None))
        for chain in self.chains.values():
            for rule in chain.rules:
                if skippable(rule, self.chains):
                    rule.ops = (_skip,)
            unmodelled = {r.position for r in chain.rules
                          if any(getattr(op, "__qualname__", "") == _UNKNOWN_OP for op in r.ops)}
            chain.index = ChainIndex.build([r.body for r in chain.rules], unmodelled)

    def _xt_binding(self, chain: Chain, body: dict[str, Any]) -> XtRule | None:
        """For a rule of a chain iptables-nft wrote: the saved rule that shows its `xt` options and its text."""
        if self.iptables is None or not self.iptables.lists(chain):
            return None
        return self.iptables.binding(chain, len(chain.rules), body)

    def _add_chain(self, body: dict[str, Any]) -> None:
        chain = Chain(body["family"], body["table"], body["name"], order=len(self.chains))
        if "hook" in body:
            chain.hook = body["hook"]
            chain.kind = body.get("type", "filter")
            chain.priority = int(body.get("prio", 0))
            chain.policy = body.get("policy", "accept")
            devices = body.get("dev", body.get("devices", ()))
            chain.devices = (devices,) if isinstance(devices, str) else tuple(devices)
            if chain.family in ("bridge", "arp"):
                self.ignored.append(f"{chain.label}: {chain.family} chains do not see routed IP packets")
        self.chains[(chain.family, chain.table, chain.name)] = chain

    def base_chains(self, hook: str, version: int, device: str | None = None) -> list[Chain]:
        """The base chains a packet of `version` passes at `hook`, in kernel order."""
        key = (hook, version, device)
        cached = self.hooks.get(key)
        if cached is None:
            cached = self.hooks[key] = self._base_chains(hook, version, device)
        return cached

    def _base_chains(self, hook: str, version: int, device: str | None) -> list[Chain]:
        found = [
            c for c in self.hooked
            if c.hook == hook and version in c.versions() and (not c.devices or device in c.devices)
            and (c.family != "netdev" or hook == "ingress")
        ]
        found.sort(key=lambda c: (c.effective_priority, c.priority, c.order))
        return found

    def named(self, family: str, table: str, name: str) -> tuple[Lookup, list[Any], Any]:
        """A named set or map as (lookup, element data, key datatype); built on first use."""
        key = (family, table, name)
        if key not in self.lookups:
            body = self.sets.get(key)
            if body is None:
                raise UnsupportedValue(f"no set or map @{name} in table {family} {table}")
            dtype = body.get("type")
            key_type: Any = tuple(dtype) if isinstance(dtype, list) else dtype
            data_type = body.get("map")
            data_type = tuple(data_type) if isinstance(data_type, list) else data_type
            elements = body.get("elem", [])
            if isinstance(elements, AddressElements):  # a compiled plan's set: intervals already, no text to parse
                self.lookups[key] = (Lookup.of_intervals(elements.intervals), [None] * len(elements),
                                    (key_type, data_type))
            else:
                keys, data = _keys_and_data(elements, key_type, data_type)
                self.lookups[key] = (Lookup(keys), data, (key_type, data_type))
        return self.lookups[key]

    def run(self, base: Chain, p: Packet, record: list[dict[str, Any]] | None) -> Verdict:
        """Run one base chain; returns ACCEPT or a drop (the chain's verdict or policy)."""
        stack: list[tuple[Chain, int]] = []
        chain = base
        index = 0
        reachable = _reachable(chain, p, record)
        while True:
            rules = chain.rules
            if reachable is not None:  # on to the next rule that can act on this packet
                slot = bisect.bisect_left(reachable, index)
                index = reachable[slot] if slot < len(reachable) else len(rules)
            if index >= len(rules):
                if stack:
                    chain, index = stack.pop()
                    reachable = _reachable(chain, p, record)
                    continue
                return ACCEPT if base.policy == "accept" else Verdict("drop", reason=f"policy drop of {base.label}")
            rule = rules[index]
            index += 1
            verdict: Any = None
            try:
                for op in rule.ops:
                    verdict = op(p)
                    if verdict is not None:
                        break
            except Indeterminate as exc:
                if exc.where is None:
                    exc.where = rule.location
                if record is not None:
                    record.append(_rule_step(p, rule, None, indeterminate=exc))
                raise
            if verdict is BREAK:
                continue
            if rule.policy is not None:
                p.policy = rule.policy
            if record is not None:
                record.append(_rule_step(p, rule, verdict))
            if verdict is None:
                continue
            kind = verdict.kind
            if kind == "accept" or kind == "drop":
                decided: Verdict = verdict
                return decided
            if kind == "return":
                if not stack:
                    return ACCEPT if base.policy == "accept" else Verdict("drop", reason=f"policy drop of {base.label}")
                chain, index = stack.pop()
            elif kind == "jump":
                if len(stack) >= 16:
                    raise Indeterminate(rule.text, "more than 16 nested jumps")
                stack.append((chain, index))
                chain, index = verdict.target, 0
            elif kind == "goto":
                chain, index = verdict.target, 0
            reachable = _reachable(chain, p, record)


def _reachable(chain: Chain, p: Packet, record: list[dict[str, Any]] | None) -> list[int] | None:
    """The positions of CHAIN's rules that can act on P, or None to walk them all (a recorded walk: `trace`)."""
    if chain.index is None or record is not None:
        return None
    return chain.index.reachable(_guarded_values(p))


def _guarded_values(p: Packet) -> dict[str, Any]:
    """P's values of the fields `ChainIndex` guards on, as the expressions here read them.

    ABSENT where P has no such field (an IPv4 address of an IPv6 packet); None where the
    value is not known (an address NAT gave it offline, ports of a protocol `th` cannot
    read), so no rule guarded on it is skipped.
    """
    v4, v6 = p.version == 4, p.version == 6  # keys spelt out: this runs for every chain of every witness walk
    return {
        "daddr4": p.dst if v4 else ABSENT, "saddr4": p.src if v4 else ABSENT,
        "daddr6": p.dst if v6 else ABSENT, "saddr6": p.src if v6 else ABSENT,
        "dport": p.dport if p.proto in TRANSPORT_PORTS else None,
        "iifname": p.in_dev or "",
    }


def _rule_step(p: Packet, rule: Rule, verdict: Verdict | None, indeterminate: Indeterminate | None = None) -> dict[str, Any]:
    step: dict[str, Any] = {
        "stage": "rule",
        "hook": p.hook,
        "chain": rule.chain.label,
        "rule": rule.text,
        "comment": rule.comment,
    }
    if indeterminate is not None:
        step["indeterminate"] = {"expression": indeterminate.what, "reason": indeterminate.why,
                                 "rule": indeterminate.where}
        return step
    step["verdict"] = verdict.text() if verdict is not None else None
    step["mark"] = hex(p.mark)
    step["ct_mark"] = hex(p.ct.mark) if p.ct is not None else None
    return step


def _text(expr: Any) -> str:
    """An expression as nft text; in plain words where the renderer does not know its shape."""
    try:
        text = nfttext.expression(expr) if isinstance(expr, dict) else nfttext.value(expr)
    except (KeyError, TypeError, ValueError, StopIteration, AttributeError):
        return plain(expr)
    return plain(expr) if _looks_like_json(text) else text


def _statement_text(expr: Any) -> str:
    try:
        text = nfttext.statement(expr)
    except (KeyError, TypeError, ValueError, StopIteration, AttributeError):
        return plain(expr)
    return plain(expr) if _looks_like_json(text) else text


def _looks_like_json(text: str) -> bool:
    """nfttext falls back to JSON for shapes it does not render; a trace never shows JSON."""
    return text.startswith(("{", "[")) or '{"' in text


def _skip(p: Packet) -> Any:
    """An inert rule's only op: whatever it would read, it changes nothing (see `sim.inert`)."""
    return BREAK


def _find(lookup: Lookup, value: Any) -> int:
    """The element a key falls in, or -1: also when the key is missing or cannot match."""
    if value is MISSING or type(value) is Partial and not value.decide(lookup):
        return -1
    return lookup.find(value)


def _is_set(right: Any) -> bool:
    return isinstance(right, str) and right.startswith("@") or isinstance(right, dict) and "set" in right


def _unknown(what: str, why: str) -> Getter:
    def get(p: Packet) -> Any:
        raise Indeterminate(what, why)

    return get


_UNKNOWN_OP = _unknown.__qualname__ + ".<locals>.get"  # a statement the builder could not model


class RuleBuilder:
    """Builds the closures of one rule's expressions in the context of its table and chain."""

    def __init__(self, ruleset: Ruleset, chain: Chain, xt: XtRule | None = None) -> None:
        self.ruleset = ruleset
        self.chain = chain
        self.system = ruleset.system
        self.xt = xt

    # -- statements ---------------------------------------------------------------------

    def rule(self, exprs: list[dict[str, Any]]) -> tuple[Op, ...]:
        ops: list[Op] = []
        for expr in exprs:
            try:
                op = self.statement(expr)
            except (UnsupportedValue, KeyError, TypeError, ValueError, StopIteration) as exc:
                op = _unknown(_statement_text(expr), f"not modelled ({exc})")
            if op is not None:
                ops.append(op)
        return tuple(ops)

    def statement(self, expr: dict[str, Any]) -> Op | None:
        kind, body = next(iter(expr.items()))
        if kind == "match":
            return self.match(body)
        if kind in IGNORED_STATEMENTS:
            return None
        if kind in ("accept", "drop", "continue", "return"):
            verdict = {"accept": ACCEPT, "drop": DROP, "return": RETURN}.get(kind)
            return (lambda p: verdict) if verdict is not None else None
        if kind in ("jump", "goto"):
            target = self.target(body["target"])
            jump = Verdict(kind, target)
            return lambda p: jump
        if kind == "reject":
            rejected = Verdict("drop", reason="rejected")
            return lambda p: rejected
        if kind == "vmap":
            return self.vmap(body)
        if kind == "mangle":
            return self.mangle(body)
        if kind in ("snat", "dnat", "masquerade", "redirect"):
            return self.nat(kind, body if isinstance(body, dict) else {})
        if kind == "notrack":
            def notrack(p: Packet) -> None:
                p.untracked = True
            return notrack
        if kind == "xt":
            if self.xt is None:
                return _unknown(f"iptables {body.get('type')} {body.get('name')}",
                                "an iptables-nft extension whose options only iptables-nft-save shows "
                                "(trace --live reads them)")
            return self.xt.compile(self, body)
        return _unknown(_statement_text(expr), f"the '{kind}' statement is not modelled")

    def target(self, name: str) -> Chain:
        chain = self.ruleset.chains.get((self.chain.family, self.chain.table, name))
        if chain is None:
            raise UnsupportedValue(f"jump to unknown chain {name}")
        return chain

    def verdict(self, body: Any) -> Verdict | None:
        kind, inner = next(iter(body.items()))
        if kind in ("jump", "goto"):
            return Verdict(kind, self.target(inner["target"]))
        if kind == "reject":
            return Verdict("drop", reason="rejected")
        return {"accept": ACCEPT, "drop": DROP, "return": RETURN}.get(kind)

    def match(self, body: dict[str, Any]) -> Op:
        left = self.value(body["left"])
        op = body.get("op", "==")
        right = body["right"]
        lookup = self.set_lookup(left.dtype, right) if _is_set(right) else None
        test = self.test(left, op, right, lookup)
        get = left.get
        unknown = self.filled_at_run_time(right)
        # rendered only for the rare match that must say why it cannot decide: a ruleset of
        # 10,000 policies has tens of thousands of matches
        text = f"{left.text} {op} {_text(right)}" if unknown is not None else ""

        def match(p: Packet) -> Any:
            value = get(p)
            if value is MISSING:
                return BREAK
            if unknown is not None:
                raise Indeterminate(text, unknown)
            if type(value) is Partial:
                if lookup is None:
                    raise value.reason
                found = value.decide(lookup)
                return None if found == (op != "!=") else BREAK
            if not test(value):
                return BREAK
            return None

        return match

    def test(self, left: Value, op: str, right: Any, lookup: Lookup | None) -> Callable[[Any], bool]:
        """The comparison of a match, as a predicate on the left value; LOOKUP is the set's
        when RIGHT is one, built once by the caller (an anonymous set is parsed per use)."""
        if isinstance(right, bool):
            return lambda v: bool(v) == right
        if lookup is not None:
            if op == "!=":
                return lambda v: lookup.find(v) < 0
            return lambda v: lookup.find(v) >= 0
        constant = parse(left.dtype, right)
        if op == "in" or (left.dtype in BITMASK_TYPES and isinstance(right, list)):
            if isinstance(constant, int) and left.dtype in BITMASK_TYPES:
                return lambda v: bool(v & constant)
            op = "=="
        if isinstance(constant, Span):
            lo, hi = constant
            inside: Callable[[Any], bool] = lambda v: lo <= v <= hi
            return (lambda v: not inside(v)) if op == "!=" else inside
        if isinstance(constant, str) and constant.endswith("*") and left.dtype in ("ifname", "iface_index"):
            stem = constant[:-1]
            return (lambda v: not v.startswith(stem)) if op == "!=" else (lambda v: v.startswith(stem))
        comparisons: dict[str, Callable[[Any], bool]] = {
            "==": lambda v: v == constant,
            "!=": lambda v: v != constant,
            "<": lambda v: v < constant,
            ">": lambda v: v > constant,
            "<=": lambda v: v <= constant,
            ">=": lambda v: v >= constant,
        }
        if op not in comparisons:
            raise UnsupportedValue(f"operator {op}")
        return comparisons[op]

    def filled_at_run_time(self, right: Any) -> str | None:
        """Offline, why a match on a dynamic set cannot be decided (None: it can)."""
        if not self.ruleset.offline or not isinstance(right, str) or not right.startswith("@"):
            return None
        body = self.ruleset.sets.get((self.chain.family, self.chain.table, right[1:]))
        if body is None or not is_dynamic(body):
            return None
        return (f"depends on what was added to dynamic set {right[1:]} at run time (for a domain set: "
                "what the resolver answered); `trace --live` sees its current elements")

    def set_lookup(self, dtype: Any, right: Any) -> Lookup:
        if isinstance(right, str):
            lookup, _, _ = self.ruleset.named(self.chain.family, self.chain.table, right[1:])
            return lookup
        elements = right["set"] if isinstance(right["set"], list) else [right["set"]]
        return Lookup([parse(dtype, e) for e in elements])

    def map_data(self, dtype: Any, data: Any, data_type: Any) -> tuple[Lookup, list[Any], Any]:
        """(lookup, raw data per element, data datatype) of a named or anonymous map."""
        if isinstance(data, str):
            lookup, values, (_, named_type) = self.ruleset.named(self.chain.family, self.chain.table, data[1:])
            return lookup, values, named_type if named_type is not None else data_type
        pairs = data["set"]
        return Lookup([parse(dtype, k) for k, _ in pairs]), [v for _, v in pairs], data_type

    def vmap(self, body: dict[str, Any]) -> Op:
        key = self.value(body["key"])
        lookup, data, _ = self.map_data(key.dtype, body["data"], "verdict")
        verdicts = [self.verdict(v) if isinstance(v, dict) else None for v in data]
        choice = self.numgen_choice(body["key"], lookup)
        if choice is not None:
            weights, indexes, label = choice

            def numgen_vmap(p: Packet) -> Any:
                index = indexes[p.choose(weights, label)]
                if index < 0:
                    return BREAK
                return verdicts[index]

            return numgen_vmap
        get = key.get

        def vmap(p: Packet) -> Any:
            index = _find(lookup, get(p))
            return BREAK if index < 0 else verdicts[index]

        return vmap

    def numgen_choice(self, key: Any, lookup: Lookup) -> tuple[tuple[int, ...], list[int], str] | None:
        """For `numgen ... vmap/map`: the weight of each element, so a draw picks an element."""
        if not isinstance(key, dict) or "numgen" not in key:
            return None
        numgen = key["numgen"]
        first = int(numgen.get("offset", 0))
        runs = lookup.partition(first, first + int(numgen["mod"]) - 1)
        return tuple(size for size, _ in runs), [index for _, index in runs], _text(key)

    def mangle(self, body: dict[str, Any]) -> Op:
        key = body["key"]
        kind, inner = next(iter(key.items()))
        name = inner.get("key") if kind in ("meta", "ct") else None
        if kind == "ct" and name == "label":
            # Labels record which rule decided (`plan.labels`): bits by number, by name or OR'ed
            # together; nothing routes or filters by them. Decided before the value is compiled.
            return lambda p: None
        target = self.value(key)
        value = self.value(body["value"], target.dtype)
        get = value.get
        if kind == "meta" and name == "mark":
            def set_mark(p: Packet) -> Any:
                v = get(p)
                if v is MISSING:
                    return BREAK
                p.mark = v & 0xFFFFFFFF
                return None
            return set_mark
        if kind == "ct" and name == "mark" and "dir" not in inner:
            def set_ct_mark(p: Packet) -> Any:
                v = get(p)
                if v is MISSING:
                    return BREAK
                if p.ct is not None and not p.untracked:
                    p.ct.mark = v & 0xFFFFFFFF
                return None
            return set_ct_mark
        if kind == "meta" and name in ("nftrace", "priority"):
            return lambda p: None
        if kind == "payload" and inner.get("field") == "dscp" and inner.get("protocol") in ("ip", "ip6"):
            version = 4 if inner["protocol"] == "ip" else 6

            def set_dscp(p: Packet) -> Any:
                v = get(p)
                if v is MISSING or p.version != version:
                    return BREAK
                p.dscp = v & 0x3F
                return None
            return set_dscp
        return _unknown(f"{target.text} set {value.text}", "setting this is not modelled")

    def nat(self, kind: str, body: dict[str, Any]) -> Op:
        family = body.get("family")
        version = {"ip": 4, "ip6": 6}.get(family) if family else None
        address: Value | None = None
        if "addr" in body:
            addr = body["addr"]
            if isinstance(addr, dict) and "map" in addr:
                address = self.value(addr, "ipv6_addr" if version == 6 else "ipv4_addr")
            else:
                address = self.constant_address(addr, version)
        port = self.nat_port(body.get("port"))
        text = _statement_text({kind: body or None})
        get = address.get if address is not None else None

        def nat(p: Packet) -> Any:
            if version is not None and p.version != version:
                return None
            target = get(p) if get is not None else None
            if target is MISSING:
                return BREAK
            new_port = port
            if isinstance(target, tuple) and not isinstance(target, Span):
                target, new_port = target
            p.nat_request = (kind, target, new_port, text)
            return ACCEPT

        return nat

    def constant_address(self, addr: Any, version: int | None) -> Value:
        dtype = "ipv6_addr" if version == 6 or (isinstance(addr, str) and ":" in addr) else "ipv4_addr"
        constant = parse(dtype, addr)
        return Value(lambda p: constant, dtype, _text(addr))

    def nat_port(self, port: Any) -> Any:
        if port is None:
            return None
        if isinstance(port, int):
            return port
        if isinstance(port, dict) and "range" in port:
            return Span(int(port["range"][0]), int(port["range"][1]))
        raise UnsupportedValue(f"NAT port {plain(port)}")

    # -- expressions --------------------------------------------------------------------

    def value(self, expr: Any, hint: Any = "integer") -> Value:
        """Compile an expression that yields a value (left side, mangle value, map key)."""
        if not isinstance(expr, dict):
            constant = parse(hint, expr)
            return Value(lambda p: constant, hint, _text(expr))
        kind, body = next(iter(expr.items()))
        text = _text(expr)
        if kind == "meta":
            return self.meta(body["key"], text)
        if kind == "ct":
            return self.ct(body, text)
        if kind == "payload":
            return self.payload(body, text)
        if kind == "numgen":
            return self.numgen(body, text)
        if kind == "fib":
            return self.fib(body, text)
        if kind == "rt":
            return self.rt(body, text)
        if kind == "socket" and body.get("key") == "cgroupv2":
            return self.socket_cgroup(int(body.get("level", 0)), text)
        if kind in ("&", "|", "^", "<<", ">>"):
            return self.binop(kind, body, text)
        if kind == "concat":
            parts = [self.value(e) for e in body]
            getters = [part.get for part in parts]

            def concat(p: Packet) -> Any:
                values: list[Any] = []
                unknown: Indeterminate | None = None
                for g in getters:
                    try:
                        value = g(p)
                    except Indeterminate as exc:
                        unknown, value = exc, UNKNOWN
                    if value is MISSING:
                        return MISSING
                    values.append(value)
                return tuple(values) if unknown is None else Partial(tuple(values), unknown)

            return Value(concat, tuple(part.dtype for part in parts), text)
        if kind == "map":
            return self.map(body, hint, text)
        return Value(_unknown(text, f"the '{kind}' expression is not modelled"), hint, text)

    def map(self, body: dict[str, Any], hint: Any, text: str) -> Value:
        key = self.value(body["key"])
        lookup, data, data_type = self.map_data(key.dtype, body["data"], hint)
        values = [parse(data_type, v) for v in data]
        choice = self.numgen_choice(body["key"], lookup)
        if choice is not None:
            weights, indexes, label = choice

            def numgen_map(p: Packet) -> Any:
                index = indexes[p.choose(weights, label)]
                return values[index] if index >= 0 else MISSING

            return Value(numgen_map, data_type, text)
        get = key.get

        def mapped(p: Packet) -> Any:
            index = _find(lookup, get(p))
            return values[index] if index >= 0 else MISSING

        return Value(mapped, data_type, text)

    def binop(self, kind: str, body: list[Any], text: str) -> Value:
        left = self.value(body[0])
        if isinstance(body[1], dict) and not ({"prefix", "range", "set"} & set(body[1])):
            right = self.value(body[1], left.dtype)
            get_right = right.get
        else:
            constant = parse(left.dtype, body[1])
            get_right = lambda p: constant  # noqa: E731
        operate: Callable[[int, int], int] = {
            "&": lambda a, b: a & b, "|": lambda a, b: a | b, "^": lambda a, b: a ^ b,
            "<<": lambda a, b: a << b, ">>": lambda a, b: a >> b,
        }[kind]
        get_left = left.get

        def binop(p: Packet) -> Any:
            a = get_left(p)
            b = get_right(p)
            if a is MISSING or b is MISSING:
                return MISSING
            return operate(a, b)

        return Value(binop, left.dtype, text)

    def meta(self, key: str, text: str) -> Value:
        if key == "mark":
            return Value(lambda p: p.mark, "mark", text)
        if key in ("iifname", "iif"):
            return Value(lambda p: p.in_dev or "", "ifname" if key == "iifname" else "iface_index", text)
        if key in ("oifname", "oif"):
            return Value(lambda p: p.out_dev or "", "ifname" if key == "oifname" else "iface_index", text)
        if key == "l4proto":
            return Value(_l4proto(text), "inet_proto", text)
        if key == "nfproto":
            return Value(lambda p: p.version, "nf_proto", text)
        if key == "protocol":
            return Value(lambda p: 0x0800 if p.version == 4 else 0x86DD, "ether_type", text)
        if key == "pkttype":
            return Value(_pkttype, "pkttype", text)
        if key in ("skuid", "skgid"):
            option = "--user" if key == "skuid" else "--group"

            def owner(p: Packet) -> Any:
                if not p.local_out:
                    return MISSING
                known = p.uid if key == "skuid" else p.gid
                if known is None:
                    raise Indeterminate(text, f"the owner of the local socket is not known: pass {option}")
                return known
            return Value(owner, "integer", text)
        if key == "nftrace":
            return Value(lambda p: 0, "integer", text)
        if key == "rtclassid":
            return Value(lambda p: p.realm if p.table is not None else MISSING, "integer", text)
        return Value(_unknown(text, f"meta {key} is not modelled"), "integer", text)

    def socket_cgroup(self, level: int, text: str) -> Value:
        """The path of the local socket's ancestor cgroup at depth LEVEL (`trace --cgroup`);
        a socket in a shallower cgroup has none, and the rule does not match."""
        def ancestor(p: Packet) -> Any:
            if not p.local_out:
                return MISSING
            if p.cgroup is None:
                raise Indeterminate(text, "the cgroup of the local socket is not known: pass --cgroup")
            parts = p.cgroup.split("/") if p.cgroup else []
            return "/".join(parts[:level]) if 0 < level <= len(parts) else ("" if level == 0 else MISSING)
        return Value(ancestor, "cgroupsv2", text)

    def ct(self, body: dict[str, Any], text: str) -> Value:
        key = body["key"]
        direction = body.get("dir")
        if key == "state":
            def state(p: Packet) -> int:
                if p.untracked:
                    return CT_UNTRACKED
                return p.ct_state if p.ct is not None else CT_INVALID
            return Value(state, "ct_state", text)
        if key == "mark" and direction is None:
            return Value(lambda p: p.ct.mark if p.ct is not None and not p.untracked else MISSING, "mark", text)
        if key == "direction":
            return Value(lambda p: (1 if p.ct_reply else 0) if p.ct is not None and not p.untracked else MISSING,
                         "ct_dir", text)
        if key == "zone":
            return Value(lambda p: 0 if p.ct is not None and not p.untracked else MISSING, "integer", text)
        if key == "status":
            def status(p: Packet) -> Any:
                if p.ct is None or p.untracked:
                    return MISSING
                if p.ct_reply:
                    raise Indeterminate(text, "the conntrack status of a reply (assured, seen-reply) is not modelled")
                return (CT_STATUS["snat"] if p.ct.snat else 0) | (CT_STATUS["dnat"] if p.ct.dnat else 0)
            return Value(status, "ct_status", text)
        field_name = key.split()[-1]
        if field_name in ("saddr", "daddr", "proto-src", "proto-dst") and direction in ("original", "reply"):
            return Value(_ct_tuple(direction, field_name, text), _ct_dtype(body, field_name), text)
        return Value(_unknown(text, f"ct {key} is not modelled"), "integer", text)

    def payload(self, body: dict[str, Any], text: str) -> Value:
        protocol = body.get("protocol")
        name = str(body.get("field"))
        if protocol is None:
            return Value(_unknown(text, "raw payload reads are not modelled"), "integer", text)
        if protocol in ("ip", "ip6"):
            return self.ip_field(4 if protocol == "ip" else 6, name, text)
        if protocol in PORT_PROTOCOL_NUMBERS:
            return self.transport_field(PORT_PROTOCOL_NUMBERS[protocol], name, text)
        if protocol == "th":
            if name not in ("sport", "dport"):
                return Value(_unknown(text, f"th {name} is not modelled"), "integer", text)
            return Value(_ports(name, None, text), "inet_service", text)
        if protocol in ("icmp", "icmpv6"):
            number = 1 if protocol == "icmp" else 58
            if name == "type":
                return Value(lambda p: p.icmp_type if p.proto == number else MISSING, f"{protocol}_type", text)
            if name == "code":
                return Value(lambda p: 0 if p.proto == number else MISSING, f"{protocol}_code", text)
            return Value(_unknown(text, f"{protocol} {name} is not modelled"), "integer", text)
        if protocol == "ether":
            return self.ether_field(name, text)
        if protocol in ("vlan", "arp"):
            return Value(lambda p: MISSING, "integer", text)
        return Value(_unknown(text, f"{protocol} headers are not modelled"), "integer", text)

    def ip_field(self, version: int, name: str, text: str) -> Value:
        dtype = "ipv4_addr" if version == 4 else "ipv6_addr"
        if name in ("saddr", "daddr"):
            attribute = "src" if name == "saddr" else "dst"

            def address(p: Packet) -> Any:
                if p.version != version:
                    return MISSING
                value = getattr(p, attribute)
                if value is None:
                    raise Indeterminate(text, "the address NAT gave this packet is not known offline: pass --addr")
                return value
            return Value(address, dtype, text)
        if name in ("protocol", "nexthdr"):
            l4 = _l4proto(text)
            return Value(lambda p: l4(p) if p.version == version else MISSING, "inet_proto", text)
        if name == "dscp":
            return Value(lambda p: p.dscp if p.version == version else MISSING, "dscp", text)
        if name == "version":
            return Value(lambda p: version if p.version == version else MISSING, "integer", text)
        return Value(_unknown(text, f"{text} is not modelled (only addresses, protocol and dscp are)"), "integer", text)

    def transport_field(self, number: int, name: str, text: str) -> Value:
        if name in ("sport", "dport"):
            return Value(_ports(name, number, text), "inet_service", text)
        if name == "flags" and number == 6:
            return Value(lambda p: p.tcp_flags if p.proto == 6 else MISSING, "tcp_flag", text)
        return Value(_unknown(text, f"{text} is not modelled"), "integer", text)

    def ether_field(self, name: str, text: str) -> Value:
        host = self.system.host
        if name == "saddr":
            def source(p: Packet) -> Any:
                if p.in_dev is None:
                    return MISSING
                if p.mac is None:
                    raise Indeterminate(text, "depends on the sender's MAC address: pass --mac")
                return p.mac
            return Value(source, "ether_addr", text)
        if name == "daddr":
            def destination(p: Packet) -> Any:
                if p.in_dev is None:
                    return MISSING
                link = host.link(p.in_dev)
                if link is None or link.mac is None:
                    raise Indeterminate(text, f"the MAC address of {p.in_dev} is not known")
                return link.mac.lower()
            return Value(destination, "ether_addr", text)
        if name == "type":
            return Value(lambda p: MISSING if p.in_dev is None else (0x0800 if p.version == 4 else 0x86DD),
                         "ether_type", text)
        return Value(_unknown(text, f"{text} is not modelled"), "integer", text)

    def numgen(self, body: dict[str, Any], text: str) -> Value:
        modulus = int(body["mod"])
        offset = int(body.get("offset", 0))
        if modulus > 4096:
            return Value(_unknown(text, "numgen with more than 4096 outcomes outside a map is not modelled"),
                         "integer", text)
        weights = (1,) * modulus
        return Value(lambda p: offset + p.choose(weights, text), "integer", text)

    def fib(self, body: dict[str, Any], text: str) -> Value:
        result = body["result"]
        flags = set(body.get("flags", ()))
        rpdb = self.system.rpdb
        use_daddr = "daddr" in flags
        if result == "type":
            def address_type(p: Packet) -> Any:
                address = p.dst if use_daddr else p.src
                if address is None:
                    raise Indeterminate(text, "the address NAT gave this packet is not known")
                dev = p.in_dev if "iif" in flags else p.out_dev if "oif" in flags else None
                return FIB_TYPES[rpdb.address_type(p.version, address, dev)]
            return Value(address_type, "fib_addrtype", text)
        if result in ("oif", "oifname"):
            def route_device(p: Packet) -> Any:
                if p.src is None or p.dst is None:
                    raise Indeterminate(text, "the address NAT gave this packet is not known")
                query = Query(p.version, p.src if use_daddr else p.dst, p.dst if use_daddr else p.src, "lo", None,
                              p.mark if "mark" in flags else 0, 0, 0, 0, p.tos())
                found = rpdb.lookup(query, p.choose)
                if found.kind != "unicast" or found.dev is None:
                    return ""
                wanted = p.in_dev if "iif" in flags else p.out_dev if "oif" in flags else None
                if wanted is not None and found.dev != wanted:
                    return ""
                return found.dev
            return Value(route_device, "ifname" if result == "oifname" else "iface_index", text)
        return Value(_unknown(text, f"fib {result} is not modelled"), "integer", text)

    def rt(self, body: dict[str, Any], text: str) -> Value:
        if body.get("key") == "nexthop":
            version = {"ip": 4, "ip6": 6}.get(body.get("family", "ip"), 4)

            def next_hop(p: Packet) -> Any:
                if p.version != version or p.next_hop is None:
                    return MISSING
                return p.next_hop
            return Value(next_hop, "ipv4_addr" if version == 4 else "ipv6_addr", text)
        return Value(_unknown(text, f"rt {body.get('key')} is not modelled"), "integer", text)


def _l4proto(text: str) -> Getter:
    def l4proto(p: Packet) -> Any:
        if p.proto is None:
            raise Indeterminate(text, "depends on the protocol: pass --proto")
        return p.proto
    return l4proto


def _ports(name: str, number: int | None, text: str) -> Getter:
    attribute = name

    def port(p: Packet) -> Any:
        if number is not None:
            if p.proto is None:
                raise Indeterminate(text, "depends on the protocol: pass --proto")
            if p.proto != number:
                return MISSING
        elif p.proto not in TRANSPORT_PORTS:
            if p.proto is None:
                raise Indeterminate(text, "depends on the protocol: pass --proto")
            raise Indeterminate(text, f"th {name} of protocol {p.proto} reads bytes that are not ports")
        value = getattr(p, attribute)
        if value is None:
            raise Indeterminate(text, f"depends on the {'source' if name == 'sport' else 'destination'} port: "
                                      f"pass --{name}")
        return value
    return port


def _pkttype(p: Packet) -> int:
    if p.dst is None:
        return 0
    if p.version == 4:
        if p.dst == 0xFFFFFFFF:
            return 1
        return 2 if p.dst >> 28 == 0xE else 0
    return 2 if p.dst >> 120 == 0xFF else 0


def _ct_dtype(body: dict[str, Any], field_name: str) -> str:
    if field_name in ("proto-src", "proto-dst"):
        return "inet_service"
    return "ipv6_addr" if body.get("family") == "ip6" or body["key"].startswith("ip6") else "ipv4_addr"


def _ct_tuple(direction: str, field_name: str, text: str) -> Getter:
    def get(p: Packet) -> Any:
        ct = p.ct
        if ct is None or p.untracked:
            return MISSING
        if direction == "original":
            value = {"saddr": ct.orig_src, "daddr": ct.orig_dst, "proto-src": ct.orig_sport,
                     "proto-dst": ct.orig_dport}[field_name]
        else:
            value = {
                "saddr": ct.reply_src, "daddr": ct.reply_dst,
                "proto-src": ct.dnat[1] if ct.dnat and ct.dnat[1] is not None else ct.orig_dport,
                "proto-dst": ct.snat[1] if ct.snat and ct.snat[1] is not None else ct.orig_sport,
            }[field_name]
        if value is None:
            raise Indeterminate(text, "not known for this flow")
        return value
    return get


def _keys_and_data(elements: Any, key_type: Any, data_type: Any) -> tuple[list[Any], list[Any]]:
    """A named set's or map's keys in comparable form, and each element's data (None in a set)."""
    keys: list[Any] = []
    data: list[Any] = []
    for element in elements:
        if data_type is not None and isinstance(element, list):
            keys.append(parse(key_type, element[0]))
            data.append(element[1])
        else:
            keys.append(parse(key_type, element))
            data.append(None)
    return keys, data
