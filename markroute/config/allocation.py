"""Marks and routing tables for the uplinks, handed out over all of them at once.

Pinned values (`mark:`, `table:`) are claimed first so that the free uplinks, taken in
the order written, never get a value some later uplink pinned.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from markroute import marks
from markroute.config.uplinks import Draft
from markroute.diagnostics import Diagnostics
from markroute.model import Settings, Uplink
from markroute.values import BOUND_TABLE_OFFSET, FOREIGN_TABLES, RESERVED_TABLES


@dataclass
class Allocated:
    """The uplinks with their mark and table, and those left without a mark."""

    uplinks: dict[str, Uplink] = field(default_factory=dict)
    broken: set[str] = field(default_factory=set)


def allocate(diag: Diagnostics, drafts: list[Draft], settings: Settings) -> Allocated:
    """Give every uplink a mark and a table: pinned ones first, then the free ones in order."""
    mask = settings.mark_mask
    indices = marks.uplink_marks(mask)  # a range: a 32-bit mask allows billions, never list them
    first, last = marks.value(mask, indices[0]), marks.value(mask, indices[-1])
    foreign = marks.foreign_values(mask)
    used_marks: dict[int, str] = {}
    used_tables: dict[int, str] = {}
    for name, fields, _ in drafts:
        if "pinned_mark" in fields:
            mark, where = fields["pinned_mark"]
            if mark & ~mask or mark == 0:
                diag.error(where, f"mark {mark:#x} of '{name}' does not fit mark_mask {mask:#x}",
                           f"use a non-zero value made only of the mask's bits, e.g. {first:#x}")
            elif mark >> marks.shift(mask) not in indices:
                diag.error(where, f"mark {mark:#x} is reserved for markroute's unreachable/blackhole rules",
                           f"pick one of {first:#x}-{last:#x}")
            elif mark in used_marks:
                diag.error(where, f"mark {mark:#x} of '{name}' is already used by '{used_marks[mark]}'")
            else:
                used_marks[mark] = name
        if "pinned_table" in fields:
            table, where = fields["pinned_table"]
            if table in used_tables:
                diag.error(where, f"table {table} of '{name}' is already used by '{used_tables[table]}'")
            else:
                used_tables[table] = name
            if table in FOREIGN_TABLES:
                diag.warning(where,
                             f"table {table} is the one {FOREIGN_TABLES[table]} fills with its own routes",
                             "if it runs here, pick another table id")
    free_marks = (
        m for m in (marks.value(mask, i) for i in indices) if m not in used_marks and m not in foreign
    )
    next_table = settings.table_base
    allocated = Allocated()
    for name, fields, _ in drafts:
        mark = fields.pop("pinned_mark", (None, None))[0]
        table = fields.pop("pinned_table", (None, None))[0]
        if mark is None:
            mark = next(free_marks, None)
            if mark is None:
                diag.error(fields["where"], f"no mark left in mark_mask {mask:#x} for '{name}'",
                           "widen mark_mask")
                allocated.broken.add(name)
                continue
        if table is None:
            while next_table in used_tables or next_table in RESERVED_TABLES or next_table in FOREIGN_TABLES:
                next_table += 1
            table = next_table
            used_tables[table] = name
        allocated.uplinks[name] = Uplink(name=name, mark=mark, table=table, **fields)
    _bound_tables_apart(diag, drafts, allocated)
    return allocated


def _bound_tables_apart(diag: Diagnostics, drafts: list[Draft], allocated: Allocated) -> None:
    """No uplink's table may be another's bound table (`compile.bound`: its table + 0x10000),
    or the router's bound sockets and that uplink's traffic would share routes."""
    owners = {u.table: u.name for u in allocated.uplinks.values()}
    for name, fields, _ in drafts:
        uplink = allocated.uplinks.get(name)
        if uplink is None:
            continue
        other = owners.get(uplink.table - BOUND_TABLE_OFFSET)
        if other is not None:
            diag.error(fields["where"], f"table {uplink.table} of '{name}' is where '{other}' keeps its bound table "
                       f"(table {uplink.table - BOUND_TABLE_OFFSET} + {BOUND_TABLE_OFFSET}, for sockets bound to its "
                       "address)", "pick another table id")
