"""The `policies:` section: which traffic goes via which uplink or group, first match wins.

Read last, since a policy names uplinks, groups and (through its match) sets. A policy
whose `via` is an uplink or group that was itself wrong is skipped without a second report.
A `via: {failover: [...]}` is read as a group of the policy's own (`read_inline_group`).
"""

from __future__ import annotations

from dataclasses import replace

from markroute.config import groupoptions
from markroute.config.groups import read_group
from markroute.config.packetlog import read_log
from markroute.config.reader import MatchReader, Reader, suggest
from markroute.config.source import Node
from markroute.diagnostics import Where
from markroute.model import SPECIAL_TARGETS, Group, Model, Policy, Uplink
from markroute.values import parse_policy_name, yaml_text


def read_policies(
    reader: Reader, node: Node | None, uplinks: dict[str, Uplink], groups: dict[str, Group], broken: set[str],
    match: MatchReader, keys: tuple[str, ...],
) -> list[Policy]:
    """KEYS are every key a policy may have: name, via and the match keys (reported here, not by MATCH)."""
    if node is None or not reader.kind(node, "seq", "policies"):
        return []
    targets = list(uplinks) + list(groups) + list(SPECIAL_TARGETS)
    model = Model(uplinks, groups)  # holds GROUPS itself, so it sees the inline groups added below
    policies: list[Policy] = []
    names: dict[str, Where] = {}
    for index, element in enumerate(node.elements, start=1):
        if not reader.kind(element, "map", f"policy #{index}"):
            continue
        reader.known_keys(element, keys, f"policy #{index}")
        name = f"policy-{index}"
        if "name" in element.items:
            given = reader.scalar(element.items["name"], "name", parse_policy_name)
            if given is None:
                continue
            name = given
        if name in names:
            reader.diag.error(element.items.get("name", element).where,
                              f"policy name '{name}' is already used at line {names[name].line}")
            continue
        names[name] = element.where
        found = match(element, f"policy '{name}'", keys_checked=True)
        via = read_inline_group(reader, element, index, uplinks, groups, broken) or read_via(
            reader, element, name, targets, broken)
        if found is None or via is None or via in broken:
            continue
        logged, log = (True, None) if "log" not in element.items else read_log(
            reader, element.items["log"], f"policy '{name}'")
        if not logged:
            continue
        policy = Policy(name, found, via, element.where, log)
        if reachable_family(reader, policy, model, element.items["via"]):
            policies.append(policy)
    return policies


def read_inline_group(
    reader: Reader, element: Node, index: int, uplinks: dict[str, Uplink], groups: dict[str, Group], broken: set[str],
) -> str | None:
    """`via: {failover: [...]}`: a group of the policy's own, added to GROUPS (or, when invalid, to
    BROKEN, so the policy is skipped without a second report); its name, or None for a plain via."""
    node = element.items.get("via")
    if node is None or node.kind != "map":
        return None
    name = groupoptions.inline_group_name(index)
    group = read_group(reader, name, node.where, node, uplinks, list(groups), {}, broken)
    if group is None or any(member in broken for member, _ in group.members):
        broken.add(name)
        return name
    groups[name] = replace(group, inline=True)
    return name


def read_via(reader: Reader, element: Node, name: str, targets: list[str], broken: set[str]) -> str | None:
    if "via" not in element.items:
        reader.diag.error(element.where, f"policy '{name}' has no 'via'", "add via: UPLINK, GROUP or main")
        return None
    via = reader.scalar(element.items["via"], "via", yaml_text)
    if via is None or via in broken:
        return None
    if via not in targets:
        reader.diag.error(element.items["via"].where, f"unknown uplink or group '{via}' in policy '{name}'",
                          suggest(via, targets) or f"known: {', '.join(targets)}")
        return None
    return via


def reachable_family(reader: Reader, policy: Policy, model: Model, via: Node) -> bool:
    """A policy matching only one family must lead to an uplink with a gateway of that family."""
    if policy.match.versions & model.target_versions(policy.via):
        return True
    family = "IPv6" if policy.match.versions == {6} else "IPv4"
    reader.diag.error(via.where,
                      f"policy '{policy.name}' matches only {family} but '{policy.via}' has no {family} gateway",
                      f"add gateway{'6' if family == 'IPv6' else ''}: to the uplink or pick another via")
    return False
