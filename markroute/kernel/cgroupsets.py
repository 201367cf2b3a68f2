"""Keeping cgroup sets true while cgroups come and go (`markroute run`), and what `status` says of them.

nft stores a cgroup's id, resolved from its path when the element was loaded; a service
that restarts gets a new cgroup with a new id, and a path that did not exist at apply
was left out (`kernel/cgroups.py`). `keep` compares, for each cgroup set of the applied
table, the paths that exist now with what nft lists (a live element lists as its path,
a stale one as a number) and, where they differ, empties the set and adds the present
paths in one transaction: packets never see a present cgroup missing from it.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from markroute.kernel import cgroups, nft
from markroute.plan.nftjson import FAMILY, is_cgroup_set

Obj = dict[str, Any]


@dataclass(frozen=True)
class CgroupPresence:
    """One configured cgroup path and whether it exists now (`status`)."""

    path: str
    exists: bool


def configured(objects: Iterable[Obj]) -> dict[str, tuple[str, ...]]:
    """Each cgroup set of a plan with its configured paths."""
    return {obj["set"]["name"]: tuple(obj["set"].get("elem", ())) for obj in objects
            if "set" in obj and is_cgroup_set(obj["set"])}


def paths(objects: Iterable[Obj]) -> list[str]:
    """Every configured cgroup path of a plan, once each, sorted (the state record keeps them for `status`)."""
    return sorted({path for listed in configured(objects).values() for path in listed})


def presence(paths: Iterable[str]) -> list[CgroupPresence]:
    """Whether each path names a cgroup now; none does when cgroup2 is not where nft looks."""
    where = cgroups.cgroup2_place()
    return [CgroupPresence(path, where is not None and cgroups.exists(path, where)) for path in paths]


def ids(sets: dict[str, tuple[str, ...]]) -> dict[str, int | None]:
    """Each configured path's cgroup id now (the directory's inode, what nft stores), None when absent.

    Equal ids mean no cgroup came, went or was re-created: a stat per path, where `keep`
    lists every set through nft."""
    where = cgroups.cgroup2_place()
    found: dict[str, int | None] = {}
    for path in sorted({path for listed in sets.values() for path in listed}):
        try:
            found[path] = os.stat(os.path.join(cgroups.NFT_CGROUP_ROOT, cgroups.kernel_path(path, where))).st_ino \
                if where is not None else None
        except OSError:
            found[path] = None
    return found


def keep(table: str, sets: dict[str, tuple[str, ...]]) -> set[str]:
    """Bring the cgroup SETS of table `inet TABLE` to the paths that exist now; the paths present.

    One transaction for all sets that differ, none when they all hold what they should.
    """
    where = cgroups.place()
    present: set[str] = set()
    commands: list[Obj] = []
    for name, paths in sets.items():
        here = [path for path in paths if cgroups.exists(path, where)]
        present.update(here)
        wanted = {cgroups.kernel_path(path, where) for path in here}
        listed = [obj["set"] for obj in nft.list_set(table, name)]
        if listed and set(listed[0].get("elem", [])) == wanted:
            continue
        reference = {"family": FAMILY, "table": table, "name": name}
        commands.append({"flush": {"set": reference}})
        if wanted:
            commands.append({"add": {"element": {**reference, "elem": sorted(wanted)}}})
    if commands:
        nft.run_batch(commands)
    return present
