"""`markroute apply`: install the plan, converge to it, or change nothing at all."""

from __future__ import annotations

import click

from markroute.commands.cliutil import (
    config_option,
    exit_codes,
    load_model_or_exit,
    netns_option,
    without_cycle_collector,
)
from markroute.plan import Plan


@click.command("apply")
@config_option
@netns_option
@click.option("--force", is_flag=True,
              help="Take over others' routes and ip rules where markroute's go (they are deleted) and a table "
                   "inet markroute markroute has no record of (it is replaced).")
@without_cycle_collector
def command(config: str | None, netns: str | None, force: bool) -> None:
    """Install the config: nftables table, ip rules, routes and sysctls.

    Only what differs from the running system is changed, so applying the same config
    again changes nothing. The nftables table is swapped in one transaction and ip
    rules/routes are changed in an order that always leaves traffic a path. On any
    failure every completed step is undone. What was installed (and the sysctl values
    replaced) is recorded under /run/markroute for `down` and `status`.

    One command changes a namespace at a time: a second waits up to 10 s, then names
    the one holding the lock. SIGINT, SIGTERM or SIGHUP roll the apply back (or, past
    its commit, let it finish); an apply killed outright is undone by the next apply
    or down. An uplink that waits (interface missing or down, no address or gateway
    yet, as at boot before a DHCP lease) is not an error: everything else is installed,
    its traffic fails over as for a down uplink, and a `waiting:` line says what it
    waits for.

    Exit codes: 0 applied or already up to date (uplinks may wait); 1 invalid config, an
    uplink without gateway on a broadcast link, or apply failed and was rolled back; 4
    not root, nft missing or no such namespace.
    """
    from markroute.compile import compile_plan
    from markroute.config import config_path
    from markroute.daemon import dnsmasq
    from markroute.kernel import interrupt
    from markroute.kernel.environment import prepare
    from markroute.kernel.gateways import describe
    from markroute.kernel.waiting import apply_model

    with interrupt.noted():  # from the start: a signal while the config loads rolls back at the first step
        model = load_model_or_exit(config_path(config))
        plan = compile_plan(model)
        neighbours: list[str] = []
        with exit_codes():
            netns = prepare(netns)
            report = apply_model(model, plan, netns, force, meanwhile=lambda: neighbours.extend(neighbour_warnings(plan)))
        domains = dnsmasq.sync(model)
        report.changes += domains.changes
        report.warnings += domains.warnings
        for warning in report.warnings + neighbours:
            click.echo(f"markroute: warning: {warning}", err=True)
        for name, reason in report.waiting.items():
            click.echo(f"waiting: {name} ({describe(reason)})")
        late = interrupt.received()
        if late is not None:
            click.echo(f"markroute: {interrupt.signal_name(late)} came after the apply had committed: it completed",
                       err=True)
        if not report.changed:
            click.echo("already up to date: nothing changed")
            return
        for change in report.changes:
            click.echo(change)
        click.echo(f"applied: {len(report.changes)} changes")


def neighbour_warnings(plan: Plan) -> list[str]:
    """What other software's rules do to the traffic just applied: warnings, never a failure.

    The plan just applied stands in for markroute's live table (`findings` with the plan),
    so the snapshot leaves that table's set elements out: listing a million of them took
    nft over a minute and a gigabyte.
    """
    from markroute.commands import neighbours

    return neighbours.lines(neighbours.findings(neighbours.ours_of_plan(plan), plan))
