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
    Running it again is harmless. For a namespace deleted without `down`, it forgets
    the record markroute kept for it.

    Exit codes: 0 removed (or nothing to remove); 1 something could not be removed
    (the record is kept, so running down again retries); 4 not root, nft missing or no
    such namespace (and no record of one).
    """
    from markroute.kernel.down import down, forget_vanished
    from markroute.kernel.environment import prepare, require_root

    with exit_codes():
        require_root()
        if netns and forget_vanished(netns):
            click.echo(f"network namespace '{netns}' is gone: forgot what markroute had recorded for it")
            return
        netns = prepare(netns)
        report = down(netns, rule_priority, force)
    for warning in report.warnings:
        click.echo(f"markroute: warning: {warning}", err=True)
    for change in report.changes:
        click.echo(change)
    if report.errors:
        fail("down left some things in place: " + "; ".join(report.errors), EXIT_FAILED)
    click.echo("removed" if report.changes else "nothing to remove")
