"""`markroute status` as one typed value (`StatusReport`), built here and rendered by three.

`collect` gathers its sources (the state records, links, routes, the table's counters,
conntrack, drift) once; `commands/status.py` renders it as text, `StatusReport.to_json`
is `status --json`, and `daemon/metrics.py` builds the same report from the daemon's
own record and renders it as Prometheus metrics. None of them interprets the sources
again.

Works from the state file alone (what was applied), or from a plan when the config is
given, in which case a config that differs from the applied one is reported as drift.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from markroute.kernel import cgroupsets, digest, dynsets, foreign, nft, state
from markroute.kernel.cgroupsets import CgroupPresence
from markroute.kernel.conntrack import count_by_mark
from markroute.kernel.drift import differences
from markroute.kernel.gateways import Readiness, survey
from markroute.kernel.groups import group_chains, policy_targets
from markroute.kernel.hastatus import HaStatus, ha_status
from markroute.kernel.links import Link, link_state, links
from markroute.kernel.rpdb import Rpdb
from markroute.kernel.state import DaemonRecord, UplinkRecord
from markroute.plan import FAMILY_NAMES, GroupPlan, Plan, UplinkPlan

SCHEMA_VERSION = 1  # of `status --json` (docs/status.schema.json): raised when a key changes meaning or goes


@dataclass(frozen=True)
class UplinkStatus:
    """One uplink: its plan, its interface now, its connections, and what `markroute run` last saw.

    `connections` is None when they were not counted (the metrics could not read
    conntrack); `traffic` holds the interface's packet and byte counters
    (`links.COUNTER_KEYS`), None when unknown. `waiting`: why the uplink cannot carry
    traffic now (a `kernel.gateways.REASONS` key), None when it can or was not read;
    `next_hops`: (IP version, next hop) its default routes use now, learned for
    `gateway: auto`, None for on-link.
    """

    name: str
    interface: str
    table: int
    mark: int
    gateway: str | None
    gateway6: str | None
    exists: bool = False
    up: bool = False
    addresses: tuple[str, ...] = ()
    default_routes: tuple[str, ...] = ()
    connections: int | None = None
    traffic: Mapping[str, int] | None = None
    health: UplinkRecord | None = None
    waiting: str | None = None
    next_hops: tuple[tuple[int, str | None], ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "interface": self.interface,
            "exists": self.exists,
            "up": self.up,
            "addresses": list(self.addresses),
            "gateway": self.gateway,
            "gateway6": self.gateway6,
            "waiting": self.waiting,
            "next_hops": {FAMILY_NAMES[version]: hop for version, hop in self.next_hops},
            "default_routes": list(self.default_routes),
            "table": self.table,
            "mark": hex(self.mark),
            "connections": self.connections or 0,
            "health": asdict(self.health) if self.health else None,
        }


@dataclass(frozen=True)
class PolicyStatus:
    """Packets and bytes counted by a policy's rules (comment `policy NAME`)."""

    name: str
    packets: int
    bytes: int
    target: str | None = None  # where its rule goes now: an uplink, a group or `main` (None: not in the table)


@dataclass(frozen=True)
class MemberStatus:
    """A group member: its configured weight, the weight the table gives it now (0: left out), its health."""

    name: str
    weight: int
    effective: int
    state: str | None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class GroupStatus:
    """A group as configured and as the table carries it now (`kernel.groups`).

    `active`: the member a failover group sends traffic to now (None for balance
    groups, or when every member is out and traffic takes the last resort);
    `changed`/`why`: the latest health change among its members, as `markroute run` saw it.
    """

    name: str
    kind: str
    members: tuple[MemberStatus, ...]
    active: str | None
    last_resort: bool
    changed: float | None = None
    why: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind,
            "members": [m.to_json() for m in self.members],
            "active": self.active,
            "last_resort": self.last_resort,
            "changed": self.changed,
            "why": self.why,
        }


@dataclass(frozen=True)
class DaemonStatus:
    """`markroute run` as its record says, and whether its process still runs."""

    pid: int
    running: bool
    started: float
    rule_changes: int


@dataclass(frozen=True)
class StatusReport:
    """Everything `markroute status` shows; `to_json` is its `--json` form.

    `connections_total` and `connections_other` (no uplink mark) are None when not
    counted; `drift` has one sentence per difference, empty when none; `dynamic_sets`:
    the elements each dynamic set holds now, by kernel set name (others fill them, so
    they are never drift).
    """

    namespace: str | None
    applied: bool
    applied_at: str | None
    uplinks: tuple[UplinkStatus, ...] = ()
    policies: tuple[PolicyStatus, ...] = ()
    connections_total: int | None = None
    connections_other: int | None = None
    drift: tuple[str, ...] = ()
    daemon: DaemonStatus | None = None
    groups: tuple[GroupStatus, ...] = ()
    ha: HaStatus | None = None
    dynamic_sets: Mapping[str, int] = field(default_factory=dict)
    cgroups: tuple[CgroupPresence, ...] = ()

    def to_json(self) -> dict[str, Any]:
        """The report `status --json` prints.

        Keys: ``namespace``, ``applied`` (bool), ``applied_at``; ``uplinks``: a list of
        ``{name, interface, exists, up, addresses, gateway, gateway6, waiting, next_hops,
        default_routes, table, mark, connections, health}`` (gateway: an address, ``auto`` or
        null; waiting: why the uplink cannot carry traffic now, a fixed word of
        `kernel.gateways.REASONS` such as ``no-gateway``, or null; next_hops: the next hop
        per family, ``inet``/``inet6``, that its default route uses now, learned for
        ``auto``, null for on-link; health: what `markroute run` last saw, ``{state,
        since, rtt, loss, transitions, suppressed, probed, probe_bytes_per_day}``, or null); ``policies``:
        ``[{name, packets, bytes}]`` summed over every rule commented ``policy NAME``;
        ``connections``: ``{total, other}`` (other: no uplink mark); ``drift``: one sentence
        per difference, empty when none; ``daemon``: ``{pid, running, started,
        rule_changes}`` of `markroute run`, or null; ``ha``: ``{role, since, held, steps,
        sync}`` once `markroute ha` ran (`kernel.hastatus`), or null; ``groups``: ``[{name, kind,
        members: [{name, weight, effective, state}], active, last_resort, changed, why}]``;
        ``dynamic_sets``: ``{KERNEL_SET_NAME: elements}`` of the sets others fill (their elements
        are never drift); ``cgroups``: ``[{path, exists}]``, each configured cgroup and
        whether it exists now (a missing one is a problem, not drift); ``version``: the schema's version. docs/status.schema.json is the
        schema (`status --json` adds ``neighbours`` and ``problems``).
        """
        return {
            "version": SCHEMA_VERSION,
            "namespace": self.namespace,
            "applied": self.applied,
            "applied_at": self.applied_at,
            "uplinks": [u.to_json() for u in self.uplinks],
            "policies": [asdict(p) for p in self.policies],
            "connections": {"total": self.connections_total or 0, "other": self.connections_other or 0},
            "drift": list(self.drift),
            "daemon": asdict(self.daemon) if self.daemon else None,
            "groups": [g.to_json() for g in self.groups],
            "ha": self.ha.to_json() if self.ha else None,
            "dynamic_sets": dict(self.dynamic_sets),
            "cgroups": [asdict(c) for c in self.cgroups],
        }


def collect(netns: str | None, plan: Plan | None, warn: state.Warn | None = None) -> StatusReport:
    """The report for the current namespace (NETNS names its state); PLAN: the config's, if given.

    WARN hears about damaged daemon records, which are ignored.
    """
    recorded = state.load(netns, warn)
    with Rpdb() as rpdb:
        interfaces = links(rpdb)
        live_rules = rpdb.own_rules()
        live_routes = rpdb.own_routes()
        routes_json = rpdb.routes_json()
        others_in_the_way = foreign.in_recorded_space(recorded, rpdb) if recorded else []
        uplinks: list[UplinkPlan] = list(plan.uplinks) if plan else recorded.uplinks if recorded else []
        readiness = survey(rpdb, uplinks, link_state(rpdb, interfaces)).uplinks
    table_name = plan.table_name if plan else recorded.table_name if recorded else None
    live_table = nft.list_table(table_name) if table_name else None
    policies: list[str] = list(plan.policies) if plan else recorded.policies if recorded else []
    mask = plan.mask if plan else recorded.mask if recorded else 0
    connections = count_by_mark(mask) if mask else None

    drift: list[str] = []
    if recorded is None:
        if plan is not None:
            drift.append("markroute is not applied in this namespace")
    else:
        drift = differences(recorded, live_table, live_rules, live_routes) + others_in_the_way
        if plan is not None and digest.plan_digest(plan) != recorded.plan_digest:
            drift.insert(0, "the config differs from the applied one (run markroute apply)")

    cut_short = state.abandoned_journal(netns)
    if cut_short is not None:
        drift.insert(0, f"an apply (pid {cut_short}) was cut short before its commit: "
                        "the next markroute apply or down undoes what it changed")
    daemon = state.load_daemon_record(netns, warn)

    return StatusReport(
        namespace=netns,
        applied=recorded is not None,
        applied_at=recorded.applied_at if recorded else None,
        uplinks=uplink_statuses(uplinks, daemon, connections=connections, interfaces=interfaces, routes=routes_json,
                                readiness=readiness),
        policies=policy_statuses(policies, nft.rule_counters(live_table or []), policy_targets(live_table or [])),
        connections_total=sum(connections.values()) if connections is not None else None,
        connections_other=connections[0] if connections is not None else None,
        drift=tuple(drift),
        daemon=DaemonStatus(daemon.pid, daemon.running, daemon.started, daemon.rule_changes) if daemon else None,
        groups=group_statuses(list(plan.groups) if plan else recorded.groups if recorded else [], live_table or [],
                              daemon),
        ha=ha_status(netns, table_name),
        dynamic_sets=dynsets.element_counts(table_name) if table_name and live_table else {},
        cgroups=tuple(cgroupsets.presence(cgroupsets.paths(plan.nft) if plan else recorded.cgroups if recorded else [])),
    )


def uplink_statuses(
    uplinks: list[UplinkPlan],
    daemon: DaemonRecord | None,
    *,
    connections: Counter[int] | None = None,
    traffic: Mapping[str, Mapping[str, int]] | None = None,
    interfaces: Mapping[str, Link] | None = None,
    routes: list[dict[str, Any]] | None = None,
    readiness: Mapping[str, Readiness] | None = None,
) -> tuple[UplinkStatus, ...]:
    """Each uplink of the plan with what is known of it; None: not read.

    CONNECTIONS: by mark; TRAFFIC: interface counters by interface (metrics);
    INTERFACES and ROUTES (`Rpdb.routes_json`): links and default routes (status);
    READINESS (`kernel.gateways.Survey.uplinks`): which uplinks wait, and their next hops.
    """
    interfaces = interfaces or {}
    found = []
    for u in uplinks:
        link = interfaces.get(u.interface)
        table = str(u.table)
        now = readiness.get(u.name) if readiness is not None else None
        installed = [r for r in routes or [] if r.get("table") == table and r.get("dst") == "default"]
        found.append(UplinkStatus(
            name=u.name,
            interface=u.interface,
            table=u.table,
            mark=u.mark,
            gateway=u.gateway,
            gateway6=u.gateway6,
            exists=link is not None,
            up=bool(link and link.usable),
            addresses=tuple(link.to_json()["addresses"]) if link else (),
            default_routes=tuple(r.get("gateway") or f"dev {r.get('dev')}" for r in installed),
            connections=connections[u.mark] if connections is not None else None,
            traffic=traffic.get(u.interface) if traffic is not None else None,
            health=daemon.uplinks.get(u.name) if daemon else None,
            waiting=now.reason if now else None,
            next_hops=now.ready if now else (),
        ))
    return tuple(found)


def policy_statuses(
    policies: list[str], rules: list[tuple[str, int, int]], targets: Mapping[str, str] | None = None
) -> tuple[PolicyStatus, ...]:
    """Each policy's packets and bytes, summed over its rules (`nft.rule_counters`), and its target now."""
    targets = targets or {}
    return tuple(PolicyStatus(name, packets, octets, targets.get(name))
                 for name, (packets, octets) in policy_counters(policies, rules).items())


def group_statuses(groups: list[GroupPlan], listing: list[dict[str, Any]],
                   daemon: DaemonRecord | None) -> tuple[GroupStatus, ...]:
    """Each configured group with the members its live chain reaches and their health."""
    reached = group_chains(listing)
    health = daemon.uplinks if daemon else {}
    found = []
    for group in groups:
        now = reached.get(group.name)
        weights = now.weights if now else {}
        members = tuple(
            MemberStatus(m.name, m.weight, weights.get(m.name, 0), health[m.name].state if m.name in health else None)
            for m in group.members
        )
        changes = sorted((health[m.name].since, m.name) for m in group.members if m.name in health)
        changed, why = None, None
        if changes:
            changed, member = changes[-1]
            why = f"{member} {health[member].state}"
        active = next(iter(weights)) if group.kind == "failover" and weights else None
        found.append(GroupStatus(group.name, group.kind, members, active, now is not None and now.last_resort_only,
                                 changed, why))
    return tuple(found)


def policy_counters(policies: list[str], rules: list[tuple[str, int, int]]) -> dict[str, list[int]]:
    """[packets, bytes] per policy, summed over its rules (`nft.rule_counters`, comment `policy NAME`)."""
    counters: dict[str, list[int]] = {name: [0, 0] for name in policies}
    for comment, packets, octets in rules:
        name = comment.removeprefix("policy ")
        if comment.startswith("policy ") and name in counters:
            counters[name][0] += packets
            counters[name][1] += octets
    return counters
