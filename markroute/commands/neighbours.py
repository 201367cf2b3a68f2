"""What other software on this router does to markroute's traffic: the live checks.

`check --live`, `apply` and `status` ask this after entering the namespace. It reads
the live system once (`kernel.snapshot`: every nftables table, iptables-nft's view of
its rules, ip rules, routes, links; the routing sysctls), simulates markroute's
representative connections through all of it (`sim.neighbours`), and adds what needs
no simulation: foreign fwmark rules without a mask, and systemd-networkd set to delete
foreign ip rules. Every problem is a `Finding` with the foreign rule and a fix; none
ever blocks an apply.
"""

from __future__ import annotations

from typing import Any

from markroute.kernel import KernelError
from markroute.kernel.state import State
from markroute.plan import BAND_WIDTH, FAMILY_NAMES, RULE_PROTOCOL, Plan, resolve
from markroute.sim.foreign import (
    Finding,
    Ours,
    foreign_hands,
    in_table,
    unmasked_fwmark_rules,
)

PATH_KINDS = ("drop", "reject", "reroute")


def ours_of_plan(plan: Plan) -> Ours:
    return Ours(plan.table_name, plan.mask, _band(plan.rule_priority), tuple(plan.uplinks))


def ours_of_state(recorded: State) -> Ours:
    return Ours(recorded.table_name, recorded.mask, _band(recorded.rule_priority), tuple(recorded.uplinks))


def _band(first: int) -> frozenset[int]:
    return frozenset(range(first, first + BAND_WIDTH))


def findings(ours: Ours, plan: Plan | None = None, setup: bool = False) -> list[Finding]:
    """Every problem found in the current namespace; a system that cannot be read is one finding.

    With `plan`, the plan takes the place of whatever markroute has installed (maybe
    nothing yet): `check --live` asks about the config before it is applied. `setup`
    adds what may break markroute later rather than now (networkd's setting, fwmark
    rules without a mask), which `check --live` reports and `status` does not count.
    Where no foreign base chain or ip rule could touch markroute's paths
    (`foreign_hands`), nothing is simulated.
    """
    from markroute.kernel.snapshot import snapshot

    simulator = None
    try:
        state = snapshot(plan.table_name if plan is not None else None)
        if foreign_hands(state, ours):  # only then is the simulator imported
            from markroute import sim
            from markroute.commands.trace import _sysctls

            if plan is not None:
                state = with_plan(state, plan)
            simulator = sim.live(state, _sysctls(state.get("links", {})))
    except (KernelError, ValueError, KeyError) as exc:
        return [Finding("unknown", "original", "", None, None, None,
                        f"the live rules could not be simulated: {exc}", "run `markroute trace --live` to see why")]
    found: list[Finding] = []
    if simulator is not None:
        from markroute.sim.neighbours import inspect

        found = inspect(simulator, ours, state.get("nftables", {"nftables": []}))
    if setup:
        from markroute.kernel import networkd  # with configparser: apply never asks

        found += unmasked_fwmark_rules(state.get("rules", []), ours)
        problem = networkd.warning()
        if problem is not None:
            found.append(Finding("networkd", "original", "", None, None, None, problem[0], problem[1]))
    return found


def with_plan(state: dict[str, Any], plan: Plan) -> dict[str, Any]:
    """The snapshot with markroute's table, rules and routes replaced by the plan's, resolved for these links."""
    from markroute.kernel.links import link_state
    from markroute.kernel.rpdb import Rpdb

    with Rpdb() as rpdb:
        rules, routes = resolve(plan, link_state(rpdb))
    objects = [o for o in state.get("nftables", {}).get("nftables", []) if not in_table(o, plan.table_name)]
    foreign_rules = [r for r in state.get("rules", []) if str(r.get("protocol")) != str(RULE_PROTOCOL)]
    foreign_routes = [r for r in state.get("routes", []) if str(r.get("protocol")) != str(RULE_PROTOCOL)]
    return dict(
        state,
        nftables={"nftables": objects + plan.nft_document()["nftables"]},
        rules=foreign_rules + [dict(r.to_json(), family=FAMILY_NAMES[r.version]) for r in rules],
        routes=foreign_routes + [dict(r.to_json(), family=FAMILY_NAMES[r.version]) for r in routes],
    )


def breaks_paths(found: list[Finding]) -> bool:
    """Whether some finding is a path a foreign rule breaks now (what `status` exits 5 for).

    A system the simulator could not read is said, but is not such a problem.
    """
    return any(finding.kind in PATH_KINDS for finding in found)


def lines(found: list[Finding]) -> list[str]:
    """One line per finding with its fix, as `check`, `apply` and `status` print them."""
    return [f"{finding.message} (hint: {finding.hint})" for finding in found]


def to_json(found: list[Finding]) -> list[dict[str, Any]]:
    return [finding.to_json() for finding in found]
