"""Address lists in rules: a few addresses inline, `sets:` entries and long lists as named sets.

The compiler keeps one `NamedSets` per plan, so a list used by several rules becomes one
named nft set, declared once; `markroute.match` asks it for the value of each `from`/`to`.
"""

from __future__ import annotations

from typing import Any

from markroute.model import Addresses
from markroute.plan import nftjson as nj

Expr = dict[str, Any]
INLINE_LIMIT = 16


class NamedSets:
    """The named sets of one table, created on first use, in the order they were first used."""

    def __init__(self, table: str) -> None:
        self.table = table
        self.declared: dict[str, Expr] = {}  # name -> nft set object, for the plan
        self.names: dict[tuple[Any, int], str] = {}

    def address_value(self, addresses: Addresses, version: int) -> Any:
        """An anonymous set of few addresses, or `@name` of the named set holding them."""
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
