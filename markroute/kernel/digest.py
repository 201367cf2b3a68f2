"""Fingerprints of a plan, recorded at apply to tell "same config" from "changed config"."""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace
from typing import Any

from markroute.kernel import nft
from markroute.plan import Plan
from markroute.plan.nftjson import is_cgroup_set, set_elements


def of(data: Any) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


def plan_digest(plan: Plan, nft_part: str | None = None) -> str:
    """The whole plan; its nftables part by `nft_digest` (NFT_PART when the caller has it already),
    so 100,000 set elements are not serialised again."""
    return of({**replace(plan, nft=()).to_json(), "nftables": nft_part or nft_digest(plan)})


def nft_digest(plan: Plan) -> str:
    """`STRUCTURE.ELEMENTS`: STRUCTURE leaves set elements out, so apply can tell when only set contents changed.

    ELEMENTS hashes each set's packed intervals (the compiler's sets are `AddressElements`).
    A cgroup set's configured paths count as both: what nft holds of them is resolved when
    the set is loaded, so a change of paths replaces the table rather than updating elements
    or rewriting chains.
    """
    elements = hashlib.sha256()
    paths = {obj["set"]["name"]: obj["set"].get("elem", []) for obj in plan.nft if "set" in obj and is_cgroup_set(obj["set"])}
    for obj in plan.nft:
        if "set" in obj and not is_cgroup_set(obj["set"]):
            body = obj["set"]
            packed = set_elements(body).pack()
            elements.update(f"{body['name']} {len(packed)}\n".encode())
            elements.update(packed)
    if paths:
        elements.update(of(paths).encode())
        return f"{of([nft.without_elements(plan.nft), paths])}.{elements.hexdigest()}"
    return f"{of(nft.without_elements(plan.nft))}.{elements.hexdigest()}"


def same_structure(recorded: str, wanted: str) -> bool:
    """Whether two `nft_digest`s differ at most in set elements."""
    return recorded.partition(".")[0] == wanted.partition(".")[0]


def same_elements(recorded: str, wanted: str) -> bool:
    """Whether two `nft_digest`s have the same set elements."""
    return recorded.partition(".")[2] == wanted.partition(".")[2]
