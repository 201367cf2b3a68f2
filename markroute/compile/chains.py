"""Compiling a `Model` into a `Plan`: the nftables table here, the rest from `routing`.

How packets flow through the generated table (`inet markroute`):

* `prerouting` (filter, mangle priority) and `output` (route, mangle priority): packets of
  known connections get their uplink mark back from the connection mark and leave the
  chain: a verdict map on the masked connection mark (the form every nftables version
  accepts) reaches `restore_<uplink>`, one rule setting the packet's mark bits. Only a
  connection's first packet goes further: in prerouting it is first classified by the
  uplink it arrived through (`ingress`, `inbound` drops; one `iifname` map to a chain per
  interface when there are several), otherwise the policies decide, first match wins.
  Deciding once per connection and saving the decision in the conntrack mark is what
  keeps a balanced connection on one uplink.
* `mark_<uplink>` chains set only the bits of the mark mask, in the packet and the
  connection, and accept, in one rule.
* `group_<name>` chains pick a member: `numgen random` over a verdict map for weighted
  balancing, a plain `goto` to the first usable member for failover, else the last
  resort. `via_<uplink>` chains lead policies to an uplink, or to the last resort while it
  is down. These two kinds are the only chains that depend on uplink health (`UplinkAvailability`),
  so the daemon rewrites just them when an uplink changes state.
* `postrouting` (nat) masquerades or SNATs per uplink; it exists only when an uplink NATs,
  since even an empty nat chain makes every forwarded packet pass the NAT hooks.
* `policies_fwd` / `policies_local` hold the policies in order. A run of at least
  `MERGE_MIN` consecutive policies testing the same fields is one verdict-map lookup
  whose elements `goto pol_<n>`, the policy's own chain with its counter
  (`markroute.compile.policymaps`); other policies are one rule each.
* Where a policy or an uplink's ingress decides, `ct label set` records which one in the
  connection's labels (`markroute.plan.labels`), for `markroute flows` and `explain`.
  `settings.connection_records: false` leaves these statements out (and conntrack's
  accounting and timestamps alone, `routing.sysctls`): once no rule of the namespace uses
  labels, the kernel adds no extension to a new connection: 7% of the CPU per first packet
  on a 1-policy router, 3-5% per established packet (BENCHMARKS.md, "Connection records").

The mark then selects the uplink's routing table through an `ip rule fwmark` in
markroute's own priority band (`markroute.compile.routing`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from markroute import marks
from markroute import match as match_keys
from markroute.compile import bound, execs, ha, policymaps, routing
from markroute.compile.namedsets import NamedSets
from markroute.compile.policymaps import PolicyKey
from markroute.model import Match, Model, Policy, Uplink
from markroute.plan import (
    TABLE_NAME,
    Plan,
    labels,
    ordered_routes,
    ordered_rules,
    packetlog,
)
from markroute.plan import nftjson as nj

Expr = dict[str, Any]
MERGE_MIN = 4  # shorter runs of same-shape policies stay rules: a few rules cost nothing measurable
NFPROTO = {4: "ipv4", 6: "ipv6"}


@dataclass(frozen=True)
class UplinkAvailability:
    """Which uplinks the plan may use: those down are left out, degraded ones weigh less.

    The daemon derives it from its uplinks' states (`daemon.failover.availability_of`).

    Only the `via_<uplink>` and `group_<name>` chains depend on it, so a health change
    rewrites those few chains and never the policies, sets or counters.
    """

    down: frozenset[str] = frozenset()
    weight_factor: Mapping[str, float] = field(default_factory=dict)
    held: frozenset[tuple[str, str]] = frozenset()  # (group, uplink): back up, but the group's failback hold runs


def compile_plan(
    model: Model, health: UplinkAvailability = UplinkAvailability(), merge_min: int | None = MERGE_MIN
) -> Plan:
    """The plan for `model`; `merge_min=None` keeps one rule per policy (the naive form benchmarks compare)."""
    return Compiler(model, health, merge_min).plan()


class Compiler:
    def __init__(self, model: Model, health: UplinkAvailability = UplinkAvailability(), merge_min: int | None = MERGE_MIN) -> None:
        self.model = model
        self.health = health
        self.merge_min = merge_min
        self.numbers = {id(policy): n for n, policy in enumerate(model.policies, 1)}
        self.mask = model.settings.mark_mask
        self.table = TABLE_NAME
        self.named_sets = NamedSets(self.table, model.dynamic_sets)
        self.chains: dict[str, list[Expr]] = {}
        self.base: dict[str, Expr] = {}
        self.negations = 0
        self.pinned = False  # whether `bound_sockets` wrote its rules
        self.keys: dict[int, dict[int, PolicyKey] | None] = {}  # `policy_keys` by policy id: both directions ask
        self.applicable_to: dict[bool, list[Policy]] = {}  # `applicable` by direction: asked twice per direction

    # -- entry point ------------------------------------------------------------------

    def plan(self) -> Plan:
        self.named_sets.declare_dynamic()
        self.define_base_chains()
        self.prerouting()
        self.output()
        self.postrouting()
        nft: list[Expr] = [nj.table(self.table)]
        nft += list(self.named_sets.declared.values())
        if self.model.settings.ha is not None:
            nft += ha.hold_sets(self.table)
            for name, (chain, hold_rules) in ha.hold_chains(self.table).items():
                self.base[name] = chain
                for expr in hold_rules:
                    self.add(name, expr, "ha hold")
        for name in self.chains:
            nft.append(self.base.get(name) or nj.chain(self.table, name))
        for rules in self.chains.values():
            nft += rules
        bound_tables = bound.bound_tables(self.model, self.pinned)
        uplinks = routing.uplink_plans(self.model, bound_tables)
        return Plan(
            mask=self.mask,
            rule_priority=self.model.settings.rule_priority,
            nft=tuple(nft),
            rules=ordered_rules(routing.ip_rules(self.model, bound_tables)),
            routes=ordered_routes(routing.routes(uplinks)),
            sysctls=routing.sysctls(self.model),
            uplinks=uplinks,
            policies=tuple(p.name for p in self.model.policies),
            groups=routing.group_plans(self.model),
            pin_bound=self.pinned,
            connection_records=self.model.settings.connection_records,
        )

    # -- chains -----------------------------------------------------------------------

    def define_base_chains(self) -> None:
        self.base["prerouting"] = nj.chain(self.table, "prerouting", "prerouting", "filter", "mangle")
        self.base["output"] = nj.chain(self.table, "output", "output", "route", "mangle")
        if any(uplink.nat.kind != "none" for uplink in self.model.uplinks.values()):
            # An empty nat chain still registers conntrack's NAT hooks: ~0.4 µs per forwarded packet.
            self.base["postrouting"] = nj.chain(self.table, "postrouting", "postrouting", "nat", "srcnat")
        for name in self.base:
            self.chains[name] = []

    def add(self, chain: str, expr: list[Expr], comment: str | None = None) -> None:
        self.chains.setdefault(chain, []).append(nj.rule(self.table, chain, expr, comment))

    def restore_rules(self, chain: str) -> None:
        """Known connections: put the uplink mark back on the packet and stop.

        The restore keys on the connection mark, not on the state: a retransmitted first
        packet (a lost SYN) is still `new`, and classifying it again could move the
        connection to another uplink than the one its NAT mapping was made for.
        """
        if self.model.uplinks:
            entries = [(u.mark, nj.verdict("goto", self.restore_chain(u))) for u in self.model.uplinks.values()]
            self.add(chain, [nj.vmap(nj.band(nj.ct("mark"), self.mask), entries)], "restore connection mark")
        self.add(chain, [nj.match(nj.ct("state"), "new", "!="), nj.verdict("accept")])

    def restore_chain(self, uplink: Uplink) -> str:
        """`restore_<uplink>`: a known connection's packet gets its uplink mark back.

        Only the packet's mark: the connection's already holds it (the first packet's
        `mark_<uplink>` wrote it), so every later packet does one statement, not two.
        """
        chain = f"restore_{uplink.name}"
        if chain not in self.chains:
            self.chains[chain] = []
            self.add(chain, [nj.set_bits(nj.meta("mark"), self.mask, uplink.mark), nj.verdict("accept")])
        return chain

    def prerouting(self) -> None:
        self.restore_rules("prerouting")
        self.ingress_rules()
        if self.applicable(local=False):
            self.add("prerouting", [nj.match(nj.fib_daddr_type(), "local"), nj.verdict("accept")], "to this host")
            self.policy_rules("policies_fwd", local=False)
            self.add("prerouting", [nj.verdict("goto", "policies_fwd")])

    def output(self) -> None:
        self.restore_rules("output")
        self.exec_rule()
        if self.applicable(local=True):
            self.add("output", [nj.match(nj.band(nj.meta("mark"), self.mask), 0, "!="), nj.verdict("accept")],
                     "socket chose its uplink")
            self.add("output", [nj.match(nj.fib_daddr_type(), "local"), nj.verdict("accept")], "to this host")
            self.policy_rules("policies_local", local=True)
            self.add("output", [nj.verdict("goto", "policies_local")])

    def ingress_rules(self) -> None:
        """The uplinks' ingress rules, uplinks with an `ingress:` match first.

        With several interfaces, one `iifname vmap` jumps to the arriving interface's
        `ingress_<uplink>` chain (named for its first uplink): a new connection from the
        LAN pays one lookup, not one comparison per uplink. A jump, not a goto: a
        connection no ingress rule there takes goes on to the policies, as it would past
        the rules inline. With one interface the rules stay inline: one comparison is cheaper.
        """
        plain = [u for u in self.model.uplinks.values() if u.ingress is None]
        explicit = [u for u in self.model.uplinks.values() if u.ingress is not None]
        by_interface: dict[str, list[Uplink]] = {}
        for uplink in explicit + plain:
            by_interface.setdefault(uplink.interface, []).append(uplink)
        if len(by_interface) < 2:
            for uplink in explicit + plain:
                self.ingress(uplink, "prerouting", [nj.match(nj.meta("iifname"), uplink.interface)])
            return
        entries = []
        for interface, uplinks in by_interface.items():
            chain = f"ingress_{uplinks[0].name}"
            self.chains[chain] = []
            for uplink in uplinks:
                self.ingress(uplink, chain, [])
            entries.append((interface, nj.verdict("jump", chain)))
        self.add("prerouting", [nj.vmap(nj.meta("iifname"), entries)], "arrived through an uplink")

    def ingress(self, uplink: Uplink, chain: str, head: list[Expr]) -> None:
        """A new connection arriving through an uplink is that uplink's: never policy-routed.

        HEAD tests the interface where CHAIN does not already imply it."""
        reply = self.model.settings.reply_via_ingress
        accepted = nj.verdict("goto", self.mark_chain(uplink.name)) if reply else nj.verdict("accept")
        target = accepted
        if uplink.inbound is not None and uplink.inbound.policy == "drop":
            inbound = f"in_{uplink.name}"
            for allowed in uplink.inbound.allow:
                self.emit(inbound, allowed, [nj.counter(), accepted], f"inbound {uplink.name} allow")
            if uplink.inbound.log is not None:
                self.add(inbound, packetlog.statements(uplink.inbound.log.prefix, uplink.inbound.log.rate, "drop", uplink.name),
                         f"log of inbound {uplink.name}")
            self.add(inbound, [nj.counter(), nj.verdict("drop")], f"inbound {uplink.name}")
            target = nj.verdict("goto", inbound)
        match = uplink.ingress or Match()
        recorded = self.recorded(labels.Decision("ingress", uplink.mark >> marks.shift(self.mask)))
        self.emit(chain, match, [nj.counter(), *recorded, target], f"ingress {uplink.name}", head,
                  versions=match.versions & uplink.versions)

    def applicable(self, local: bool) -> list[Policy]:
        """The policies that can see forwarded (local=False) or router-originated traffic; worked out once each."""
        if local not in self.applicable_to:
            self.applicable_to[local] = [p for p in self.model.policies if match_keys.applies(p.match, local)]
        return self.applicable_to[local]

    def policy_rules(self, chain: str, local: bool) -> None:
        """The policies of one direction, in order: first match wins; long same-shape runs share a map."""
        run: list[tuple[Policy, dict[int, PolicyKey]]] = []
        pin = local
        for policy in self.applicable(local):
            if pin and not bound.decides_first(policy):
                self.policy_run(chain, run)
                run, pin = [], False
                self.bound_sockets(chain)
            keys = self.policy_keys(policy)
            if run and (keys is None or _fields(keys) != _fields(run[0][1])):
                self.policy_run(chain, run)
                run = []
            if keys is None:
                self.policy_rule(chain, policy)
            else:
                run.append((policy, keys))
        self.policy_run(chain, run)
        if pin:
            self.bound_sockets(chain)

    def exec_rule(self) -> None:
        """New connections of `markroute exec` commands: to their target, whatever the policies say."""
        if not self.model.settings.exec:
            return
        entries = [(execs.gid(self.model, t), self.member_target(t)) for t in execs.targets(self.model)]
        self.add("output", [nj.vmap(nj.meta("skgid"), entries)], "markroute exec")

    def bound_sockets(self, chain: str) -> None:
        """A socket bound to an uplink's address keeps that uplink (`markroute.compile.bound`)."""
        for uplink, realm in bound.pinned(self.model):
            self.pinned = True
            self.add(chain, [nj.match(nj.meta("rtclassid"), realm), nj.counter(),
                             nj.verdict("goto", self.mark_chain(uplink.name))], f"bound to {uplink.name}")

    def policy_versions(self, policy: Policy) -> frozenset[int]:
        return policy.match.versions & self.model.target_versions(policy.via)

    def policy_rule(self, chain: str, policy: Policy) -> None:
        tail = self.decide(policy) if policy.log is None else [nj.verdict("goto", self.policy_chain(policy))]
        self.emit(chain, policy.match, tail, f"policy {policy.name}", versions=self.policy_versions(policy))

    def decide(self, policy: Policy) -> list[Expr]:
        """What a policy does to a connection it matches: count, record itself in the labels, go to its target."""
        recorded = self.recorded(labels.Decision("policy", self.numbers[id(policy)]))
        return [nj.counter(), *recorded, self.target(policy.via)]

    def recorded(self, decision: labels.Decision) -> list[Expr]:
        """The `ct label set` recording DECISION, or nothing when `connection_records` is off."""
        return labels.statements(decision) if self.model.settings.connection_records else []

    def policy_keys(self, policy: Policy) -> dict[int, PolicyKey] | None:
        """The policy's map key per IP family, or None when it stays a rule of its own; worked out once."""
        if id(policy) not in self.keys:
            self.keys[id(policy)] = self._policy_keys(policy)
        return self.keys[id(policy)]

    def _policy_keys(self, policy: Policy) -> dict[int, PolicyKey] | None:
        if self.merge_min is None:
            return None
        keys: dict[int, PolicyKey] = {}
        for version in sorted(self.policy_versions(policy)):
            key = policymaps.policy_key(policy.match, version)
            if key is None:
                return None
            keys[version] = key
        return keys or None

    def policy_run(self, chain: str, run: list[tuple[Policy, dict[int, PolicyKey]]]) -> None:
        """Consecutive policies of one shape: one map lookup per family if the run is long enough."""
        if not run:
            return
        if self.merge_min is None or len(run) < self.merge_min:
            for policy, _ in run:
                self.policy_rule(chain, policy)
            return
        fields = _fields(run[0][1])
        per_version: dict[int, list[tuple[policymaps.Box, int]]] = {}
        for version in (4, 6):
            keyed = [(keys[version].boxes, index) for index, (_, keys) in enumerate(run) if version in keys]
            if keyed:
                per_version[version] = policymaps.first_match(keyed, policymaps.joinable(fields))
        verdicts = [nj.verdict("goto", self.policy_chain(policy)) for policy, _ in run]
        comment = f"{len(run)} policies from {run[0][0].name}"
        specific = policymaps.family_specific(fields)
        if not specific and set(per_version) == {4, 6} and per_version[4] == per_version[6]:
            per_version = {0: per_version[4]}
        for version, entries in per_version.items():
            family = version or None
            guard = [] if specific or not family else [nj.match(nj.meta("nfproto"), NFPROTO[version])]
            guard += policymaps.port_guard(fields, entries)
            elements = [(policymaps.element(fields, family, box), verdicts[owner]) for box, owner in entries]
            self.add(chain, guard + [nj.vmap(policymaps.key_expression(fields, family), elements)], comment)

    def policy_chain(self, policy: Policy) -> str:
        """`pol_<n>`: the policy's counter and target, reached from a merged map or, for a
        policy with `log:`, from its rule: the log line is a rule of its own there (`plan.packetlog`)."""
        chain = f"pol_{self.numbers[id(policy)]}"
        if chain not in self.chains:
            self.chains[chain] = []
            if policy.log is not None:
                logged = packetlog.statements(policy.log.prefix, policy.log.rate, "policy", policy.name)
                self.add(chain, logged, f"log of policy {policy.name}")
            self.add(chain, self.decide(policy), f"policy {policy.name}")
        return chain

    def target(self, via: str) -> Expr:
        if via == "main":
            return nj.verdict("accept")
        if via in self.model.groups:
            return nj.verdict("goto", self.group_chain(via))
        if via in self.model.uplinks:
            return nj.verdict("goto", self.via_chain(via))
        return nj.verdict("goto", self.mark_chain(via))

    def member_target(self, member: str) -> Expr:
        """A group member that the group already found usable: straight to its mark."""
        if member in self.model.groups:
            return nj.verdict("goto", self.group_chain(member))
        return nj.verdict("goto", self.mark_chain(member))

    def last_resort(self, group: str | None = None) -> Expr:
        """Where traffic goes when its uplink, or every member of GROUP, is down (the group's own, else global)."""
        return self.target(self.model.last_resort_of(group) if group else self.model.settings.last_resort)

    def usable(self, target: str) -> bool:
        if target in self.model.groups:
            return any(self.usable(member) for member, _ in self.model.groups[target].members)
        return target not in self.health.down

    def via_chain(self, name: str) -> str:
        """Chain policies use to reach an uplink: its mark while it is usable, else last resort."""
        chain = f"via_{name}"
        if chain not in self.chains:
            self.chains[chain] = []
            verdict = nj.verdict("goto", self.mark_chain(name)) if self.usable(name) else self.last_resort()
            self.add(chain, [verdict])
        return chain

    def mark_chain(self, name: str) -> str:
        """Chain that sets uplink `name`'s mark (or a reserved one) on packet and connection."""
        chain = f"mark_{name}"
        if chain in self.chains:
            return chain
        if name in self.model.uplinks:
            value = self.model.uplinks[name].mark
            body = [nj.set_bits(nj.meta("mark"), self.mask, value), nj.set_bits(nj.ct("mark"), self.mask, value)]
        else:
            value = marks.unreachable_mark(self.mask) if name == "unreachable" else marks.blackhole_mark(self.mask)
            body = [nj.set_bits(nj.meta("mark"), self.mask, value)]
        self.chains[chain] = []
        self.add(chain, [*body, nj.verdict("accept")])  # one rule: a rule per statement costs a rule walk each
        return chain

    def group_chain(self, name: str) -> str:
        chain = f"group_{name}"
        if chain in self.chains:
            return chain
        self.chains[chain] = []
        group = self.model.groups[name]
        per_version = {
            v: [(m, w) for m, w in group.members
                if v in self.model.target_versions(m) and self.usable(m) and (name, m) not in self.health.held]
            for v in (4, 6)
        }
        versions = [v for v in (4, 6) if per_version[v]]
        if len(versions) == 2 and per_version[4] == per_version[6]:
            versions = [0]
            per_version[0] = per_version[4]
        for version in versions:
            guard = [nj.match(nj.meta("nfproto"), NFPROTO[version])] if version else []
            members = per_version[version]
            if group.kind == "failover" or len(members) == 1:
                self.add(chain, guard + [self.member_target(members[0][0])])
            else:
                self.add(chain, guard + [self.balance_map(self.effective_weights(members))])
        self.add(chain, [self.last_resort(name)], "last resort")
        return chain

    def effective_weights(self, members: list[tuple[str, int]]) -> list[tuple[str, int]]:
        """Weights scaled down for degraded members, kept integral and as small as possible."""
        factors = self.health.weight_factor
        if not any(m in factors for m, _ in members):
            return members
        scaled = [(m, max(1, round(w * 100 * factors.get(m, 1.0)))) for m, w in members]
        divisor = math.gcd(*(w for _, w in scaled))
        return [(m, w // divisor) for m, w in scaled]

    def balance_map(self, members: list[tuple[str, int]]) -> Expr:
        total = sum(weight for _, weight in members)
        entries: list[tuple[Any, Expr]] = []
        start = 0
        for member, weight in members:
            key: Any = start if weight == 1 else nj.span(start, start + weight - 1)
            entries.append((key, self.member_target(member)))
            start += weight
        return nj.vmap(nj.numgen(total), entries)

    def postrouting(self) -> None:
        by_interface: dict[str, int] = {}
        for uplink in self.model.uplinks.values():
            by_interface[uplink.interface] = by_interface.get(uplink.interface, 0) + 1
        for uplink in self.model.uplinks.values():
            if uplink.nat.kind == "none":
                continue
            expr = [nj.match(nj.meta("oifname"), uplink.interface)]
            if by_interface[uplink.interface] > 1:
                expr.append(nj.match(nj.band(nj.meta("mark"), self.mask), uplink.mark))
            if uplink.nat.kind == "masquerade":
                expr += [nj.counter(), {"masquerade": None}]
            else:
                # The router's own packets take the uplink's own address: the snat address
                # may float (a VRRP address held by the peer), and VRRP adverts and probes
                # must carry the sender's address (issue #17).
                own = [nj.match(nj.fib_saddr_type(), "local"), nj.counter(), {"masquerade": None}]
                self.add("postrouting", expr + own, f"nat {uplink.name} own")
                address = uplink.nat.address or ""
                family = "ip6" if ":" in address else "ip"
                expr += [nj.match(nj.meta("nfproto"), "ipv6" if family == "ip6" else "ipv4"), nj.counter(),
                         {"snat": {"family": family, "addr": address}}]
            self.add("postrouting", expr, f"nat {uplink.name}")

    # -- matches ----------------------------------------------------------------------

    def emit(
        self,
        chain: str,
        match: Match,
        tail: list[Expr],
        comment: str,
        head: list[Expr] | None = None,
        versions: frozenset[int] | None = None,
    ) -> None:
        """Rules for `head and match -> tail`, one per IP family where the match needs it.

        A negation of several conditions cannot be one nftables expression, so it becomes
        a small chain that returns when the negated part matches.
        """
        versions = match.versions if versions is None else versions
        per_family: list[int | None] = [None]
        if versions != {4, 6} or match_keys.family_specific(match):
            per_family = [version for version in sorted(versions)]
        for version in per_family:
            exprs = list(head or []) + match_keys.conditions(match, version, self.named_sets)
            if version is not None and not _has_ip_payload(exprs):
                exprs.insert(len(head or []), nj.match(nj.meta("nfproto"), NFPROTO[version]))
            negated = self.negation(match.negated, version)
            if negated is None:
                self.add(chain, exprs + tail, comment)
            elif len(negated) == 1:
                self.add(chain, exprs + [_invert(negated[0])] + tail, comment)
            else:
                self.negations += 1
                sub = f"unless_{self.negations}"
                self.chains[sub] = []
                self.add(sub, negated + [nj.verdict("return")])
                self.add(sub, tail, comment)
                self.add(chain, exprs + [nj.verdict("jump", sub)])

    def negation(self, negated: Match | None, version: int | None) -> list[Expr] | None:
        """The conditions of a `not:`, or None when it cannot hold for this family anyway."""
        if negated is None:
            return None
        if version is not None and version not in negated.versions:
            return None
        return match_keys.conditions(negated, version, self.named_sets)


def _fields(keys: dict[int, PolicyKey]) -> tuple[str, ...]:
    return next(iter(keys.values())).fields


def _has_ip_payload(exprs: list[Expr]) -> bool:
    return any(
        e.get("match", {}).get("left", {}).get("payload", {}).get("protocol") in ("ip", "ip6") for e in exprs
    )


def _invert(expr: Expr) -> Expr:
    body = dict(expr["match"])
    body["op"] = "!=" if body["op"] == "==" else "=="
    return {"match": body}
