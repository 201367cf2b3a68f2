"""Fingerprints of a plan, recorded at apply to tell "same config" from "changed config"."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from markroute.plan import Plan


def of(data: Any) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


def plan_digest(plan: Plan) -> str:
    return of(plan.to_json())


def nft_digest(plan: Plan) -> str:
    return of(plan.nft_document())
