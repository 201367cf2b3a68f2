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

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from markroute.plan import Plan
    from markroute.sim.reach import Reach, reachability
    from markroute.sim.trace import Simulator

__all__ = ["Reach", "Simulator", "live", "offline", "reachability"]

# The simulator's modules load when first used, not with the package: `sim.foreign`
# alone is what `apply` asks on a router without foreign rules (~20 ms of import saved).
_LAZY = {"Reach": "markroute.sim.reach", "reachability": "markroute.sim.reach", "Simulator": "markroute.sim.trace"}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'markroute.sim' has no attribute '{name}'")
    return getattr(importlib.import_module(module), name)


def offline(plan: Plan, addresses: list[str] | None = None, routes: list[str] | None = None) -> Simulator:
    """A simulator of `plan`, with the host's addresses and main's routes as far as they are given."""
    from markroute.sim.nft import Ruleset
    from markroute.sim.system import from_plan
    from markroute.sim.trace import Simulator

    system = from_plan(plan, addresses, routes)
    return Simulator(Ruleset(plan.nft_document(), system, offline=True), system)


def live(snapshot: dict[str, Any], sysctls: dict[str, str]) -> Simulator:
    """A simulator of a running system, from `markroute.kernel.snapshot.snapshot()` and its sysctls."""
    from markroute.sim.nft import Ruleset
    from markroute.sim.system import from_snapshot
    from markroute.sim.trace import Simulator
    from markroute.sim.xt import Iptables

    system = from_snapshot(snapshot, sysctls)
    ruleset = Ruleset(snapshot.get("nftables", {"nftables": []}), system, Iptables.from_snapshot(snapshot))
    return Simulator(ruleset, system)
