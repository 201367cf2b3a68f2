"""`markroute demo`: build a lab in namespaces, apply a bundled config, show where traffic went."""

from __future__ import annotations

import shlex
from typing import TYPE_CHECKING

import click

from markroute.commands.cliutil import (
    EXIT_ENVIRONMENT,
    EXIT_USAGE,
    fail,
    json_option,
    print_json,
)

if TYPE_CHECKING:
    from rich.console import Console

    from markroute.lab.demo import DemoReport


@click.command("demo")
@click.option("--keep", is_flag=True, help="Leave the lab running and print commands to explore it.")
@click.option("--down", "down_prefix", metavar="PREFIX", default=None,
              help="Remove a lab left by --keep (PREFIX is the mr-XXXXXX it printed).")
@json_option
def command(keep: bool, down_prefix: str | None, as_json: bool) -> None:
    """Run markroute on a throwaway router in network namespaces, with real traffic.

    Builds a router with two ISPs (IPv4 and IPv6), a LAN client and servers, applies
    the bundled config (balance 1:2, one destination network via ISP B, a private site
    via main), opens a few hundred TCP and UDP connections and shows which uplink carried
    them and what `markroute status` counted. Nothing outside the lab's namespaces is
    touched, and the lab is removed at the end unless --keep.

    Exit codes: 0 done; 1 the demo failed; 2 wrong usage; 4 not root, or nft, ip or
    network namespaces missing.
    """
    from rich.console import Console

    from markroute.kernel import EnvironmentProblem
    from markroute.lab import demo

    if keep and down_prefix:
        fail("--keep and --down exclude each other", EXIT_USAGE)
    console = Console(stderr=as_json, highlight=False)
    try:
        if down_prefix is not None:
            removed = demo.remove(down_prefix)
            if as_json:
                print_json({"removed": removed})
            else:
                console.print(f"removed markroute and the namespaces {', '.join(removed)}")
            return
        report = demo.run(keep, progress=lambda step: console.print(f"demo: {step}", style="dim", soft_wrap=True))
    except EnvironmentProblem as exc:
        fail(str(exc), EXIT_ENVIRONMENT)
    except demo.DemoError as exc:
        fail(str(exc), exc.code)
    if as_json:
        print_json(report.to_json())
    else:
        render(report, console)


def render(report: DemoReport, console: Console) -> None:
    """The flows per uplink, the status counters, and how to explore or what was removed."""
    from rich import box
    from rich.table import Table

    from markroute.lab.demo import MAIN, PACKETS

    flows = Table(title="Which uplink carried the connections (by the source the server saw)", box=box.SIMPLE)
    flows.add_column("destination", no_wrap=True)
    flows.add_column("policy", no_wrap=True)
    for name in ["flows", *report.uplinks, MAIN]:
        flows.add_column(name, justify="right", no_wrap=True)
    for flow in report.flows:
        counts = [str(flow.by_uplink.get(name, 0)) for name in [*report.uplinks, MAIN]]
        flows.add_row(flow.destination, flow.policy, f"{flow.count} {flow.proto}", *counts)
    console.print(flows)
    total, answered = sum(f.count for f in report.flows), sum(f.ok for f in report.flows)
    moved = sum(f.inconsistent for f in report.flows)
    console.print(
        f"{answered} of {total} connections answered; {answered - moved} of them kept one uplink for all "
        f"{PACKETS} exchanges.\n"
    )

    status = report.status
    policies = Table(title="markroute status: policy counters (first packets of connections)", box=box.SIMPLE)
    for name in ("policy", "packets", "bytes"):
        policies.add_column(name, justify="left" if name == "policy" else "right")
    for policy in status["policies"]:
        policies.add_row(policy["name"], str(policy["packets"]), str(policy["bytes"]))
    console.print(policies)
    uplinks = Table(title="markroute status: uplinks (connections: conntrack entries with its mark)", box=box.SIMPLE)
    for name in ("uplink", "interface", "table", "mark", "connections"):
        uplinks.add_column(name, justify="right" if name == "connections" else "left")
    for uplink in status["uplinks"]:
        uplinks.add_row(uplink["name"], uplink["interface"], str(uplink["table"]), uplink["mark"],
                        str(uplink["connections"]))
    console.print(uplinks)

    if report.kept:
        console.print(f"\nThe lab is still up: router {report.router}, LAN client {report.lan}. Explore it with:")
        for argv in report.explore:
            console.print(f"  {shlex.join(argv)}", markup=False, soft_wrap=True)
    else:
        console.print(f"\nmarkroute was removed from {report.router} and the lab's namespaces deleted.")
