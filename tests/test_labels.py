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
    """The label bits a rule sets, as one 128-bit value (nftables ORs the bits of `ct label set A | B` in)."""
    value = 0
    for expr in rule["expr"]:
        if "mangle" in expr and expr["mangle"]["key"] == {"ct": {"key": "label"}}:
            value |= bit_value(expr["mangle"]["value"])
    return value


def bit_value(value: Any) -> int:
    """A `ct label set` value as bits: a bit number, or `{"|": [a, b]}` nested as nft lists it."""
    if isinstance(value, int):
        return 1 << value
    return sum(bit_value(part) for part in value["|"])


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


def test_a_decision_is_one_label_statement_whatever_its_number_of_bits(tmp_path: Path) -> None:
    """One `ct label set A | B | C` per decision: the kernel updates the labels once, not once per bit."""
    plan = plan_of(tmp_path, UPLINKS + "policies:\n" + "".join(
        f"  - {{name: p{n}, from: 10.{n}.0.0/16, via: a}}\n" for n in range(1, 8)))
    for rule in objects(plan, "rule"):
        if rule.get("comment", "").startswith(("policy ", "ingress ")):
            sets = [e for e in rule["expr"] if "mangle" in e and e["mangle"]["key"] == {"ct": {"key": "label"}}]
            assert len(sets) == 1, rule["comment"]
    seven = next(r for r in objects(plan, "rule") if r.get("comment") == "policy p7")
    assert labels.decode(written(seven)) == Decision("policy", 7), "bits 0, 1, 2 and the policy flag"
