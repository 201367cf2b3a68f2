"""`markroute ha master|backup|fault`: keepalived's notify hook for an HA pair (README "HA pair")."""

from __future__ import annotations

import os
import sys

import click

from markroute.commands.cliutil import (
    config_option,
    config_path,
    exit_codes,
    netns_option,
    print_diagnostics,
)

TOOL_PATH = ("/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin")


@click.command("ha")
@click.argument("role", type=click.Choice(["master", "backup", "fault"]))
@config_option
@netns_option
def command(role: str, config: str | None, netns: str | None) -> None:
    """Take the VRRP role keepalived announced (its notify_master/backup/fault hook).

    master: commit the connections conntrackd replicated from the peer (conntrackd -c,
    -f internal, -R, -B), then lift markroute's hold on new forwarded connections.
    backup: set the hold, then conntrackd -t and -n. fault: set the hold, then -t.
    The role is recorded for `markroute run` (only a master deletes a dead uplink's
    connections) and `status`. The config's settings.ha names conntrackd's config;
    nothing else of the config is read (an error elsewhere never stops a takeover).

    Exit codes: 0 done; 1 invalid config, settings.ha missing, or a step failed
    (the role is recorded and the hold set or lifted all the same); 4 not root.
    """
    # keepalived starts its scripts with a bare PATH (no /usr/sbin): nft and conntrackd live there.
    os.environ["PATH"] = os.pathsep.join(dict.fromkeys([*os.environ.get("PATH", "").split(os.pathsep), *TOOL_PATH]))
    from markroute.config.hasettings import load_ha_settings
    from markroute.kernel import ha
    from markroute.kernel.environment import prepare

    settings, diagnostics = load_ha_settings(config_path(config))
    if settings is None:
        print_diagnostics(diagnostics)
        sys.exit(1)
    with exit_codes():
        netns = prepare(netns)
        record = ha.hand_over(role, settings.conntrackd, ha.hold_table(netns), netns)  # type: ignore[arg-type]
    failed = [step for step in record.steps if step.code != 0]
    for step in record.steps:
        click.echo(f"conntrackd {' '.join(step.argv[3:])}: exit {step.code} in {step.seconds:.3f} s"
                   + (f": {step.output}" if step.output else ""))
    if record.hold_error:
        click.echo(f"markroute: cannot {'lift' if role == 'master' else 'set'} the hold: {record.hold_error}", err=True)
    click.echo(f"role: {record.role}")
    if failed or record.hold_error:
        sys.exit(1)
