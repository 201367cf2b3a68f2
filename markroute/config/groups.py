"""The `groups:` section: balance and failover groups of uplinks and other groups.

Groups may name groups declared later, so members are checked against every declared
name, then groups built on a broken uplink or group, and groups in a cycle, are dropped
(each cycle reported once). Dropped groups are named in `broken` for the policies.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from markroute.config import groupoptions
from markroute.config.reader import Reader, suggest
from markroute.config.source import Node
from markroute.diagnostics import Where
from markroute.model import Group, Uplink
from markroute.values import parse_weight, yaml_text

References = dict[tuple[str, str], Where]  # (group, member) -> where the member is named


@dataclass
class GroupSection:
    """The valid groups, and the names of the invalid ones."""

    groups: dict[str, Group] = field(default_factory=dict)
    broken: set[str] = field(default_factory=set)


def read_groups(reader: Reader, node: Node | None, uplinks: dict[str, Uplink], broken_uplinks: set[str]) -> GroupSection:
    section = GroupSection()
    if node is None or not reader.kind(node, "map", "groups"):
        return section
    broken = set(broken_uplinks)  # grows by the broken groups; a member named here was reported already
    declared = list(node.items)
    groups = section.groups
    references: References = {}
    for key, value in node.items.items():
        where = node.key_where[key]
        if not reader.name(key, where, "a group"):
            continue
        if key in uplinks or key in broken:
            reader.diag.error(where, f"'{key}' names both an uplink and a group", "rename one of them")
            continue
        group = read_group(reader, key, where, value, uplinks, declared, references, broken)
        if group is None:
            broken.add(key)
        else:
            groups[key] = group
    drop_broken_members(groups, broken)
    cycles(reader, groups, references, broken)
    section.broken = broken - broken_uplinks
    return section


def read_group(
    reader: Reader, name: str, where: Where, node: Node, uplinks: dict[str, Uplink], declared: list[str],
    references: References, broken: set[str],
) -> Group | None:
    if not reader.kind(node, "map", f"group '{name}'"):
        return None
    reader.known_keys(node, groupoptions.GROUP_KEYS, f"group '{name}'")
    kinds = [k for k in ("balance", "failover") if k in node.items]
    if len(kinds) != 1:
        reader.diag.error(node.where, f"group '{name}' needs exactly one of 'balance' or 'failover'",
                          "balance: {a: 1, b: 1} spreads connections, failover: [a, b] uses the first usable")
        return None
    kind = kinds[0]
    members = group_members(reader, name, kind, node.items[kind])
    split = groupoptions.split_last_resort(reader, name, members) if kind == "failover" and members else None
    if kind == "failover" and members and split is None:
        return None
    members, ending = split if split is not None else (members, None)
    valid, last_resort = groupoptions.group_last_resort(reader, name, node, ending)
    failback = groupoptions.failback(reader, name, node, kind)
    if members is None or not valid or failback is None:
        return None
    if not members:
        reader.diag.error(node.items[kind].where, f"group '{name}' has no members")
        return None
    ok = True
    known = list(uplinks) + [g for g in declared if g != name]
    for member, _, member_where in members:
        references[(name, member)] = member_where
        if member == name:
            reader.diag.error(member_where, f"group '{name}' contains itself")
            ok = False
        elif member not in uplinks and member not in declared and member not in broken:
            reader.diag.error(member_where, f"unknown uplink or group '{member}' in group '{name}'",
                              suggest(member, known) or f"known: {', '.join(known)}")
            ok = False
    if not ok:
        return None
    return Group(name, kind, tuple((m, w) for m, w, _ in members), where,  # type: ignore[arg-type]
                 last_resort, failback)


def group_members(reader: Reader, name: str, kind: str, node: Node) -> list[tuple[str, int, Where]] | None:
    """(member, weight, where) in the order written; failover members weigh 1."""
    members: list[tuple[str, int, Where]] = []
    if kind == "balance":
        if node.kind == "seq":
            reader.diag.error(node.where, f"balance of '{name}' must be a mapping of members to weights, not a list",
                              "give every member a weight: {a: 1, b: 1}")
            return None
        if not reader.kind(node, "map", f"balance of '{name}'"):
            return None
        weights = [(m, reader.scalar(w, f"weight of '{m}'", parse_weight)) for m, w in node.items.items()]
        if any(weight is None for _, weight in weights):
            return None
        return [(m, w, node.key_where[m]) for m, w in weights if w is not None]
    if not reader.kind(node, "seq", f"failover of '{name}'"):
        return None
    seen: set[str] = set()
    ok = True
    for element in node.elements:
        member = reader.scalar(element, "a failover member", yaml_text)
        if member is None:
            ok = False
        elif member in seen:
            reader.diag.error(element.where, f"'{member}' is listed twice in group '{name}'")
            ok = False
        else:
            seen.add(member)
            members.append((member, 1, element.where))
    return members if ok else None


def drop_broken_members(groups: dict[str, Group], broken: set[str]) -> None:
    """A group built on a broken uplink or group is broken too; the root cause was reported."""
    changed = True
    while changed:
        changed = False
        for name, group in list(groups.items()):
            if any(member in broken for member, _ in group.members):
                del groups[name]
                broken.add(name)
                changed = True


def cycles(reader: Reader, groups: dict[str, Group], references: References, broken: set[str]) -> None:
    """Report each cycle once, at the reference that closes it, and drop its groups."""
    state: dict[str, int] = {}
    cyclic: set[str] = set()

    def visit(name: str, path: list[str]) -> None:
        state[name] = 1
        for member, _ in groups[name].members:
            if member not in groups:
                continue
            if state.get(member) == 1:
                cycle = path[path.index(member):] + [member]
                cyclic.update(cycle)
                reader.diag.error(references[(name, member)], f"groups form a cycle: {' -> '.join(cycle)}",
                                  "a group may not contain itself, directly or through other groups")
            elif member not in state:
                visit(member, path + [member])
        state[name] = 2

    for name in groups:
        if name not in state:
            visit(name, [name])
    for name in cyclic:
        del groups[name]
        broken.add(name)
    drop_broken_members(groups, broken)
