"""`markroute apply`: install the plan, converge to it, or change nothing at all."""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING

import click

from markroute.commands.cliutil import (
    EXIT_FAILED,
    config_option,
    config_path,
    exit_codes,
    fail,
    load_model_or_exit,
    netns_option,
    without_cycle_collector,
)
from markroute.kernel import interrupt

if TYPE_CHECKING:
    from markroute.plan import Plan

ANSWER_WAIT = 300.0  # seconds for markroute run's answer: a reload of a million prefixes takes seconds


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

    While `markroute run` serves the namespace, the apply is its: it reads the same
    file again (as on SIGHUP), applies it keeping every uplink's state, and this command
    prints what it did. Applying another file than the daemon's is refused, since the
    daemon would put its own back; so is --force.

    Exit codes: 0 applied or already up to date (uplinks may wait); 1 invalid config, an
    uplink without gateway on a broadcast link, apply failed and was rolled back, or
    markroute run refused it or did not answer; 4 not root, nft missing or no such
    namespace.
    """
    from markroute.kernel.environment import prepare

    with interrupt.noted():  # from the start: a signal while the config loads rolls back at the first step
        with exit_codes():
            netns = prepare(netns)
        path = config_path(config)
        hand_over(path, netns, force)
        apply_alone(path, netns, force)


def apply_alone(path: str, netns: str | None, force: bool) -> None:
    """The apply when no daemon serves the namespace: load, compile, converge, report.

    Its modules are imported here, after `hand_over`, which needs none of them."""
    from markroute.compile import compile_plan
    from markroute.daemon import dnsmasq
    from markroute.kernel.gateways import describe
    from markroute.kernel.waiting import apply_model

    model = load_model_or_exit(path)
    plan = compile_plan(model)
    neighbours: list[str] = []
    with exit_codes():
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


def hand_over(path: str, netns: str | None, force: bool) -> None:
    """When `markroute run` serves the namespace, it applies PATH and this process exits with its outcome.

    The daemon would undo an apply of any other process (it keeps its own config true);
    this way the apply goes through it instead (`markroute.daemon.control`). A signal
    stops the waiting, not the daemon's apply, which is all-or-nothing on its own.
    """
    from markroute.daemon import control

    request = control.Request(os.path.abspath(path), force)
    try:
        answer = control.ask(netns, request, ANSWER_WAIT, lambda: interrupt.received() is not None)
    except control.OtherVersion as exc:
        fail(f"markroute run did not take the apply: {exc}")
    except control.NoAnswer as exc:
        late = interrupt.received()
        why = f"{interrupt.signal_name(late)}: stopped waiting" if late is not None else str(exc)
        fail(f"markroute run took the apply but did not answer ({why}); its log says how the apply ended")
    if answer is None:
        return
    for line in answer.errors:
        click.echo(line, err=True)
    if answer.outcome in ("invalid", "failed", "refused"):
        sys.exit(EXIT_FAILED)
    click.echo(f"applied by markroute run (pid {answer.pid}), which keeps it true")
    for line in answer.notes:
        click.echo(line)
    if not answer.changes:
        click.echo("already up to date: nothing changed")
    else:
        for change in answer.changes:
            click.echo(change)
        click.echo(f"applied: {len(answer.changes)} changes")
    sys.exit(0)


def neighbour_warnings(plan: Plan) -> list[str]:
    """What other software's rules do to the traffic just applied: warnings, never a failure.

    The plan just applied stands in for markroute's live table (`findings` with the plan),
    so the snapshot leaves that table's set elements out: listing a million of them took
    nft over a minute and a gigabyte.
    """
    from markroute.commands import neighbours

    return neighbours.lines(neighbours.findings(neighbours.ours_of_plan(plan), plan))
