"""Match keys (`from`, `to`, `proto`, ...): one module per key, one registry of them all.

Each key's module builds a `MatchKey` holding every part a stage needs: its YAML key
and `Match` field, its value parser, its nft expressions and policy-map field, its
coverage rule, its constraints and what the simulator calls it. `registry.KEYS` lists
them; config, compile, warnings and the simulator iterate it (docs/architecture.md).
"""

from markroute.match.key import MERGE_REFUSED, AddressSets, MapField, MatchKey, Unmerged
from markroute.match.registry import (
    KEYS,
    NOT,
    YAML_KEYS,
    applies,
    compared,
    conditions,
    covers,
    family_specific,
    given,
)

__all__ = [
    "KEYS", "MERGE_REFUSED", "NOT", "YAML_KEYS", "AddressSets", "MapField", "MatchKey", "Unmerged",
    "applies", "compared", "conditions", "covers", "family_specific", "given",
]
