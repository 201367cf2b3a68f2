"""`markroute trace`: the path one packet takes, simulated, without touching any traffic.

`-c FILE` simulates the compiled plan before it is applied; `--live` simulates what
the running system (or `--netns NAME`) holds right now, markroute's rules or not.
"""

from __future__ import annotations

from typing import Any

import click

from markroute.commands.cliutil import (
    EXIT_ENVIRONMENT,
    EXIT_USAGE,
    config_option,
    config_path,
    fail,
    json_option,
    netns_option,
    print_json,
    without_cycle_collector,
)


@click.command("trace")
@config_option
@click.option("--live", is_flag=True, help="Simulate the running system instead of a config.")
@netns_option
@click.option("--from", "src", metavar="ADDR", required=True, help="Source address of the connection.")
@click.option("--to", "dst", metavar="ADDR", required=True, help="Destination address of the connection.")
@click.option("--proto", metavar="P", default=None, help="tcp, udp, icmp, icmpv6, sctp or a number.")
@click.option("--sport", metavar="N", default=None, help="Source port.")
@click.option("--dport", metavar="N", default=None, help="Destination port.")
@click.option("--iif", metavar="IF", default=None, help="The packet arrives on interface IF.")
@click.option("--local", is_flag=True, help="The packet is sent by this host.")
@click.option("--mac", metavar="MAC", default=None, help="Source MAC address of an arriving packet.")
@click.option("--dscp", metavar="D", default=None, help="DSCP value or class (ef, cs1, af21 ...).")
@click.option("--user", "uid", metavar="USER", default=None, help="Owner (name or uid) of the local socket (--local).")
@click.option("--group", "gid", metavar="GROUP", default=None, help="Group (name or gid) of the local socket (--local).")
@click.option("--cgroup", metavar="PATH", default=None,
              help="cgroup v2 path of the local socket (--local), e.g. system.slice/x.service.")
@click.option("--reply", is_flag=True, help="Trace a reply packet of the connection instead of its first packet.")
@click.option("--flows", metavar="N", type=click.IntRange(min=1), default=None,
              help="Sample N new connections and print the expected and sampled split.")
@click.option("--seed", metavar="N", type=int, default=None, help="Random seed for --flows.")
@click.option("--addr", "addresses", metavar="IF=CIDR", multiple=True,
              help="Offline: an address of this host (repeat for each); then they are taken as all of them.")
@click.option("--route", "routes", metavar="ROUTE", multiple=True,
              help="Offline: a route of main, e.g. 'default via 192.0.2.1 dev eth0' (repeat for each).")
@json_option
@without_cycle_collector
def command(config: str | None, live: bool, netns: str | None, src: str, dst: str, proto: str | None,
            sport: str | None, dport: str | None, iif: str | None, local: bool, mac: str | None, dscp: str | None,
            uid: str | None, gid: str | None, cgroup: str | None, reply: bool, flows: int | None, seed: int | None, addresses: tuple[str, ...], routes: tuple[str, ...],
            as_json: bool) -> None:
    """Show, step by step, how this host would handle a connection's first packet (or a reply).

    Every hook and chain it passes, each rule that matched, the marks after each step,
    NAT, the ip rules considered and the route that won, and the verdict. Where a
    balance group decides, every outcome is listed with its probability.

    Offline (-c), this host's addresses and main's routes are unknown unless given with
    --addr and --route; whatever depends on them is reported as indeterminate.
    """
    from markroute.sim.packet import make_flow

    if live and config is not None:
        fail("-c and --live exclude each other: simulate either a config or the running system", EXIT_USAGE)
    if netns is not None and not live:
        fail("--netns needs --live (a config is simulated offline, in no namespace)", EXIT_USAGE)
    if live and (addresses or routes):
        fail("--addr and --route describe the host offline; with --live it is read from the system", EXIT_USAGE)
    try:
        flow = make_flow(src, dst, proto, sport, dport, iif, local, mac, dscp, reply, uid, gid, cgroup)
    except ValueError as exc:
        fail(str(exc), EXIT_USAGE)
    if live:
        simulator, source, assumptions = _live(netns)
        links = simulator.system.host.links or {}
        if iif is not None and iif not in links:
            fail(f"--iif {iif}: no such interface here (known: {', '.join(sorted(links))})", EXIT_USAGE)
    else:
        simulator, source, assumptions = _offline(config, list(addresses), list(routes))
    _report(simulator, flow, source, assumptions, flows, seed, as_json)


def _offline(config: str | None, addresses: list[str], routes: list[str]) -> tuple[Any, str, list[str]]:
    from markroute import sim
    from markroute.commands.cliutil import load_model_or_exit
    from markroute.compile import compile_plan

    path = config_path(config)
    model = load_model_or_exit(path, quiet_warnings=True)
    try:
        simulator = sim.offline(compile_plan(model), addresses, routes)
    except ValueError as exc:
        fail(str(exc), EXIT_USAGE)
    return simulator, f"config {path} (offline)", simulator.system.assumptions


def _live(netns: str | None) -> tuple[Any, str, list[str]]:
    from markroute import sim
    from markroute.kernel import EnvironmentProblem, KernelError
    from markroute.kernel import netns as namespaces
    from markroute.kernel.environment import require_nft, require_root
    from markroute.kernel.snapshot import snapshot

    try:
        require_root()
        require_nft()
        if netns is not None:
            namespaces.enter(netns)
        state = snapshot()
        sysctls = _sysctls(state.get("links", {}))
    except EnvironmentProblem as exc:
        fail(str(exc), EXIT_ENVIRONMENT)
    except KernelError as exc:
        fail(str(exc))
    try:
        simulator = sim.live(state, sysctls)
    except (ValueError, KeyError) as exc:
        fail(f"cannot interpret the live ruleset: {exc}")
    where = f"network namespace {netns}" if netns else "this system"
    return simulator, f"live ({where})", []


def _sysctls(links: dict[str, Any]) -> dict[str, str]:
    """The sysctls routing decisions depend on, for every interface of the snapshot."""
    from markroute.kernel import sysctl
    from markroute.sim.system import sysctl_paths

    return {path: sysctl.read(path) for path in sysctl_paths(list(links)) if sysctl.exists(path)}


def _report(simulator: Any, flow: Any, source: str, assumptions: list[str], flows: int | None, seed: int | None,
            as_json: bool) -> None:
    from markroute.sim import report
    from markroute.sim.sample import split

    try:
        paths = simulator.paths(flow)
        rows = split(simulator.explore(flow, record=False), flows, seed) if flows else None
    except ValueError as exc:
        fail(str(exc))
    data = report.document(flow, paths, source, assumptions, simulator.ruleset.ignored)
    if rows is not None:
        data["sampling"] = {"flows": flows, "seed": seed, "split": rows}
    if as_json:
        print_json(data)
        return
    click.echo(report.text(data), nl=False)
    if rows is not None:
        click.echo("")
        click.echo(report.split_text(rows, flows or 0), nl=False)

