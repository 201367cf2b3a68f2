"""`markroute status`: uplinks, policy counters, connections per uplink, and drift."""

from __future__ import annotations

import sys
import time
from typing import TYPE_CHECKING

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
from markroute.plan import Plan
from markroute.sim.neighbours import Finding

if TYPE_CHECKING:
    from markroute.kernel.state import UplinkRecord
    from markroute.kernel.status import StatusReport


@click.command("status")
@click.option("-c", "--config", "config", metavar="FILE", default=None,
              help="Also compare with this config (default: only with what was applied).")
@netns_option
@json_option
def command(config: str | None, netns: str | None, as_json: bool) -> None:
    """Show each uplink, each policy's counters, connections per uplink and drift.

    Drift means the kernel no longer matches what apply installed: a rule, route or the
    nftables table was removed or changed, a sysctl was changed back, or (with -c) the
    config differs from the applied one.

    Neighbours: markroute's representative connections are simulated through every
    other firewall, ip rule and route on the system; each path another program's rule
    drops, rejects or re-routes is listed with the rule and a fix.

    Exit codes: 0 no drift; 1 invalid config; 3 drift found; 4 not root, nft missing or
    no such namespace; 5 no drift, but another program's rule breaks markroute's traffic.
    """
    from markroute.compile import compile_plan
    from markroute.kernel.environment import prepare
    from markroute.kernel.status import collect

    plan = compile_plan(load_model_or_exit(config, quiet_warnings=True)) if config else None
    with exit_codes():
        netns = prepare(netns)
        report = collect(netns, plan, lambda message: click.echo(f"markroute: warning: {message}", err=True))
        found = neighbour_problems(plan, netns)
    if as_json:
        print_json(dict(report.to_json(), neighbours=neighbours.to_json(found)))
    else:
        click.echo(render(report) + neighbours_text(found), nl=False)
    if report.drift:
        sys.exit(EXIT_DRIFT)
    if neighbours.breaks_paths(found):
        sys.exit(exitcodes.NEIGHBOURS)


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
    if report.uplinks:
        lines += ["", "uplinks:"]
        for u in report.uplinks:
            state = "up" if u.up else ("down" if u.exists else "missing")
            if u.waiting:
                state = f"waiting ({describe(u.waiting)})"
            gateways = ", ".join(u.default_routes) or "no default route installed"
            lines.append(
                f"  {u.name:<12} {u.interface:<10} {state:<8} table {u.table:<6} mark {hex(u.mark):<8} "
                f"connections {u.connections or 0}"
            )
            lines.append(f"  {'':<12} addresses {', '.join(u.addresses) or 'none'}; via {gateways}")
            if u.health:
                lines.append(f"  {'':<12} {health_text(u.health)}")
    if report.policies:
        lines += ["", "policies:"]
        lines += [f"  {p.name:<24} {p.packets:>10} packets {p.bytes:>12} bytes" for p in report.policies]
    lines += ["", f"connections: {report.connections_total or 0} tracked, "
                  f"{report.connections_other or 0} without an uplink mark"]
    if report.drift:
        lines += ["", "drift:"] + [f"  {d}" for d in report.drift]
    else:
        lines += ["", "drift: none"]
    return "\n".join(lines) + "\n"


# -- what `markroute run` reports ------------------------------------------------------


def daemon_lines(report: StatusReport) -> list[str]:
    daemon = report.daemon
    if not daemon:
        return []
    started = time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(daemon.started))
    if not daemon.running:
        return [f"markroute run (pid {daemon.pid}) is not running; uplink states are as it last saw them"]
    return [f"markroute run: pid {daemon.pid} since {started}, {daemon.rule_changes} rule changes for uplink states"]


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
