"""Whether the applied table sends a `markroute exec` group's connections anywhere (`compile/execs.py`)."""

from __future__ import annotations

from typing import Any

from markroute.kernel import KernelError, nft

COMMENT = "markroute exec"


def pinned_gids(table: str) -> set[int]:
    """The socket group ids the live table's exec rule knows; KeyError-free: empty when there is none."""
    structure = nft.table_structure(table)
    if structure is None:
        raise KernelError(f"markroute is not applied here (no table inet {table})")
    found: set[int] = set()
    for obj in structure:
        rule = obj.get("rule")
        if rule is None or rule.get("comment") != COMMENT:
            continue
        for expr in rule["expr"]:
            found |= _keys(expr.get("vmap"))
    return found


def _keys(vmap: dict[str, Any] | None) -> set[int]:
    if not vmap:
        return set()
    return {int(key) for key, _ in vmap["data"]["set"]}
