"""`markroute down`: remove exactly what markroute installed and restore the sysctls it changed."""

from __future__ import annotations

import click

from markroute.commands.cliutil import EXIT_FAILED, exit_codes, fail, netns_option


@click.command("down")
@netns_option
@click.option(
    "--rule-priority", type=click.IntRange(1, 32700), default=None,
    help="Only if the state under /run/markroute is lost: the rule_priority the config used (default 10000).",
)
@click.option(
    "--force", is_flag=True,
    help="Also when the record is damaged or missing: remove the table inet markroute and markroute's "
         "rules and routes found in the kernel (sysctls cannot be put back then).",
)
def command(netns: str | None, rule_priority: int | None, force: bool) -> None:
    """Remove markroute's nftables table, ip rules and routes; put back the sysctls.

    Needs no config: the record apply left under /run/markroute says what to remove.
    Running it again is harmless. An apply that was killed before it finished is undone
    first. Once started, down completes even on SIGINT, SIGTERM or SIGHUP. For a
    namespace deleted without `down`, it forgets the record markroute kept for it.

    While `markroute run` serves the namespace, down is refused: the daemon would apply
    its config again within a second. Stop it first (or run it with --down-on-exit).

    Exit codes: 0 removed (or nothing to remove); 1 something could not be removed
    (the record is kept, so running down again retries), or markroute run serves the
    namespace; 4 not root, nft missing or no such namespace (and no record of one).
    """
    from markroute.kernel import interrupt
    from markroute.kernel.down import down, forget_vanished
    from markroute.kernel.environment import prepare, require_root

    with interrupt.noted():
        with exit_codes():
            require_root()
            if netns and forget_vanished(netns):
                click.echo(f"network namespace '{netns}' is gone: forgot what markroute had recorded for it")
                return
            netns = prepare(netns)
            refuse_beside_daemon(netns)
            report = down(netns, rule_priority, force)
        for warning in report.warnings:
            click.echo(f"markroute: warning: {warning}", err=True)
        late = interrupt.received()
        if late is not None:
            click.echo(f"markroute: {interrupt.signal_name(late)} came while down was removing: it completed", err=True)
        for change in report.changes:
            click.echo(change)
        if report.errors:
            fail("down left some things in place: " + "; ".join(report.errors), EXIT_FAILED)
        click.echo("removed" if report.changes else "nothing to remove")


def refuse_beside_daemon(netns: str | None) -> None:
    """Exit 1, changing nothing, when `markroute run` serves NETNS: it would put everything back."""
    from markroute.daemon import control
    from markroute.kernel import state

    if control.serving(netns):
        record = state.load_daemon_record(netns)
        who = f"markroute run (pid {record.pid})" if record else "markroute run"
        fail(f"{who} serves this namespace and would apply its config again within a second: stop it first "
             "(systemctl stop markroute), then down; or start it with --down-on-exit", EXIT_FAILED)
