"""`markroute status` as data: uplinks, policy counters, connections per uplink, drift.

Works from the state file alone (what was applied), or from a plan when the config is
given, in which case a config that differs from the applied one is reported as drift.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from markroute.daemon import record
from markroute.kernel import digest, nft, state
from markroute.kernel.conntrack import count_by_mark
from markroute.kernel.drift import differences
from markroute.kernel.gateways import survey
from markroute.kernel.links import link_state, links
from markroute.kernel.rpdb import Rpdb
from markroute.plan import FAMILY_NAMES, Plan, UplinkPlan


def collect(netns: str | None, plan: Plan | None) -> dict[str, Any]:
    """The report `status --json` prints, for the current namespace (NETNS names its state).

    Keys: ``namespace``, ``applied`` (bool), ``applied_at``; ``uplinks``: a list of
    ``{name, interface, exists, up, addresses, gateway, gateway6, waiting, next_hops,
    default_routes, table, mark, connections, health}`` (gateway: an address, ``auto`` or
    null; waiting: why the uplink cannot carry traffic now, a fixed word of
    `kernel.gateways.REASONS` such as ``no-gateway``, or null; next_hops: the next hop
    per family, ``inet``/``inet6``, that its default route uses now, learned for
    ``auto``, null for on-link; health: what `markroute run` last saw, ``{state,
    since, rtt, loss, transitions, suppressed, probed}``, or null); ``policies``:
    ``[{name, packets, bytes}]`` summed over every rule commented ``policy NAME``;
    ``connections``: ``{total, other}`` (other: no uplink mark); ``drift``: one sentence
    per difference, empty when none; ``daemon``: ``{pid, running, started,
    rule_changes}`` of `markroute run`, or null.
    """
    recorded = state.load(netns)
    with Rpdb() as rpdb:
        interfaces = links(rpdb)
        live_rules = rpdb.own_rules()
        live_routes = rpdb.own_routes()
        routes_json = rpdb.routes_json()
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
        drift = differences(recorded, live_table, live_rules, live_routes)
        if plan is not None and digest.plan_digest(plan) != recorded.plan_digest:
            drift.insert(0, "the config differs from the applied one (run markroute apply)")

    counters = policy_counters(policies, nft.rule_counters(live_table or []))
    daemon = record.load(netns)

    def uplink(u: UplinkPlan) -> dict[str, Any]:
        link = interfaces.get(u.interface)
        table = str(u.table)
        installed = [r for r in routes_json if r.get("table") == table and r.get("dst") == "default"]
        return {
            "name": u.name,
            "interface": u.interface,
            "exists": link is not None,
            "up": bool(link and link.usable),
            "addresses": link.to_json()["addresses"] if link else [],
            "gateway": u.gateway,
            "gateway6": u.gateway6,
            "waiting": readiness[u.name].reason,
            "next_hops": {FAMILY_NAMES[v]: hop for v, hop in readiness[u.name].ready},
            "default_routes": [r.get("gateway") or f"dev {r.get('dev')}" for r in installed],
            "table": u.table,
            "mark": hex(u.mark),
            "connections": connections[u.mark] if connections is not None else 0,
            "health": health_json(daemon, u.name),
        }

    return {
        "namespace": netns,
        "applied": recorded is not None,
        "applied_at": recorded.applied_at if recorded else None,
        "uplinks": [uplink(u) for u in uplinks],
        "policies": [{"name": n, "packets": p, "bytes": b} for n, (p, b) in counters.items()],
        "connections": {
            "total": sum(connections.values()) if connections is not None else 0,
            "other": connections[0] if connections is not None else 0,
        },
        "drift": drift,
        "daemon": daemon_json(daemon),
    }


def policy_counters(policies: list[str], rules: list[tuple[str, int, int]]) -> dict[str, list[int]]:
    """[packets, bytes] per policy, summed over its rules (`nft.rule_counters`, comment `policy NAME`)."""
    counters: dict[str, list[int]] = {name: [0, 0] for name in policies}
    for comment, packets, octets in rules:
        name = comment.removeprefix("policy ")
        if comment.startswith("policy ") and name in counters:
            counters[name][0] += packets
            counters[name][1] += octets
    return counters


# -- what `markroute run` reports (markroute.daemon.record) ----------------------------


def daemon_json(daemon: record.DaemonRecord | None) -> dict[str, Any] | None:
    if daemon is None:
        return None
    return {
        "pid": daemon.pid, "running": daemon.running, "started": daemon.started, "rule_changes": daemon.rule_changes,
    }


def health_json(daemon: record.DaemonRecord | None, uplink: str) -> dict[str, Any] | None:
    seen = daemon.uplinks.get(uplink) if daemon else None
    return asdict(seen) if seen else None
