"""What is markroute's in a snapshot of the live system, what is foreign, and what a foreign rule does wrong.

Split from `sim.neighbours` so `apply`, `check --live` and `status` can tell that no
foreign rule could touch markroute's paths (`foreign_hands`, the usual router) without
importing the simulator: ~20 ms of an `apply`'s CPU (issue 15). The findings every
check words, simulated or not, are made of the `Finding` here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from markroute.marks import KNOWN_MARK_USERS
from markroute.plan import UplinkPlan

KERNEL_PRIORITIES = (0, 32766, 32767)  # the kernel's own ip rules (local, main, default): never foreign


@dataclass(frozen=True)
class Ours:
    """What is markroute's on this system: its table, mark bits, ip rule priorities and uplinks."""

    table: str
    mask: int
    priorities: frozenset[int]
    uplinks: tuple[UplinkPlan, ...]


@dataclass(frozen=True)
class Finding:
    """One foreign rule breaking some of markroute's paths, the same way and with the same fix.

    `subjects` are what the paths stand for ("policy NAME", "uplink NAME"); `flow` is one
    example connection of them.
    """

    kind: str  # drop | reject | reroute | fwmark | networkd | unknown
    direction: str  # original | reply
    flow: str
    table: str | None  # the foreign nftables table ("ip filter") or None for an ip rule
    chain: str | None
    rule: str | None  # the rule's text; None when the chain's policy decided
    message: str
    hint: str
    subjects: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "direction": self.direction, "subjects": list(self.subjects), "flow": self.flow,
                "table": self.table, "chain": self.chain, "rule": self.rule, "message": self.message,
                "hint": self.hint}


def foreign_hands(state: dict[str, Any], ours: Ours) -> bool:
    """Whether anything outside markroute could drop, reject or re-route its paths in STATE (a snapshot).

    `inspect` reports only a drop or reject by a chain of another nftables table, which a
    packet enters only through that table's base chains, and an ip rule outside
    markroute's band and the kernel's own priorities: without either there is nothing to
    find, and the simulation (seconds for 10,000 policies) is skipped.
    """
    for obj in state.get("nftables", {}).get("nftables", []):
        chain = obj.get("chain") if isinstance(obj, dict) else None
        if chain is not None and "hook" in chain and not in_table(obj, ours.table):
            return True
    return any(int(rule.get("priority", 0)) not in ours.priorities
               and int(rule.get("priority", 0)) not in KERNEL_PRIORITIES for rule in state.get("rules", []))


def in_table(obj: dict[str, Any], table: str) -> bool:
    """Whether a listing object (table, chain, set, rule) belongs to `inet TABLE`."""
    body = next(iter(obj.values()), None) if isinstance(obj, dict) else None
    return isinstance(body, dict) and body.get("family") == "inet" and body.get("table", body.get("name")) == table


# -- ip rules that catch markroute's marks --------------------------------------------


def unmasked_fwmark_rules(rules: list[dict[str, Any]], ours: Ours) -> list[Finding]:
    """Foreign `fwmark` rules without a mask, before markroute's band, that markroute's marks fool.

    Without a mask a rule compares all 32 bits. `not fwmark V` then matches every
    packet whose mark is not exactly V, markroute's marked packets included (wg-quick's
    `not fwmark 0xca6c table 51820` sends them into the tunnel), and `fwmark V` with
    bits inside markroute's mask stops matching the owner's packets once markroute has
    written its bits into their mark.
    """
    first = min(ours.priorities, default=0)
    found: list[Finding] = []
    for rule in rules:
        if "fwmark" not in rule or str(rule.get("protocol")) == "77":
            continue
        mask = int(str(rule.get("fwmask", "0xffffffff")), 0)
        priority = int(rule.get("priority", 0))
        if mask != 0xFFFFFFFF or priority >= first:
            continue
        value = int(str(rule["fwmark"]), 0)
        inverted = "not" in rule
        if not inverted and not value & ours.mask:
            continue
        target = rule.get("table") or rule.get("action", "")
        text = f"{priority}: {'not ' if inverted else ''}from {rule.get('src', 'all')} fwmark {value:#x} lookup {target}"
        who = _mark_owner(value)
        if inverted:
            message = (f"ip rule `{text}`{who} compares the whole mark: every packet markroute marks "
                       f"(bits {ours.mask:#x}) matches it and is looked up in table {target} "
                       f"before markroute's rules at {first}")
        else:
            message = (f"ip rule `{text}`{who} compares the whole mark, and {value:#x} has bits inside markroute's "
                       f"mask {ours.mask:#x}: packets of that program that markroute marks no longer match it")
        if inverted:
            hint = (f"if markroute's traffic should take its uplinks, set settings.rule_priority below {priority}; "
                    f"or have that program compare only its own bits (`fwmark {value:#x}/MASK`)")
        else:
            hint = f"pick a mark_mask whose bits miss {value:#x} (e.g. 0xff000000)"
        found.append(Finding("fwmark", "original", text, None, None, text, message, hint))
    return found


def _mark_owner(value: int) -> str:
    owner = next((who for who, mark, _ in KNOWN_MARK_USERS if mark == value), None)
    return f" ({owner})" if owner else ""
