"""Objects of other programs where markroute is about to put its own.

markroute owns what carries its protocol (`plan.RULE_PROTOCOL`) and the table it
recorded. A route someone else left in an uplink's table (a default route with another
gateway wins over markroute's, which is appended), an ip rule inside markroute's priority
band, or a table `inet markroute` that no record says markroute created would change what
marked traffic does without anyone being told. `apply` refuses them by name; with
`--force` it takes them over (deletes them: markroute's own objects replace them) and
says so. `status` reports them as drift.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from markroute.kernel import KernelError, nftnetlink
from markroute.kernel.ipjson import FR_ACT_TO_TBL, route_json, rule_json, table_of
from markroute.kernel.rpdb import Rpdb
from markroute.kernel.rtnetlink import RtnetlinkError
from markroute.kernel.state import State
from markroute.plan import BAND_WIDTH, RULE_PROTOCOL, Plan, owned_tables


@dataclass(frozen=True)
class Foreign:
    """One foreign object: what it is, in words, and the netlink message to delete it with (None: a table)."""

    kind: str  # "route", "rule", "table"
    text: str
    message: Any = None


def found(rpdb: Rpdb, tables: set[int], priority: int, table_name: str | None = None) -> list[Foreign]:
    """Foreign routes in TABLES, foreign rules in the band at PRIORITY and, if TABLE_NAME, that table."""
    result = [
        Foreign("route", _route_text(rpdb, msg), msg)
        for msg in rpdb.route_messages()
        if msg["proto"] != RULE_PROTOCOL and table_of(msg, "RTA_TABLE") in tables
    ]
    band = range(priority, priority + BAND_WIDTH)
    result += [
        Foreign("rule", _rule_text(msg), msg)
        for msg in rpdb.rule_messages()
        if msg.get_attr("FRA_PROTOCOL") != RULE_PROTOCOL and (msg.get_attr("FRA_PRIORITY") or 0) in band
    ]
    if table_name is not None and nftnetlink.table_exists(table_name):
        result.append(Foreign("table", f"nftables table inet {table_name}"))
    return result


def in_the_way(plan: Plan, previous: State | None, rpdb: Rpdb) -> list[Foreign]:
    """What of others' is where PLAN goes: its uplinks' tables, its rule band, its nftables table.

    The table is foreign when no record names it (PREVIOUS None, or a record of another table).
    """
    unrecorded = previous is None or previous.table_name != plan.table_name
    return found(rpdb, owned_tables(plan.uplinks), plan.rule_priority, plan.table_name if unrecorded else None)


def in_recorded_space(recorded: State, rpdb: Rpdb) -> list[str]:
    """Drift lines for foreign routes and rules where the applied state put markroute's."""
    return [f"foreign {f.kind} where markroute's belong: {f.text}"
            for f in found(rpdb, owned_tables(recorded.uplinks), recorded.rule_priority)]


def refusal(objects: list[Foreign]) -> str:
    names = "; ".join(f.text for f in objects)
    return (f"not markroute's, but where markroute is about to install its own: {names}. Remove "
            f"{'it' if len(objects) == 1 else 'them'}, or run `markroute apply --force` to take "
            f"{'it' if len(objects) == 1 else 'them'} over")


def adopt(objects: list[Foreign], rpdb: Rpdb) -> list[str]:
    """Delete foreign routes and rules (the table is replaced by apply itself); a warning for each."""
    warnings: list[str] = []
    for item in objects:
        if item.kind == "route":
            _delete(rpdb.rtnl.route, _route_fields(item.message), item.text)
        elif item.kind == "rule":
            _delete(rpdb.rtnl.rule, _rule_fields(item.message), item.text)
        warnings.append(f"--force: took over {item.text} (replaced by markroute's)")
    return warnings


def _delete(method: Any, fields: dict[str, Any], text: str) -> None:
    try:
        method("del", **fields)
    except RtnetlinkError as exc:
        raise KernelError(f"cannot delete {text}: {exc.detail}") from exc


def _route_fields(msg: Any) -> dict[str, Any]:
    fields: dict[str, Any] = {"family": msg["family"], "table": table_of(msg, "RTA_TABLE"), "dst_len": msg["dst_len"],
                              "tos": msg["tos"], "proto": msg["proto"], "type": msg["type"]}
    for attr, key in (("RTA_DST", "dst"), ("RTA_OIF", "oif"), ("RTA_GATEWAY", "gateway"), ("RTA_PRIORITY", "priority")):
        if msg.get_attr(attr) is not None:
            fields[key] = msg.get_attr(attr)
    return fields


def _rule_fields(msg: Any) -> dict[str, Any]:
    fields: dict[str, Any] = {"family": msg["family"], "priority": msg.get_attr("FRA_PRIORITY") or 0,
                              "action": msg["action"], "src_len": msg["src_len"], "dst_len": msg["dst_len"]}
    if msg["action"] == FR_ACT_TO_TBL:
        fields["table"] = table_of(msg, "FRA_TABLE")
    for attr, key in (("FRA_FWMARK", "fwmark"), ("FRA_FWMASK", "fwmask"), ("FRA_SRC", "src"), ("FRA_DST", "dst"),
                      ("FRA_PROTOCOL", "protocol")):
        if msg.get_attr(attr) is not None:
            fields[key] = msg.get_attr(attr)
    return fields


def _route_text(rpdb: Rpdb, msg: Any) -> str:
    data = route_json(msg, rpdb.ifname)
    words = [data.pop("dst")] + [f"{k} {v}" for k, v in data.items() if k not in ("family", "flags") and v is not None]
    return f"route {' '.join(words)}"


def _rule_text(msg: Any) -> str:
    data = rule_json(msg)
    priority = data.pop("priority")
    words = [f"{k} {v}" if v is not None else k for k, v in data.items() if k != "family"]
    return f"ip rule {priority}: {' '.join(words)}"

