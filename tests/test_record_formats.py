"""The records' shapes are frozen per format number: a field added, removed or retyped must raise it.

A markroute reads a record only in the formats it knows (`state.READABLE_FORMATS`,
`DAEMON_FORMAT`) and rejects a field it does not know. Sessions 9 and 10 added fields to
`state.json` (an uplink's `bound_table`, `connection_records`) without raising the
format, so an older markroute called the newer record damaged and asked for `down
--force`, where "written by another markroute version" was the truth. This test fails on
such a change and says what to do: raise the format, keep reading the old one, and
write the new shape down here.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Sequence
from typing import Literal, Union, get_args, get_origin

import pytest

from markroute.kernel import ha, journal, state
from markroute.plan import IpRule, Route

SHAPES: dict[tuple[str, int], list[str]] = {
    ("State", 2): [
        "plan_digest: str",
        "nft_digest: str",
        "table_name: str",
        "mask: int",
        "rule_priority: int",
        "nft_listing[]{}: Any",
        "rules[].version: int",
        "rules[].priority: int",
        "rules[].action: one of lookup, unreachable, blackhole",
        "rules[].table: int or None",
        "rules[].fwmark: int or None",
        "rules[].fwmask: int or None",
        "rules[].src: str or None",
        "routes[].version: int",
        "routes[].table: int",
        "routes[].dst: str",
        "routes[].dev: str",
        "routes[].gateway: str or None",
        "routes[].scope: one of universe, link",
        "routes[].realm: int or None",
        "sysctls_original{}: str",
        "sysctls_applied{}: str",
        "uplinks[].name: str",
        "uplinks[].interface: str",
        "uplinks[].mark: int",
        "uplinks[].table: int",
        "uplinks[].versions[]: int",
        "uplinks[].gateway: str or None",
        "uplinks[].gateway6: str or None",
        "uplinks[].source_rules: bool",
        "uplinks[].bound_table: int or None",
        "policies[]: str",
        "applied_at: str",
        "warnings[]: str",
        "nft_generation: int or None",
        "groups[].name: str",
        "groups[].kind: one of balance, failover",
        "groups[].members[].name: str",
        "groups[].members[].weight: int",
        "cgroups[]: str",
        "connection_records: bool",
    ],
    ("TableAmendment", 2): [
        "amends[]: int",
        "plan_digest: str",
        "table: may be None",
        "table.nft_digest: str",
        "table.nft_listing[]{}: Any",
        "table.nft_generation: int or None",
    ],
    ("IpRule", 2): [  # in the journal's undo steps (journal.FORMAT), as in state.json
        "version: int",
        "priority: int",
        "action: one of lookup, unreachable, blackhole",
        "table: int or None",
        "fwmark: int or None",
        "fwmask: int or None",
        "src: str or None",
    ],
    ("Route", 2): [
        "version: int",
        "table: int",
        "dst: str",
        "dev: str",
        "gateway: str or None",
        "scope: one of universe, link",
        "realm: int or None",
    ],
    ("HaRecord", 1): [
        "role: one of master, backup, fault",
        "since: float",
        "conntrackd: str or None",
        "steps[].argv[]: str",
        "steps[].code: int",
        "steps[].seconds: float",
        "steps[].output: str",
        "hold_error: str or None",
    ],
    ("DaemonRecord", 1): [
        "pid: int",
        "started: float",
        "rule_changes: int",
        "uplinks{}.state: one of up, degraded, down, unknown, waiting",
        "uplinks{}.since: float",
        "uplinks{}.rtt: float or None",
        "uplinks{}.loss: float or None",
        "uplinks{}.transitions: int",
        "uplinks{}.suppressed: bool",
        "uplinks{}.probed: bool",
        "uplinks{}.probe_bytes_per_day: int or None",
    ],
}


def shape(cls: type, prefix: str = "") -> list[str]:
    """Every field of the dataclass CLS, nested ones as dotted paths (`[]` a list's items, `{}` a dict's values)."""
    hints = typing.get_type_hints(cls)
    return [line for f in dataclasses.fields(cls) for line in _described(hints[f.name], prefix + f.name)]


def _described(kind: object, path: str) -> list[str]:
    if isinstance(kind, type) and dataclasses.is_dataclass(kind):
        return shape(kind, path + ".")
    origin, args = get_origin(kind), get_args(kind)
    if origin in (Union, types.UnionType):
        members = [a for a in args if a is not type(None)]
        optional = len(members) < len(args)
        if len(members) == 1 and not dataclasses.is_dataclass(members[0]):
            return [line + (" or None" if optional else "") for line in _described(members[0], path)]
        return ([f"{path}: may be None"] if optional else []) + \
            [line for member in members for line in _described(member, path)]
    if origin is Literal:
        return [f"{path}: one of {', '.join(map(str, args))}"]
    if origin in (list, tuple, Sequence):
        return list(dict.fromkeys(line for a in args if a is not Ellipsis for line in _described(a, path + "[]")))
    if origin is dict:
        return _described(args[1], path + "{}")
    return [f"{path}: {getattr(kind, '__name__', kind)}"]


@pytest.mark.parametrize(("record", "format_now"), [
    (state.State, state.FORMAT), (state.TableAmendment, state.FORMAT), (state.DaemonRecord, state.DAEMON_FORMAT),
    (IpRule, journal.FORMAT), (Route, journal.FORMAT), (ha.HaRecord, ha.HA_FORMAT)])
def test_a_records_shape_is_the_one_written_down_for_its_format(record: type, format_now: int) -> None:
    written_down = SHAPES.get((record.__name__, format_now))
    now = shape(record)
    assert written_down is not None and now == written_down, (
        f"{record.__name__} (format {format_now}) changed shape: raise its format (markroute/kernel/state.py, "
        "ha.py for ha.json, journal.py for the undo steps' rules and routes), "
        "keep reading the old format where the new fields have defaults (READABLE_FORMATS), and write the new "
        f"shape down in SHAPES here.\nadded: {sorted(set(now) - set(written_down or []))}\n"
        f"gone: {sorted(set(written_down or []) - set(now))}")


@dataclasses.dataclass
class Inner:
    a: int | None
    b: Literal["x", "y"]


@dataclasses.dataclass
class Outer:
    items: list[Inner]
    by_name: dict[str, Inner]
    maybe: Inner | None = None


def test_the_shape_follows_nested_records_and_optional_fields() -> None:
    """The helper itself: a change deep inside (a rule's field) is a change of the record."""
    assert shape(Outer) == ["items[].a: int or None", "items[].b: one of x, y", "by_name{}.a: int or None",
                            "by_name{}.b: one of x, y", "maybe: may be None", "maybe.a: int or None",
                            "maybe.b: one of x, y"]
