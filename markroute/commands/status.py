"""`markroute status`: uplinks, policy counters, connections per uplink, and drift."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import click

from markroute import exitcodes
from markroute.commands import neighbours
from markroute.commands.cliutil import (
    EXIT_DRIFT,
    exit_codes,
    json_option,
    load_model_or_exit,
    netns_option,
    print_json,
)
from markroute.kernel.gateways import describe
from markroute.kernel.status import UplinkStatus
from markroute.plan import Plan
from markroute.sim.foreign import Finding

if TYPE_CHECKING:
    from markroute.kernel.state import UplinkRecord
    from markroute.kernel.status import StatusReport


@click.command("status")
@click.option("-c", "--config", "config", metavar="FILE", default=None,
              help="Also compare with this config (default: only with what was applied).")
@click.option("--watch", is_flag=True, help="Refresh every second until Ctrl-C: sparklines, rates, changes.")
@click.option("--interval", metavar="S", type=click.FloatRange(min=0.1), default=1.0, show_default=True,
              help="Seconds between refreshes with --watch.")
@netns_option
@json_option
def command(config: str | None, watch: bool, interval: float, netns: str | None, as_json: bool) -> None:
    """Show each uplink, each policy's counters, connections per uplink and drift.

    Drift means the kernel no longer matches what apply installed: a rule, route or the
    nftables table was removed or changed, a sysctl was changed back, or (with -c) the
    config differs from the applied one.

    Neighbours: markroute's representative connections are simulated through every
    other firewall, ip rule and route on the system; each path another program's rule
    drops, rejects or re-routes is listed with the rule and a fix.

    Groups: each group's members, which member carries a failover group's traffic now,
    and the weights a balance group draws with now (degraded members weigh less, members
    that are down 0), read from the live table.

    Problems: one line each, with its kind and exit code: drift (3), neighbour (5),
    uplink and group (0: reported, the exit code is not changed for them).
    --json is versioned (`version`) and described by docs/status.schema.json.

    Exit codes: 0 no drift; 1 invalid config; 3 drift found; 4 not root, nft missing or
    no such namespace; 5 no drift, but another program's rule breaks markroute's traffic.
    """
    from markroute.compile import compile_plan
    from markroute.kernel.environment import prepare
    from markroute.kernel.status import collect

    plan = compile_plan(load_model_or_exit(config, quiet_warnings=True)) if config else None
    if watch:
        watch_status(plan, netns, interval)
        return
    with exit_codes():
        netns = prepare(netns)
        report = collect(netns, plan, lambda message: click.echo(f"markroute: warning: {message}", err=True))
        found = neighbour_problems(plan, netns)
    listed = problems(report, found)
    if as_json:
        print_json(dict(report.to_json(), neighbours=neighbours.to_json(found), problems=[p.to_json() for p in listed]))
    else:
        click.echo(render(report) + neighbours_text(found) + "\n" + problems_text(listed), nl=False)
    if report.drift:
        sys.exit(EXIT_DRIFT)
    if neighbours.breaks_paths(found):
        sys.exit(exitcodes.NEIGHBOURS)


def watch_status(plan: Plan | None, netns: str | None, interval: float = 1.0) -> None:
    """`--watch`: the report every INTERVAL seconds (`commands.watch`), a live screen on a terminal."""
    from markroute.commands.watch import watch
    from markroute.kernel.environment import prepare
    from markroute.kernel.links import interface_counters
    from markroute.kernel.rpdb import Rpdb
    from markroute.kernel.status import collect

    def sample() -> tuple[StatusReport, dict[str, dict[str, int]]]:
        report = collect(name, plan)
        with Rpdb() as rpdb:
            return report, interface_counters(rpdb)

    with exit_codes():
        name = prepare(netns)
        watch(sample, interval, sys.stdout.isatty())


def neighbour_problems(plan: Plan | None, netns: str | None) -> list[Finding]:
    """Paths of markroute's traffic other software breaks; none when markroute is not applied."""
    from markroute.kernel import state

    recorded = state.load(netns)
    if recorded is None:
        return []
    return neighbours.findings(neighbours.ours_of_plan(plan) if plan else neighbours.ours_of_state(recorded))


def neighbours_text(found: list[Finding]) -> str:
    if not found:
        return "neighbours: no other software's rule breaks markroute's traffic\n"
    return "\n".join(["neighbours:"] + [f"  {line}" for line in neighbours.lines(found)]) + "\n"


def render(report: StatusReport) -> str:
    where = f"namespace {report.namespace}" if report.namespace else "this host"
    if not report.applied:
        lines = [f"markroute is not applied in {where}"]
    else:
        lines = [f"markroute applied in {where} at {report.applied_at}"]
    lines += daemon_lines(report)
    lines += ha_lines(report)
    if report.uplinks:
        lines += ["", "uplinks:"]
        for u in report.uplinks:
            link = "link up" if u.up else ("link down" if u.exists else "link missing")
            if u.waiting:
                link = f"waiting ({describe(u.waiting)})"
            health = f"health {u.health.state}" if u.health else "health not probed (markroute run is not running)"
            lines.append(
                f"  {u.name:<12} {u.interface:<10} {link:<12} {health:<14} mark {hex(u.mark):<8} table {u.table:<6} "
                f"connections {u.connections or 0}"
            )
            gateways = gateway_text(u)
            routes = ", ".join(dict.fromkeys(u.default_routes)) or "none installed"
            lines.append(f"  {'':<12} gateway {gateways}; default route {routes}; "
                         f"addresses {', '.join(u.addresses) or 'none'}")
            if u.health:
                lines.append(f"  {'':<12} {health_text(u.health)}")
    lines += group_lines(report)
    if report.policies:
        lines += ["", "policies:"]
        lines += [f"  {p.name:<24} -> {p.target or '?':<12} {p.packets:>10} packets {p.bytes:>12} bytes"
                  for p in report.policies]
    if report.dynamic_sets:
        lines += ["", "dynamic sets (filled by others):"]
        lines += [f"  {name:<24} {count:>10} elements" for name, count in report.dynamic_sets.items()]
    if report.cgroups:
        lines += ["", "cgroups (of cgroup: matches):"]
        lines += [f"  {c.path:<40} {'exists' if c.exists else 'missing'}" for c in report.cgroups]
    lines += ["", f"connections: {report.connections_total or 0} tracked, "
                  f"{report.connections_other or 0} without an uplink mark"]
    if report.drift:
        lines += ["", "drift:"] + [f"  {d}" for d in report.drift]
    else:
        lines += ["", "drift: none"]
    return "\n".join(lines) + "\n"


def group_lines(report: StatusReport) -> list[str]:
    """Each group: who carries its traffic now, with which effective weights, and its last change."""
    if not report.groups:
        return []
    lines = ["", "groups:"]
    for g in report.groups:
        if g.last_resort:
            now = "every member out: last resort"
        elif g.kind == "failover":
            now = f"active {g.active}"
        else:
            now = "weights now " + ", ".join(f"{m.name} {m.effective}" for m in g.members)
        changed = ""
        if g.changed is not None:
            changed = f"; last change {time.strftime('%H:%M:%S', time.localtime(g.changed))}: {g.why}"
        lines.append(f"  {g.name:<12} {g.kind:<9} {now}{changed}")
        members = ", ".join(f"{m.name} (weight {m.weight}, {m.state or 'not probed'})" for m in g.members)
        lines.append(f"  {'':<12} members {members}")
    return lines


@dataclass(frozen=True)
class Problem:
    """Something an operator should act on, with the exit code `status` gives it (0: reported only)."""

    kind: str
    message: str
    exit_code: int

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "message": self.message, "exit_code": self.exit_code}


def problems(report: StatusReport, found: list[Finding]) -> list[Problem]:
    """Drift (exit 3), other software's rules breaking markroute's paths (exit 5), uplinks out (reported).

    `status` exits with the first listed problem's non-zero code: drift before neighbours.
    """
    listed = [Problem("drift", d, EXIT_DRIFT) for d in report.drift]
    if neighbours.breaks_paths(found):
        listed += [Problem("neighbour", line, exitcodes.NEIGHBOURS) for line in neighbours.lines(found)]
    for u in report.uplinks:
        if not u.exists:
            listed.append(Problem("uplink", f"{u.name}: interface {u.interface} is missing", 0))
        elif not u.up:
            listed.append(Problem("uplink", f"{u.name}: link {u.interface} is down", 0))
        elif u.health and u.health.state != "up":
            listed.append(Problem("uplink", f"{u.name}: health {u.health.state}", 0))
    for g in report.groups:
        if g.last_resort:
            listed.append(Problem("group", f"{g.name}: no usable member, traffic takes the last resort", 0))
    listed += [Problem("cgroup", f"cgroup {c.path} does not exist: its policies match nothing until it does", 0)
               for c in report.cgroups if not c.exists]
    return listed


def problems_text(listed: list[Problem]) -> str:
    if not listed:
        return "problems: none\n"
    return "\n".join(["problems:"] + [f"  {p.kind} (exit {p.exit_code}): {p.message}" for p in listed]) + "\n"


# -- what `markroute run` reports ------------------------------------------------------


def gateway_text(u: UplinkStatus) -> str:
    """Fixed gateways as written; `auto` ones as learned from the kernel now (or not yet)."""
    learned = dict(u.next_hops)
    shown = [gateway if gateway != "auto" else
             f"{learned.get(version) or 'not known yet'} (learned)"
             for version, gateway in ((4, u.gateway), (6, u.gateway6)) if gateway]
    return ", ".join(shown) or "none (point-to-point)"


def daemon_lines(report: StatusReport) -> list[str]:
    daemon = report.daemon
    if not daemon:
        return []
    started = time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(daemon.started))
    if not daemon.running:
        return [f"markroute run (pid {daemon.pid}) is not running; uplink states are as it last saw them"]
    return [f"markroute run: pid {daemon.pid} since {started}, {daemon.rule_changes} rule changes for uplink states"]


def ha_lines(report: StatusReport) -> list[str]:
    """The HA role `markroute ha` recorded, the hold and conntrackd's sync counters."""
    ha = report.ha
    if not ha:
        return []
    since = time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(ha.since))
    hold = {True: "new connections held", False: "not held", None: "no hold in the table"}[ha.held]
    lines = [f"HA role: {ha.role} since {since}; {hold}"]
    failed = [f"conntrackd {step} exit {code}" for step, code, _ in ha.steps if code != 0]
    if ha.hold_error:
        failed.append(f"the hold: {ha.hold_error}")
    if failed:
        lines.append(f"  last hand-over failed: {', '.join(failed)}")
    if ha.sync is not None and not ha.sync.ok:
        lines.append(f"  conntrack sync: conntrackd does not answer: {ha.sync.error}")
    elif ha.sync is not None:
        shown = ", ".join(f"{name} {value}" for name, value in ha.sync.counters.items()
                          if any(word in name for word in ("active", "Pckts", "Error", "Lost")))
        lines.append(f"  conntrack sync: {shown or 'no counters'}")
    return lines


def health_text(health: UplinkRecord) -> str:
    since = time.strftime("%H:%M:%S", time.localtime(health.since))
    parts = [f"health {health.state} since {since} ({health.transitions} changes)"]
    if health.suppressed:
        parts.append("held down: flapping")
    if not health.probed:
        parts.append("link state only")
    if health.probe_bytes_per_day is not None:
        parts.append(f"probes ~{health.probe_bytes_per_day / 1e6:.1f} MB/day")
    if health.rtt is not None:
        parts.append(f"rtt {health.rtt * 1000:.1f} ms")
    if health.loss is not None:
        parts.append(f"loss {health.loss:.0%}")
    return "; ".join(parts)
