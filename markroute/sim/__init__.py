"""An offline packet-path simulator: nftables + RPDB + routing, interpreted from data.

One interpreter serves two sources. `offline(plan, ...)` simulates a compiled plan
before anything is applied; `live(snapshot, sysctls)` simulates what a running system
(or namespace) holds, including rulesets markroute did not write. Both feed the same
shapes: the nft list-form JSON document and `ip -j rule` / `ip -j route` objects.

Public API:

* `offline(plan, addresses, routes)` / `live(snapshot, sysctls)` -> `Simulator`
* `make_flow(...)` -> `Flow`, the question; `Simulator.paths(flow)` -> every outcome
  with its probability and steps; `markroute.sim.report` renders them.
* `reachability(plan)` -> `Reach`: the policies nothing reaches and the uplinks nothing
  is marked for, for `markroute check`.
"""

from __future__ import annotations

from typing import Any

from markroute.plan import Plan
from markroute.sim.nft import Ruleset
from markroute.sim.reach import Reach, reachability
from markroute.sim.system import from_plan, from_snapshot
from markroute.sim.trace import Simulator
from markroute.sim.xt import Iptables

__all__ = ["Reach", "Simulator", "live", "offline", "reachability"]


def offline(plan: Plan, addresses: list[str] | None = None, routes: list[str] | None = None) -> Simulator:
    """A simulator of `plan`, with the host's addresses and main's routes as far as they are given."""
    system = from_plan(plan, addresses, routes)
    return Simulator(Ruleset(plan.nft_document(), system, offline=True), system)


def live(snapshot: dict[str, Any], sysctls: dict[str, str]) -> Simulator:
    """A simulator of a running system, from `markroute.kernel.snapshot.snapshot()` and its sysctls."""
    system = from_snapshot(snapshot, sysctls)
    ruleset = Ruleset(snapshot.get("nftables", {"nftables": []}), system, Iptables.from_snapshot(snapshot))
    return Simulator(ruleset, system)
