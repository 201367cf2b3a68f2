"""The walk of one packet through the host: hooks, conntrack, NAT, routing, verdict.

The order is the kernel's. An arriving packet passes `ingress` (netdev chains of its
device), then `prerouting` (every table's base chains by priority, conntrack at -200,
destination NAT at -100), then the routing decision (martian and source checks,
rp_filter, the RPDB), then `input` or `forward` and `postrouting` (source NAT at 100).
A locally generated packet is routed by its socket first, then passes `output` -- where
a `type route` chain that changes the mark, addresses or DSCP re-routes it -- and
`postrouting`. NAT chains see only a connection's first packet; replies are un-NATed
by conntrack at the same hooks and carry the ct mark the first packet left.

A walk is deterministic except for `numgen` and multipath routes: those call
`Packet.choose`, and `explore` re-runs the walk for every choice to list each
possible outcome with its probability.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from markroute.sim.datatypes import Span
from markroute.sim.nft import NAT_HOOK_PRIORITY, Chain, Ruleset
from markroute.sim.packet import (
    CT_ESTABLISHED,
    CT_NEW,
    ECHO_REPLY,
    TCP,
    TCP_ACK,
    TCP_SYN,
    Conntrack,
    Flow,
    Indeterminate,
    Packet,
    address_text,
)
from markroute.sim.rpdb import Lookup, Query
from markroute.sim.system import System

Record = list[dict[str, Any]] | None
Choose = Callable[[tuple[int, ...], str], int]
MAX_PATHS = 4096
DST_MANIP_HOOKS = ("prerouting", "output")


class Stop(Exception):
    """The packet's fate is decided (dropped, delivered, indeterminate) before the walk's end."""

    def __init__(self, outcome: Outcome) -> None:
        super().__init__(outcome.verdict)
        self.outcome = outcome


@dataclass
class Outcome:
    """Where one packet ends up, and why."""

    verdict: str  # forward | local | drop | indeterminate
    oif: str | None = None
    next_hop: str | None = None
    table: str | None = None
    mark: int = 0
    ct_mark: int | None = None
    snat: str | None = None
    dnat: str | None = None
    nat: dict[str, Any] | None = None
    policy: str | None = None
    reason: str | None = None
    indeterminate: dict[str, str | None] | None = None
    rp_filter: dict[str, Any] | None = None
    reply: dict[str, Any] | None = None
    source_check: str | None = None

    def key(self) -> tuple[Any, ...]:
        """What tells two outcomes apart when paths are merged and flows are counted."""
        return (self.verdict, self.oif, self.next_hop, self.table, self.mark, self.snat, self.policy, self.reason)

    def label(self) -> str:
        if self.verdict == "forward":
            via = f" via {self.next_hop}" if self.next_hop else ""
            nat = f", source {self.snat}" if self.snat else ""
            return f"out {self.oif}{via} (mark {self.mark:#x}{nat})"
        if self.verdict == "local":
            return f"delivered locally (mark {self.mark:#x})"
        return f"{self.verdict}: {self.reason}"

    def to_json(self) -> dict[str, Any]:
        return {
            "verdict": self.verdict,
            "oif": self.oif,
            "next_hop": self.next_hop,
            "table": self.table,
            "mark": hex(self.mark),
            "ct_mark": hex(self.ct_mark) if self.ct_mark is not None else None,
            "snat": self.snat,
            "dnat": self.dnat,
            "nat": self.nat,
            "policy": self.policy,
            "reason": self.reason,
            "indeterminate": self.indeterminate,
            "source_check": self.source_check,
            "rp_filter": self.rp_filter,
            "reply": self.reply,
        }


@dataclass
class Path:
    probability: float
    outcome: Outcome
    steps: list[dict[str, Any]]
    choices: list[str] = field(default_factory=list)


class _Script:
    """A `choose` that replays a prefix of choices, then takes the first option of each new one."""

    __slots__ = ("prefix", "taken", "points")

    def __init__(self, prefix: tuple[int, ...]) -> None:
        self.prefix = prefix
        self.taken: list[int] = []
        self.points: list[tuple[tuple[int, ...], str]] = []

    def __call__(self, weights: tuple[int, ...], label: str) -> int:
        position = len(self.taken)
        index = self.prefix[position] if position < len(self.prefix) else 0
        self.taken.append(index)
        self.points.append((weights, label))
        return index


@dataclass
class Leaf:
    """One complete walk of `explore`: the choices it took and where they led."""

    taken: tuple[int, ...]
    points: list[tuple[tuple[int, ...], str]]
    path: Path


class Simulator:
    """A compiled ruleset and the system it runs on; answers `trace` questions."""

    def __init__(self, ruleset: Ruleset, system: System) -> None:
        self.ruleset = ruleset
        self.system = system
        self.rpdb = system.rpdb
        self.host = system.host

    # -- exploring every outcome ----------------------------------------------------------

    def explore(self, flow: Flow, record: bool = True, with_reply: bool = True) -> list[Leaf]:
        """Every distinct walk of `flow`, one per combination of numgen/multipath choices."""
        leaves: list[Leaf] = []
        pending: list[tuple[int, ...]] = [()]
        while pending:
            prefix = pending.pop()
            script = _Script(prefix)
            steps: list[dict[str, Any]] | None = [] if record else None
            outcome = self.walk(flow, script, steps, with_reply)
            for position in range(len(prefix), len(script.taken)):
                weights = script.points[position][0]
                for alternative in range(len(weights) - 1, 0, -1):
                    pending.append(tuple(script.taken[:position]) + (alternative,))
            probability = 1.0
            choices: list[str] = []
            for (weights, label), index in zip(script.points, script.taken):
                probability *= weights[index] / sum(weights)
                choices.append(f"{label}: option {index + 1} of {len(weights)} "
                               f"({weights[index]}/{sum(weights)})")
            leaves.append(Leaf(tuple(script.taken), list(script.points), Path(probability, outcome, steps or [], choices)))
            if len(leaves) > MAX_PATHS:
                raise ValueError(f"more than {MAX_PATHS} possible paths: too many numgen/multipath combinations")
        leaves.sort(key=lambda leaf: leaf.taken)
        return leaves

    def paths(self, flow: Flow, record: bool = True) -> list[Path]:
        """The distinct outcomes of `flow`, most likely first; equal outcomes merged."""
        merged: dict[tuple[Any, ...], Path] = {}
        for leaf in self.explore(flow, record):
            key = leaf.path.outcome.key()
            if key in merged:
                merged[key].probability += leaf.path.probability
            else:
                merged[key] = leaf.path
        return sorted(merged.values(), key=lambda path: -path.probability)

    # -- one walk -----------------------------------------------------------------------

    def walk(self, flow: Flow, choose: Choose, record: Record = None, with_reply: bool = True) -> Outcome:
        """One walk of the flow's first packet (and, with `flow.reply`, of its reply).

        For a first packet the reply is walked too (unless `with_reply` is False), to
        tell where it would go and whether rp_filter would drop it.
        """
        conn = Conntrack(flow.src, flow.dst, flow.sport, flow.dport)
        p = Packet.first(flow, choose)
        original = self._run(p, conn, record, "original" if flow.reply else None)
        if original.verdict not in ("forward", "local") or not (with_reply or flow.reply):
            if flow.reply:
                original.reason = f"the original packet never got through: {original.reason}"
            return original
        reply_record: Record = record if flow.reply else None
        reply_packet = self._reply_packet(flow, conn, original, choose)
        reply = self._run(reply_packet, conn, reply_record, "reply" if flow.reply else None)
        if flow.reply:
            return reply
        expected = original.oif if original.verdict == "forward" and not flow.local else None
        original.reply = {
            "verdict": reply.verdict,
            "oif": reply.oif,
            "next_hop": reply.next_hop,
            "mark": hex(reply.mark),
            "reason": reply.reason,
            "source_check": reply.source_check,
            "same_path": reply.oif == flow.iif if reply.verdict == "forward" and flow.iif and expected else None,
        }
        original.rp_filter = self._reply_rp_filter(reply)
        return original

    def _reply_rp_filter(self, reply: Outcome) -> dict[str, Any]:
        """Whether source validation (rp_filter) would drop the reply, as far as it is known."""
        if reply.verdict == "indeterminate":
            return {"reply_dropped": None, "reason": reply.reason}
        if reply.source_check is None:
            return {"reply_dropped": False, "checked": False,
                    "reason": "the reply is not source-validated (IPv6, or sent by this host)"}
        dropped = reply.verdict == "drop" and reply.reason == reply.source_check
        return {"reply_dropped": dropped, "checked": True, "reason": reply.source_check}

    def _run(self, p: Packet, conn: Conntrack, record: Record, direction: str | None) -> Outcome:
        if record is not None and direction is not None:
            record.append({"stage": "direction", "direction": direction, "packet": f"{p.src_text} -> {p.dst_text}"})
        try:
            if p.local_out:
                outcome = self._local_out(p, conn, record)
            else:
                outcome = self._incoming(p, conn, record)
        except Stop as stop:
            outcome = stop.outcome
        except Indeterminate as exc:
            if record is not None and not (record and "indeterminate" in record[-1]):
                record.append({"stage": "indeterminate", "hook": p.hook, "expression": exc.what, "reason": exc.why,
                               "rule": exc.where})
            where = f"{exc.where}: " if exc.where else ""
            outcome = self._outcome(p, conn, "indeterminate", reason=f"{where}{exc.what}: {exc.why}", table=exc.table)
            outcome.indeterminate = {"hook": p.hook, "expression": exc.what, "reason": exc.why, "rule": exc.where}
        return outcome

    def _reply_packet(self, flow: Flow, conn: Conntrack, original: Outcome, choose: Choose) -> Packet:
        """The reply as it leaves the other end: addressed to what the first packet became."""
        local_out = original.verdict == "local"
        iif = None if local_out else original.oif
        reply = Packet(
            version=flow.version,
            src=conn.reply_src,
            dst=conn.reply_dst,
            proto=flow.proto,
            sport=conn.dnat[1] if conn.dnat and conn.dnat[1] is not None else flow.dport,
            dport=conn.snat[1] if conn.snat and conn.snat[1] is not None else flow.sport,
            dscp=flow.dscp,
            mac=None,
            iif=iif,
            local_out=local_out,
            choose=choose,
            icmp_type=ECHO_REPLY[flow.version] if flow.proto in (1, 58) else None,
            tcp_flags=TCP_SYN | TCP_ACK if flow.proto == TCP else None,
        )
        reply.ct_reply = True
        return reply

    # -- paths ------------------------------------------------------------------------

    def _incoming(self, p: Packet, conn: Conntrack, record: Record) -> Outcome:
        dev = p.iif
        assert dev is not None
        p.hook = "ingress"
        p.in_dev = dev
        for chain in self.ruleset.base_chains("ingress", p.version, dev):
            self._chain(chain, p, conn, record)
        self._hook("prerouting", p, conn, record)
        p.hook = "routing"
        self._martians(p, record)
        result = self._route(p, Query(p.version, _known(p.src), _known(p.dst), dev, None, p.mark, p.proto or 0,
                                      p.sport or 0, p.dport or 0, p.tos()), "input route", record)
        if result.delivered:
            self._validate_source(p, conn, record)
            self._hook("input", p, conn, record, out_dev=None)
            return self._outcome(p, conn, "local")
        if not self.host.forwarding(p.version, dev):
            self._stop(p, conn, record, f"forwarding is disabled on {dev}", "forwarding")
        self._validate_source(p, conn, record)
        self._take_route(p, result)
        self._hook("forward", p, conn, record, out_dev=p.oif)
        self._hook("postrouting", p, conn, record, out_dev=p.oif)
        return self._outcome(p, conn, "forward")

    def _local_out(self, p: Packet, conn: Conntrack, record: Record) -> Outcome:
        p.hook = "routing"
        if not p.ct_reply and self.rpdb.address_type(p.version, _known(p.src)) != "local":
            self._stop(p, conn, record, f"{p.src_text} is not an address of this host: a local socket cannot "
                                        "send from it (for a packet passing through, give --iif)", "source address")
        result = self._route(p, self._output_query(p, mark=p.mark), "socket route", record)
        self._take_route(p, result)
        self._hook("output", p, conn, record, out_dev=p.oif)
        self._hook("postrouting", p, conn, record, out_dev=p.oif)
        if p.delivered:
            p.in_dev = "lo"
            p.out_dev = None
            self._hook("prerouting", p, conn, record)
            self._hook("input", p, conn, record)
            return self._outcome(p, conn, "local")
        return self._outcome(p, conn, "forward")

    def _output_query(self, p: Packet, mark: int) -> Query:
        return Query(p.version, _known(p.src), _known(p.dst), "lo", None, mark, p.proto or 0, p.sport or 0,
                     p.dport or 0, p.tos(), uid=None)

    def _route(self, p: Packet, query: Query, what: str, record: Record) -> Lookup:
        rules: Record = [] if record is not None else None
        step: dict[str, Any] = {"stage": "routing", "hook": p.hook, "what": what,
                                "mark": hex(query.mark), "rules": rules}
        if record is not None:
            record.append(step)
        result = self.rpdb.lookup(query, p.choose, rules)
        if record is not None:
            step.update(self._route_summary(p.version, query, result))
        if result.error:
            reason = {"noroute": "no route", "unreachable": "unreachable", "blackhole": "blackhole",
                      "prohibit": "prohibited"}[result.kind]
            where = f"rule {result.rule.text}" if result.rule is not None and result.route is None else (
                f"route {result.route.text}" if result.route is not None else "the routing policy")
            raise Stop(self._outcome(p, None, "drop", reason=f"{what}: {reason} ({where})", table=result.table))
        return result

    def _route_summary(self, version: int, query: Query, result: Lookup) -> dict[str, Any]:
        return {
            "result": result.kind,
            "table": result.table,
            "route": result.route.text if result.route is not None else None,
            "oif": result.dev,
            "gateway": address_text(version, result.gateway) if result.gateway is not None else None,
        }

    def _take_route(self, p: Packet, result: Lookup) -> None:
        p.oif = result.dev
        p.table = result.table
        p.realm = result.route.realm if result.route is not None else 0
        p.next_hop = result.gateway if result.gateway is not None else p.dst
        p.delivered = result.delivered

    # -- hooks ------------------------------------------------------------------------

    def _hook(self, hook: str, p: Packet, conn: Conntrack, record: Record, out_dev: str | None = None) -> None:
        """Every base chain of `hook` in priority order, with conntrack and NAT at their places."""
        p.hook = hook
        if hook != "prerouting":
            p.out_dev = out_dev
        if hook in ("postrouting", "output"):
            p.in_dev = None
        tracked = hook not in DST_MANIP_HOOKS or p.ct is not None
        nat_priority = NAT_HOOK_PRIORITY.get(hook)
        nat_done = False
        for chain in self.ruleset.base_chains(hook, p.version):
            priority = chain.effective_priority
            if not tracked and priority >= -200:
                self._conntrack(p, conn, record)
                tracked = True
            if not nat_done and nat_priority is not None and (
                    priority > nat_priority or (priority == nat_priority and chain.kind != "nat")):
                self._nat(hook, p, conn, record)
                nat_done = True
            if chain.kind == "nat" and not self._nat_chain_runs(hook, p, conn):
                continue
            before = (p.mark, p.src, p.dst, p.dscp)
            self._chain(chain, p, conn, record)
            if chain.kind == "nat" and p.nat_request is not None:
                self._bind(hook, p, conn, record)
            if chain.kind == "route" and hook == "output" and (p.mark, p.src, p.dst, p.dscp) != before:
                self._reroute(p, record, "re-route: a route chain changed the packet")
        if not tracked:
            self._conntrack(p, conn, record)
        if not nat_done and nat_priority is not None:
            self._nat(hook, p, conn, record)

    def _chain(self, chain: Chain, p: Packet, conn: Conntrack, record: Record) -> None:
        step: dict[str, Any] | None = None
        if record is not None:
            step = {"stage": "chain", "hook": p.hook, "chain": chain.label, "type": chain.kind,
                    "priority": chain.priority}
            record.append(step)
        verdict = self.ruleset.run(chain, p, record)
        if step is not None:
            step["verdict"] = verdict.kind
            step["mark"] = hex(p.mark)
            step["ct_mark"] = hex(p.ct.mark) if p.ct is not None else None
        if verdict.kind == "drop":
            reason = verdict.reason or f"dropped by a rule in {chain.label}"
            raise Stop(self._outcome(p, conn, "drop", reason=reason))

    def _conntrack(self, p: Packet, conn: Conntrack, record: Record) -> None:
        if p.untracked:
            if record is not None:
                record.append({"stage": "conntrack", "hook": p.hook, "state": "untracked"})
            return
        p.ct = conn
        p.ct_state = CT_ESTABLISHED if p.ct_reply else CT_NEW
        if record is not None:
            record.append({"stage": "conntrack", "hook": p.hook,
                           "state": "established, reply direction" if p.ct_reply else "new",
                           "ct_mark": hex(conn.mark)})

    # -- NAT --------------------------------------------------------------------------

    def _nat_chain_runs(self, hook: str, p: Packet, conn: Conntrack) -> bool:
        """NAT chains see only a tracked connection's first packet, until one binds its manip type."""
        if p.ct is None or p.untracked or p.ct_reply or p.ct_state != CT_NEW:
            return False
        return not (conn.dnat_done if hook in DST_MANIP_HOOKS else conn.snat_done)

    def _bind(self, hook: str, p: Packet, conn: Conntrack, record: Record) -> None:
        """Turn a NAT statement's request into the connection's binding."""
        assert p.nat_request is not None
        kind, target, port, text = p.nat_request
        p.nat_request = None
        address: int | None
        if kind == "masquerade":
            assert p.oif is not None
            address = self.host.masquerade_source(p.version, p.oif, p.next_hop)
            if address is None and self.host.links is not None:
                raise Stop(self._outcome(p, conn, "drop", reason=f"masquerade: {p.oif} has no IPv{p.version} address"))
        elif kind == "redirect":
            if hook == "output":
                address = 0x7F000001 if p.version == 4 else 1
            else:
                link = self.host.link(p.in_dev or "")
                address = link.first(p.version) if link is not None else None
        else:
            if isinstance(target, Span):
                if target.lo != target.hi:
                    raise Indeterminate(text, "the address picked from a NAT range depends on a kernel hash")
                target = target.lo
            address = target
        current = p.sport if hook not in DST_MANIP_HOOKS else p.dport
        if isinstance(port, Span):
            if current is None or not port.lo <= current <= port.hi:
                raise Indeterminate(text, "the port picked from a NAT port range depends on conntrack")
            port = current
        binding = (address, port)
        if hook in DST_MANIP_HOOKS:
            conn.dnat = binding if kind != "redirect" or address is not None else (None, port)
            conn.dnat_done = True
        else:
            conn.snat = binding
            conn.snat_done = True
        if record is not None:
            record.append({"stage": "nat", "hook": hook, "type": kind, "rule": text,
                           "address": address_text(p.version, address), "port": port})

    def _nat(self, hook: str, p: Packet, conn: Conntrack, record: Record) -> None:
        """The NAT core at its hook: bind a null mapping if no chain did, then rewrite the packet."""
        destination = hook in DST_MANIP_HOOKS
        if p.ct is None or p.untracked:
            return
        if not p.ct_reply:
            if destination:
                conn.dnat_done = True
                if conn.dnat is not None:
                    old = p.dst
                    p.dst, p.dport = conn.dnat[0], conn.dnat[1] if conn.dnat[1] is not None else p.dport
                    if p.local_out and p.dst != old:
                        self._reroute(p, record, "re-route: destination NAT changed the destination")
            else:
                conn.snat_done = True
                if conn.snat is not None:
                    p.src, p.sport = conn.snat[0], conn.snat[1] if conn.snat[1] is not None else p.sport
            return
        if destination and conn.snat is not None:
            p.dst, p.dport = conn.orig_src, conn.orig_sport
            self._note(record, hook, "reverse source NAT", p.version, p.dst)
        elif not destination and conn.dnat is not None:
            p.src, p.sport = conn.orig_dst, conn.orig_dport
            self._note(record, hook, "reverse destination NAT", p.version, p.src)

    def _note(self, record: Record, hook: str, kind: str, version: int, address: int | None) -> None:
        if record is not None:
            record.append({"stage": "nat", "hook": hook, "type": kind, "address": address_text(version, address)})

    # -- routing checks ---------------------------------------------------------------

    def _reroute(self, p: Packet, record: Record, what: str) -> None:
        result = self._route(p, self._output_query(p, mark=p.mark), what, record)
        self._take_route(p, result)
        p.out_dev = p.oif

    def _martians(self, p: Packet, record: Record) -> None:
        """The address checks of ip_route_input_slow that drop a packet before any lookup."""
        if p.version != 4 or p.src is None or p.dst is None:
            return
        src, dst = p.src, p.dst
        if src >> 28 == 0xE or src == 0xFFFFFFFF or src >> 24 == 0:
            self._stop(p, None, record, f"martian source {p.src_text}", "martian")
        if dst >> 24 == 0:
            self._stop(p, None, record, f"martian destination {p.dst_text}", "martian")
        if p.iif != "lo" and (src >> 24 == 127 or dst >> 24 == 127):
            self._stop(p, None, record, "loopback address on a non-loopback interface", "martian")

    def _validate_source(self, p: Packet, conn: Conntrack, record: Record) -> None:
        """fib_validate_source: the reverse-path lookup, strict or loose rp_filter, local sources."""
        if p.version != 4:
            return
        dev = p.in_dev or ""
        host = self.host
        mode = host.rp_filter(dev)
        names = {0: "off", 1: "strict", 2: "loose"}
        verdict: dict[str, Any] = {"stage": "check", "hook": "routing", "check": "source validation",
                                   "rp_filter": names.get(mode, str(mode))}
        if mode == 0 and not self.rpdb.has_custom_rules:
            if not host.either(dev, "accept_local") and self.rpdb.address_type(4, _known(p.src)) == "local":
                self._fail_validation(p, conn, record, verdict, "martian source: it is one of this host's addresses")
            self._pass_validation(p, record, verdict, "rp_filter off")
            return
        mark = p.mark if host.either(dev, "src_valid_mark") else 0
        query = Query(4, _known(p.dst), _known(p.src), "lo", None, mark, p.proto or 0, p.dport or 0, p.sport or 0,
                      p.tos())
        back = self.rpdb.lookup(query, lambda weights, label: 0)
        verdict["mark"] = hex(mark)
        verdict["route_back"] = back.route.text if back.route is not None else back.kind
        if back.error:
            if mode:
                self._fail_validation(p, conn, record, verdict, f"rp_filter: no route back to {p.src_text}")
            self._pass_validation(p, record, verdict, "no route back, rp_filter off")
            return
        if back.kind != "unicast":
            if back.kind == "local" and host.either(dev, "accept_local"):
                self._pass_validation(p, record, verdict, "local source accepted (accept_local)")
                return
            self._fail_validation(p, conn, record, verdict, f"martian source: the route back is {back.kind}")
        assert back.route is not None
        if any(hop.dev == dev for hop in back.route.hops):
            self._pass_validation(p, record, verdict, f"the route back leaves by {dev}")
            return
        has_address = host.has_address(4, dev)
        if has_address is None and mode:
            raise Indeterminate("rp_filter", f"whether {dev} has an IPv4 address is not known offline: pass --addr")
        if not has_address:
            if mode:
                self._fail_validation(p, conn, record, verdict, f"rp_filter: {dev} has no IPv4 address")
            self._pass_validation(p, record, verdict, "rp_filter off")
            return
        if mode == 1:
            self._fail_validation(p, conn, record, verdict,
                                  f"strict rp_filter: the route back to {p.src_text} leaves by "
                                  f"{back.route.hops[0].dev}, not {dev}")
        self._pass_validation(p, record, verdict, "a route back exists (loose rp_filter)" if mode else "rp_filter off")

    def _pass_validation(self, p: Packet, record: Record, step: dict[str, Any], why: str) -> None:
        p.source_check = f"pass: {why}"
        if record is not None:
            record.append(dict(step, result="pass", detail=why))

    def _fail_validation(self, p: Packet, conn: Conntrack, record: Record, step: dict[str, Any], why: str) -> None:
        p.source_check = why
        if record is not None:
            record.append(dict(step, result="drop", detail=why))
        raise Stop(self._outcome(p, conn, "drop", reason=why))

    def _stop(self, p: Packet, conn: Conntrack | None, record: Record, why: str, check: str) -> None:
        if record is not None:
            record.append({"stage": "check", "hook": "routing", "check": check, "result": "drop", "detail": why})
        raise Stop(self._outcome(p, conn, "drop", reason=why))

    # -- outcomes ---------------------------------------------------------------------

    def _outcome(self, p: Packet, conn: Conntrack | None, verdict: str, reason: str | None = None,
                 table: str | None = None) -> Outcome:
        connection = conn or p.ct
        forwarded = verdict == "forward"
        nat: dict[str, Any] | None = None
        snat = dnat = None
        if connection is not None and not p.ct_reply:
            if connection.snat is not None:
                snat = address_text(p.version, connection.snat[0]) if connection.snat[0] is not None else None
                nat = {"source": snat, "port": connection.snat[1]}
            if connection.dnat is not None:
                dnat = address_text(p.version, connection.dnat[0])
                nat = dict(nat or {}, destination=dnat, destination_port=connection.dnat[1])
            if nat is not None and snat is None and connection.snat is not None:
                nat["note"] = "masquerade to an address of the outgoing interface, not known offline"
        return Outcome(
            verdict=verdict,
            oif=p.oif if forwarded else None,
            next_hop=address_text(p.version, p.next_hop) if forwarded and p.next_hop is not None else None,
            table=table or p.table,
            mark=p.mark,
            ct_mark=connection.mark if connection is not None else None,
            snat=snat,
            dnat=dnat,
            nat=nat,
            policy=p.policy,
            reason=reason,
            source_check=p.source_check,
        )


def _known(address: int | None) -> int:
    if address is None:
        raise Indeterminate("routing", "the packet's address after NAT is not known offline: pass --addr")
    return address

