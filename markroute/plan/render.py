"""Human-readable rendering of a `Plan` for `markroute plan`."""

from __future__ import annotations

from markroute.plan import (
    BAND_WIDTH,
    FAMILY_NAMES,
    RULE_PROTOCOL,
    SOURCE_RULE_OFFSET,
    Plan,
    Route,
    nfttext,
)
from markroute.values import AUTO_GATEWAY


def plan_text(plan: Plan) -> str:
    lines = [f"# nftables: table inet {plan.table_name} (replaced atomically)", nfttext.render(plan.nft_document()).rstrip()]
    lines += ["", f"# ip rules (priority band {plan.rule_priority}-{plan.rule_priority + BAND_WIDTH - 1}, protocol {RULE_PROTOCOL})"]
    for rule in plan.rules:
        lines.append(f"{FAMILY_NAMES[rule.version]:6} {rule.text()}")
    for uplink in plan.uplinks:
        if uplink.source_rules:
            for version in uplink.versions:
                lines.append(
                    f"{FAMILY_NAMES[version]:6} {plan.rule_priority + SOURCE_RULE_OFFSET}: from <each {FAMILY_NAMES[version]} address of "
                    f"{uplink.interface}, at apply> lookup {uplink.source_table(version)}"
                )
    lines += ["", "# routes"]
    for route in plan.routes:
        lines.append(f"{FAMILY_NAMES[route.version]:6} {route.text()}")
    for uplink in plan.uplinks:
        for version, gateway in ((4, uplink.gateway), (6, uplink.gateway6)):
            if gateway == AUTO_GATEWAY and version in uplink.versions:
                for route in uplink.copies(Route(version, uplink.table, "default", uplink.interface)):
                    lines.append(f"{FAMILY_NAMES[version]:6} default via <next hop learned from the kernel, at apply> "
                                 f"dev {uplink.interface} table {route.table}{f' realm {route.realm}' if route.realm else ''}")
    for uplink in plan.uplinks:
        lines.append(f"       <main's connected routes, copied at apply> table {uplink.table}")
        if uplink.bound_table is not None:
            lines.append(f"       <main's inet connected routes, copied at apply> table {uplink.bound_table}")
    lines += ["", "# sysctls"]
    lines += [f"{s.name} = {s.value}" for s in plan.sysctls]
    return "\n".join(lines) + "\n"
