"""`markroute check`: validate a config and list every problem with its position.

Problems go to stderr, one line each (`FILE:LINE:COL: error: message (hint: ...)`), so
editors and CI logs can link them; the one-line summary of a valid config goes to
stdout. `--json` prints a single document on stdout instead, for tools.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator

import click

from markroute.commands.cliutil import (
    EXIT_FAILED,
    EXIT_USAGE,
    config_option,
    config_path,
    exit_codes,
    fail,
    json_option,
    netns_option,
    print_diagnostics,
    print_json,
    without_cycle_collector,
)
from markroute.config.warnings import Warning, shadowed_ingress, shadowed_policies
from markroute.diagnostics import Diagnostic
from markroute.model import Model


def simulated(model: Model, diagnostics: list[Diagnostic]) -> list[Diagnostic]:
    """Add the trace interpreter's findings; only `check` pays for compiling and searching."""
    found = [Diagnostic(where, "warning", message, hint) for where, message, hint in simulated_warnings(model)]
    return sorted(diagnostics + found, key=lambda d: (d.where.file, d.where.line, d.where.col))


def simulated_warnings(model: Model) -> Iterator[Warning]:
    """What the trace interpreter finds on the compiled plan that the match comparisons above miss.

    Policies hidden by several earlier ones together, or by ingress rules, and uplinks
    no new connection can be marked for. What `shadowed_policies`/`shadowed_ingress`
    already explain is not reported twice; a failover standby is unused by design.
    """
    from markroute.compile import compile_plan
    from markroute.config import dynamicsets
    from markroute.sim import reachability

    explained = {where for where, _, _ in (*shadowed_policies(model), *shadowed_ingress(model))}
    found = reachability(compile_plan(model), [p.name for p in model.policies if p.where in explained])
    by_name = {p.name: p for p in model.policies}
    unknowable = dynamicsets.dynamic_policies(model)
    explained |= {model.uplinks[u].where for name in unknowable for u in model.uplinks_of(by_name[name].via)}
    for name in found.unreachable_policies:
        if by_name[name].where not in explained and name not in unknowable:
            yield (
                by_name[name].where,
                f"policy '{name}' can never match: no packet reaches it past the rules before it",
                "try `markroute trace` with a packet it should match to see which rule takes it",
            )
    standby = {m for g in model.groups.values() if g.kind == "failover" for m, _ in g.members[1:]}
    for name in found.unused_uplinks:
        if name not in standby and model.uplinks[name].where not in explained:
            yield (
                model.uplinks[name].where,
                f"uplink '{name}' carries no new connection: no policy, group or ingress rule leads to it",
                "point a policy at it (via:) or remove it",
            )


def live_warnings(model: Model, path: str, netns: str | None) -> list[Diagnostic]:
    """The neighbours' findings for the compiled plan, as warnings at the top of the config."""
    from markroute.commands import neighbours
    from markroute.compile import compile_plan
    from markroute.diagnostics import Where
    from markroute.kernel.environment import prepare

    with exit_codes():
        prepare(netns)
        plan = compile_plan(model)
        found = neighbours.findings(neighbours.ours_of_plan(plan), plan, setup=True)
    return [Diagnostic(Where(path, 1, 1), "warning", finding.message, finding.hint) for finding in found]


@click.command("check")
@config_option
@click.option("--live", is_flag=True, help="Also simulate the config's traffic through this system's other rules.")
@netns_option
@json_option
@without_cycle_collector
def command(config: str | None, live: bool, netns: str | None, as_json: bool) -> None:
    """Validate the config; exit 0 when it is valid, 1 with one line per problem.

    With --live, markroute's representative connections are simulated through the
    running system's other firewalls, ip rules and routes (plus networkd's settings),
    and each path another program would break is a warning naming its rule.
    """
    from markroute.config import load_model

    if netns is not None and not live:
        fail("--netns needs --live", EXIT_USAGE)
    path = config_path(config)
    model, diagnostics = load_model(path)
    if model is not None:
        diagnostics = simulated(model, diagnostics)
    if model is not None and live:
        diagnostics = diagnostics + live_warnings(model, path, netns)
    errors = sum(d.severity == "error" for d in diagnostics)
    warnings = len(diagnostics) - errors
    if as_json:
        print_json({
            "file": path,
            "valid": model is not None,
            "errors": errors,
            "warnings": warnings,
            "diagnostics": [d.to_json() for d in diagnostics],
        })
    else:
        print_diagnostics(diagnostics)
        if model is not None:
            noted = f" ({warnings} warning{'s' if warnings != 1 else ''})" if warnings else ""
            click.echo(
                f"{path}: ok: {len(model.uplinks)} uplinks, {len(model.groups)} groups, "
                f"{len(model.policies)} policies{noted}"
            )
    if model is None:
        sys.exit(EXIT_FAILED)
