"""What one match key is made of: every part a stage of markroute needs to handle it.

A `MatchKey` gathers in one place what used to be spread over the validator, the
compiler, the policy maps, the warnings and the simulator. All its parts are required
fields without defaults, so a key that forgets one does not even construct; where a
part does not apply, the key says so explicitly (`Unmerged`, `None` for a constraint).
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from markroute.model import Addresses, Match
from markroute.plan import nftjson as nj
from markroute.values import Interval

Expr = dict[str, Any]
Problem = tuple[str, str | None]  # (message, hint) of a config error at the key
Read = Literal["addresses", "many", "one"]


class AddressSets(Protocol):
    """What a key asks of the compiler: the nft value for an address list (inline or a named
    set), and the named set holding cgroup paths of one depth (`match/cgroup.py`)."""

    def address_value(self, addresses: Addresses, version: int) -> Any: ...

    def cgroup_value(self, paths: tuple[str, ...], level: int) -> str: ...


class Unmerged(enum.Enum):
    """Why a key has no verdict-map field."""

    RULE = "a policy using this key stays a rule of its own"
    CHAIN = "the key picks the chain (forwarded or local) and tests no packet field"


MERGE_REFUSED = object()  # what `MapField.values` returns when this match cannot be merged


@dataclass(frozen=True)
class MapField:
    """A key's part of a merged policy map's key (`markroute.compile.policymaps`).

    `values` gives the key's values as intervals of numbers for one IP family (None when
    the match leaves the key out, `MERGE_REFUSED` when the policy must stay a rule);
    `expression` is the packet field the map reads and `element` writes one interval back
    as an nft map key. `joinable`: neighbouring values may become one range. `alone`: the
    key merges only as the map's single field.
    """

    name: str
    values: Callable[[Match, int], Any]
    expression: Callable[[int | None], Expr]
    element: Callable[[int | None, Interval], Any]
    joinable: bool
    alone: bool


@dataclass(frozen=True)
class MatchKey:
    """One YAML match key and everything config, compile, warnings and the simulator do with it.

    * `key`, `field`: the YAML key and the `Match` attribute it fills.
    * `read`: how the config reads the YAML node: `addresses` (with `@set` names), `many`
      (one value or a list, each by `parse`, then `collect`), `one` (a single value by `parse`).
    * `parse`: one YAML value to plain data; raises ValueError with a message for the user.
    * `collect`: the parsed values (one for `read == "one"`) to the `Match` field's value.
    * `needs`: a combination the key requires of the rest of the match, or None.
    * `applies(value, local)`: whether a match with this value can see router-originated
      (local=True) or forwarded (local=False) traffic.
    * `in_not`, `in_ingress`: None where the key is allowed there, else the error (message, hint).
    * `compared`: the value the key really compares in a match (ports imply protocols).
    * `covers(a, b)`: every packet b's value lets through, a's does too (a's value is not None).
    * `conditions(match, version, sets)`: nft expressions of a plain rule; `version` is None
      for a rule serving both families.
    * `family_specific`: the expressions differ between IPv4 and IPv6 (one rule each).
    * `map_field`: the key's field in a merged policy map, or why there is none.
    * `flow_field`, `trace_option`: the simulator's `Flow` attribute and `trace` option.
    """

    key: str
    field: str
    read: Read
    parse: Callable[[Any], Any]
    collect: Callable[[list[Any]], Any]
    needs: Callable[[Match], Problem | None] | None
    applies: Callable[[Any, bool], bool]
    in_not: Problem | None
    in_ingress: Problem | None
    compared: Callable[[Match], Any]
    covers: Callable[[Any, Any], bool]
    conditions: Callable[[Match, int | None, AddressSets], list[Expr]]
    family_specific: bool
    map_field: MapField | Unmerged
    flow_field: str
    trace_option: str

    def value(self, match: Match) -> Any:
        """The key's value in `match`, None when not given."""
        return getattr(match, self.field)


def any_traffic(value: Any, local: bool) -> bool:
    """`applies` of a key that tests a field every packet has."""
    return True


def forwarded_only(value: Any, local: bool) -> bool:
    """`applies` of a key router-originated packets never satisfy (they arrive on no interface)."""
    return not (local and value)


def values_cover(a: tuple[object, ...], b: tuple[object, ...] | None) -> bool:
    """`covers` of a key holding a list of exact values."""
    return b is not None and set(b) <= set(a)


def unique(values: list[Any]) -> tuple[Any, ...]:
    """`collect` keeping the order written, without repeats."""
    return tuple(dict.fromkeys(values))


def sorted_unique(values: list[Any]) -> tuple[Any, ...]:
    return tuple(sorted(set(values)))


def exact(value: int) -> Interval:
    return value, value


def interval_value(interval: Interval) -> Any:
    """A number interval as nft JSON: the number, or a range."""
    first, last = interval
    return first if first == last else nj.span(first, last)
