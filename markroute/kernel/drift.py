"""Drift: where the live kernel no longer matches what the last apply installed.

The nftables table is compared with the listing recorded right after apply (both
normalised), never with the plan's JSON, which nft rewrites on load. Rules and routes
are compared as values; sysctls with the values apply set.
"""

from __future__ import annotations

from typing import Any

from markroute.kernel import nft, sysctl
from markroute.kernel.apply import route_text, rule_text
from markroute.kernel.rpdb import route_key
from markroute.kernel.state import State
from markroute.plan import BAND_WIDTH, IpRule, Route, Sysctl


def differences(
    recorded: State,
    live_table: list[dict[str, Any]] | None,
    live_rules: list[IpRule],
    live_routes: list[Route],
) -> list[str]:
    """One sentence per difference; empty when the kernel matches the recorded state."""
    found = table_differences(recorded, live_table)
    present = set(live_rules)
    found += [f"ip rule missing: {rule_text(r)}" for r in recorded.rules if r not in present]
    band = range(recorded.rule_priority, recorded.rule_priority + BAND_WIDTH)
    expected = set(recorded.rules)
    found += [
        f"unexpected ip rule with markroute's protocol: {rule_text(r)}"
        for r in live_rules
        if r.priority in band and r not in expected
    ]
    keys = {route_key(r) for r in live_routes}
    found += [f"route missing: {route_text(r)}" for r in recorded.routes if route_key(r) not in keys]
    for path, value in recorded.sysctls_applied.items():
        current = sysctl.read(path) if sysctl.exists(path) else None
        if current != value:
            found.append(f"sysctl {Sysctl(path, value).name} is {current or 'gone'}, apply set {value}")
    return found


def table_differences(recorded: State, live_table: list[dict[str, Any]] | None) -> list[str]:
    name = f"nftables table inet {recorded.table_name}"
    if live_table is None:
        return [f"{name} is missing"]
    live = nft.normalise(live_table)
    if live == recorded.nft_listing:
        return []
    before, after = _by_chain(recorded.nft_listing), _by_chain(live)
    found = [f"{name}: chain {c} is missing" for c in before if c not in after]
    found += [f"{name}: chain {c} was added" for c in after if c not in before]
    found += [f"{name}: rules of chain {c} were changed" for c in before if c in after and before[c] != after[c]]
    return found or [f"{name} was changed (sets or chain definitions)"]


def _by_chain(listing: list[dict[str, Any]]) -> dict[str, list[Any]]:
    chains: dict[str, list[Any]] = {}
    for obj in listing:
        if "chain" in obj:
            chains.setdefault(obj["chain"]["name"], [])
        elif "rule" in obj:
            chains.setdefault(obj["rule"]["chain"], []).append(obj["rule"])
    return chains
