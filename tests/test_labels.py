"""The ct label encoding of decisions (`plan.labels`) and where the compiler writes it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from test_compile import objects, plan_of

from markroute.plan import labels
from markroute.plan.labels import Decision

UPLINKS = """
uplinks:
  a: {interface: eth0, gateway: 192.0.2.1}
  b: {interface: eth1, gateway: 198.51.100.1}
"""


def written(rule: dict[str, Any]) -> int:
    """The label bits a rule sets, as one 128-bit value (nftables ORs each bit in)."""
    value = 0
    for expr in rule["expr"]:
        if "mangle" in expr and expr["mangle"]["key"] == {"ct": {"key": "label"}}:
            value |= 1 << expr["mangle"]["value"]
    return value


@pytest.mark.parametrize("decision", [Decision("policy", 1), Decision("policy", 1000), Decision("ingress", 3),
                                      Decision("policy", labels.NUMBER_LIMIT - 1)])
def test_every_decision_reads_back_from_its_bits(decision: Decision) -> None:
    value = sum(1 << bit for bit in labels.bits(decision))
    assert labels.decode(value) == decision
    assert value & ~labels.OURS == 0, "only markroute's label bits"
    assert labels.decode(value | 1 | 1 << 40) == decision, "other software's bits do not disturb it"


def test_no_bits_no_decision_and_numbers_out_of_range_refused() -> None:
    assert labels.decode(0) is None and labels.decode(1 << labels.POLICY_BIT) is None
    with pytest.raises(ValueError):
        labels.bits(Decision("policy", labels.NUMBER_LIMIT))


def test_each_policy_rule_and_merged_policy_chain_records_its_number(tmp_path: Path) -> None:
    policies = "".join(f"  - {{name: p{n}, dport: {1000 + n}, proto: tcp, via: {'ab'[n % 2]}}}\n" for n in range(1, 7))
    plan = plan_of(tmp_path, UPLINKS + "policies:\n" + policies + "  - {name: last, from: 10.0.0.0/8, via: a}\n")

    assert any(r["chain"].startswith("pol_") for r in objects(plan, "rule")), "the dport run is merged into a map"
    recorded: dict[str, Decision | None] = {}
    for rule in objects(plan, "rule"):
        if rule.get("comment", "").startswith(("policy ", "ingress ")):
            recorded[rule["comment"]] = labels.decode(written(rule))
    assert {name: d for name, d in recorded.items() if name.startswith("policy ")} == {
        f"policy {name}": Decision("policy", n) for n, name in enumerate(plan.policies, 1)}
    marks = {u.name: u.mark for u in plan.uplinks}
    shift = (plan.mask & -plan.mask).bit_length() - 1
    assert recorded["ingress a"] == Decision("ingress", marks["a"] >> shift)
    assert recorded["ingress b"] == Decision("ingress", marks["b"] >> shift)
