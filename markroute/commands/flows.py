"""`markroute flows`: live connections, the uplink each uses and the rule that decided it."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import click

from markroute.commands.cliutil import (
    EXIT_USAGE,
    exit_codes,
    fail,
    json_option,
    netns_option,
    print_json,
)

if TYPE_CHECKING:
    from markroute.kernel.flows import TrackedFlow
    from markroute.kernel.state import State


@click.command("flows")
@click.option("--uplink", metavar="U", default=None, help="Only connections marked for uplink U.")
@click.option("--policy", metavar="P", default=None, help="Only connections policy P decided.")
@click.option("--from", "src", metavar="ADDR", default=None, help="Only connections from ADDR (an address or prefix).")
@click.option("--to", "dst", metavar="ADDR", default=None, help="Only connections to ADDR (an address or prefix).")
@netns_option
@json_option
def command(uplink: str | None, policy: str | None, src: str | None, dst: str | None, netns: str | None,
            as_json: bool) -> None:
    """List tracked connections: uplink, deciding policy (or "ingress via U"), NAT, age, bytes.

    The uplink is read from the connection mark, the decision from the connection's
    labels, where the policy or ingress rule that decided recorded itself (label bits
    96-121; see README "Which connection went where"). "not recorded": no markroute rule
    decided (traffic to this host, no policy matched, a socket chose its own mark), the
    connection is older than markroute's rules, or the config sets `connection_records:
    false` (then age and bytes show only if the kernel keeps them). Each line starts with the
    connection as `markroute explain` takes it.

    Exit codes: 0 listed (also when none match); 1 markroute is not applied here or
    conntrack cannot be read; 2 bad filter; 4 not root or no such namespace.
    """
    from markroute.kernel import state
    from markroute.kernel.environment import prepare
    from markroute.kernel.flows import in_network, tracked_flows

    with exit_codes():
        netns = prepare(netns)
        recorded = state.load(netns)
        if recorded is None:
            fail("markroute is not applied here: no decisions to show (run markroute apply)")
        unknown_filter(recorded, uplink, policy)
        found = tracked_flows(recorded)
    try:
        found = [
            f for f in found
            if (uplink is None or f.uplink == uplink)
            and (policy is None or f.policy == policy)
            and (src is None or in_network(f.connection.src, src))
            and (dst is None or in_network(f.connection.dst, dst))
        ]
    except ValueError as exc:
        fail(f"--from/--to: {exc}", EXIT_USAGE)
    now = time.time()
    if as_json:
        print_json({"version": 1, "connection_records": recorded.connection_records,
                    "flows": [f.to_json(now) for f in found]})
    else:
        click.echo(render(found, now), nl=False)
        if not recorded.connection_records:
            click.echo("(decisions are not recorded: settings: connection_records: false)")


def unknown_filter(recorded: State, uplink: str | None, policy: str | None) -> None:
    """A filter naming no uplink or policy of the applied config is a typo, not an empty list."""
    if uplink is not None and uplink not in {u.name for u in recorded.uplinks}:
        fail(f"--uplink {uplink}: no such uplink in the applied config "
             f"(known: {', '.join(u.name for u in recorded.uplinks)})", EXIT_USAGE)
    if policy is not None and policy not in recorded.policies:
        fail(f"--policy {policy}: no such policy in the applied config", EXIT_USAGE)
    if policy is not None and not recorded.connection_records:
        fail(f"--policy {policy}: the applied config records no decisions (settings: connection_records: false)",
             EXIT_USAGE)


def render(found: list[TrackedFlow], now: float) -> str:
    """One line per connection, its `explain` form first, then uplink, reason, NAT, age, bytes."""
    from markroute.kernel.flows import age_text

    if not found:
        return "no connections\n"
    lines = []
    for f in found:
        c = f.connection
        nat = []
        if c.snat:
            nat.append(f"snat {c.snat}")
        if c.dnat:
            nat.append(f"dnat {c.dnat}")
        octets = "-" if c.octets is None else f"{c.octets}B"
        lines.append(
            f"{f.endpoints():<52} uplink {f.uplink or '-':<10} {f.reason:<28} "
            f"{', '.join(nat) or 'no nat':<22} age {age_text(c.started, now):<5} {octets}"
        )
    return "\n".join(lines) + "\n"
