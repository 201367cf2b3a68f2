"""Address lists in rules: a few addresses inline, `sets:` entries and long lists as named sets.

The compiler keeps one `NamedSets` per plan, so a list used by several rules becomes one
named nft set, declared once; `markroute.match` asks it for the value of each `from`/`to`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from markroute.model import Addresses, DynamicSet
from markroute.plan import nftjson as nj

Expr = dict[str, Any]
INLINE_LIMIT = 16


class NamedSets:
    """The named sets of one table, created on first use, in the order they were first used."""

    def __init__(self, table: str, dynamic: Mapping[str, DynamicSet] | None = None) -> None:
        self.table = table
        self.declared: dict[str, Expr] = {}  # name -> nft set object, for the plan
        self.names: dict[tuple[Any, int], str] = {}
        self.cgroups: dict[tuple[tuple[str, ...], int], str] = {}
        self.dynamic = dict(dynamic or {})

    def declare_dynamic(self) -> None:
        """Every dynamic set, for both families, used or not: whoever fills it needs it to exist.

        Their kernel names are fixed, `NAME_v4` and `NAME_v6`: resolvers and scripts are
        configured with them.
        """
        for name, dynamic in self.dynamic.items():
            for version in (4, 6):
                set_name = dynamic_set_name(name, version)
                self.names[(name, version)] = set_name
                self.declared[set_name] = nj.dynamic_set(
                    self.table, set_name, nj.ADDRESS_SET_TYPES[version], dynamic.timeout)

    def address_value(self, addresses: Addresses, version: int) -> Any:
        """An anonymous set of few addresses, or `@name` of the named set holding them."""
        if addresses.dynamic:
            return f"@{self.names[(addresses.set_name, version)]}"
        intervals = addresses.addresses.family(version)
        if addresses.set_name is None and len(intervals) <= INLINE_LIMIT:
            return nj.setvalue([nj.address_element(version, iv) for iv in intervals])
        key = (addresses.set_name or intervals, version)
        if key not in self.names:
            # user set names start with a letter, so generated ones start with '_'
            name = f"{addresses.set_name or f'_list{len(self.declared) + 1}'}_v{version}"
            self.names[key] = name
            elements = nj.AddressElements(version, intervals)
            self.declared[name] = nj.named_set(self.table, name, nj.ADDRESS_SET_TYPES[version], elements)
        return f"@{self.names[key]}"

    def cgroup_value(self, paths: tuple[str, ...], level: int) -> str:
        """`@name` of the set of cgroup PATHS (all of depth LEVEL), one set per distinct list."""
        if (paths, level) not in self.cgroups:
            name = nj.cgroup_set_name(len(self.cgroups) + 1, level)
            self.cgroups[(paths, level)] = name
            self.declared[name] = nj.cgroup_set(self.table, name, paths)
        return f"@{self.cgroups[(paths, level)]}"


def dynamic_set_name(name: str, version: int) -> str:
    """The kernel name of dynamic set NAME's IPv4 or IPv6 half: documented, stable."""
    return f"{name}_v{version}"
