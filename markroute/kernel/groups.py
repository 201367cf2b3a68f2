"""Groups and policy targets as the live table has them: who carries a group's traffic now.

The configured groups (`plan.GroupPlan`, kept in the state record) say who may carry
traffic; the `group_<name>` chains the daemon rewrites on failover say who does: a
failover group's chain goes to its active member, a balance group's chain draws among
the usable members with their effective (degraded-scaled) weights. Reading the chains
rather than recomputing them from health states means status shows what the kernel
does, even while the daemon is stopped or mid-rewrite.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

Obj = dict[str, Any]
PREFIXES = ("mark_", "group_", "via_")


@dataclass(frozen=True)
class Reached:
    """What one group chain reaches: member -> effective weight (failover: the active one, weight 1)."""

    weights: dict[str, int]
    balanced: bool
    last_resort_only: bool


def target_name(verdict: Obj) -> str | None:
    """`goto mark_isp_a` -> `isp_a`; `accept` -> `main`; None for anything else."""
    if "accept" in verdict:
        return "main"
    for kind in ("goto", "jump"):
        if kind in verdict:
            target: str = verdict[kind]["target"]
            for prefix in PREFIXES:
                if target.startswith(prefix):
                    return target[len(prefix):]
            return target
    return None


def group_chains(listing: Iterable[Obj]) -> dict[str, Reached]:
    """Per group, the members its chain reaches now (families merged), from a table listing."""
    found: dict[str, Reached] = {}
    rules: dict[str, list[Obj]] = {}
    for obj in listing:
        rule = obj.get("rule")
        if rule and rule.get("chain", "").startswith("group_"):
            rules.setdefault(rule["chain"][len("group_"):], []).append(rule)
    for group, chain in rules.items():
        weights: dict[str, int] = {}
        balanced = False
        for rule in chain:
            if rule.get("comment") == "last resort":
                continue
            last = rule["expr"][-1]
            if "vmap" in last and "numgen" in last["vmap"]["key"]:
                balanced = True
                for key, verdict in last["vmap"]["data"]["set"]:
                    member = target_name(verdict)
                    if member is not None:
                        weights.setdefault(member, _span(key))
            else:
                member = target_name(last)
                if member is not None:
                    weights.setdefault(member, 1)
        found[group] = Reached(weights, balanced, not weights)
    return found


def _span(key: Any) -> int:
    """How many numgen outcomes a map key covers: 1 for a value, hi - lo + 1 for a range."""
    if isinstance(key, dict) and "range" in key:
        low, high = key["range"]
        return int(high) - int(low) + 1
    return 1


def policy_targets(listing: Iterable[Obj]) -> dict[str, str]:
    """Each policy's target as its rule (comment `policy NAME`) goes to: an uplink, a group or `main`."""
    targets: dict[str, str] = {}
    for obj in listing:
        rule = obj.get("rule")
        comment = rule.get("comment", "") if rule else ""
        if rule and comment.startswith("policy ") and rule.get("expr"):
            target = target_name(rule["expr"][-1])
            if target is not None:
                targets.setdefault(comment[len("policy "):], target)
    return targets
