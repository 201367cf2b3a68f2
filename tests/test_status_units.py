"""What status reads off a table: groups' active members and effective weights, policy targets,
and how the report becomes problems (no kernel: compiled plans stand in for live listings)."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_compile import model_of

from markroute.commands.status import problems
from markroute.compile import UplinkAvailability, compile_plan
from markroute.kernel.groups import group_chains, policy_targets
from markroute.kernel.state import DaemonRecord, UplinkRecord
from markroute.kernel.status import StatusReport, group_statuses

CONFIG = """
uplinks:
  a: {interface: eth0, gateway: 192.0.2.1}
  b: {interface: eth1, gateway: 198.51.100.1}
groups:
  primary: {failover: [a, b]}
  spread: {balance: {a: 1, b: 3}}
policies:
  - {name: web, dport: 443, proto: tcp, via: spread}
  - {name: rest, via: primary}
  - {name: local, to: 10.0.0.0/8, via: main}
"""


@pytest.mark.parametrize("availability, active, weights, stranded", [
    (UplinkAvailability(), {"a": 1}, {"a": 1, "b": 3}, False),
    (UplinkAvailability(down=frozenset({"a"})), {"b": 1}, {"b": 1}, False),
    (UplinkAvailability(weight_factor={"a": 0.25}), {"a": 1}, {"a": 1, "b": 12}, False),
    (UplinkAvailability(down=frozenset({"a", "b"})), {}, {}, True),
])
def test_groups_are_read_off_their_chains(tmp_path: Path, availability: UplinkAvailability, active: dict[str, int],
                                          weights: dict[str, int], stranded: bool) -> None:
    plan = compile_plan(model_of(tmp_path, CONFIG), availability)
    reached = group_chains(plan.nft)
    assert reached["primary"].weights == active and not reached["primary"].balanced
    assert reached["spread"].weights == weights
    assert reached["primary"].last_resort_only is stranded and reached["spread"].last_resort_only is stranded


def test_policy_targets_and_group_statuses(tmp_path: Path) -> None:
    plan = compile_plan(model_of(tmp_path, CONFIG), UplinkAvailability(down=frozenset({"a"})))
    assert policy_targets(plan.nft) == {"web": "spread", "rest": "primary", "local": "main"}
    record = DaemonRecord(1, 0.0, 1, {"a": UplinkRecord("down", 50.0), "b": UplinkRecord("up", 10.0)})
    statuses = {g.name: g for g in group_statuses(list(plan.groups), list(plan.nft), record)}
    assert statuses["primary"].active == "b" and statuses["primary"].why == "a down"
    assert statuses["primary"].changed == 50.0
    assert [(m.name, m.weight, m.effective, m.state) for m in statuses["spread"].members] == [
        ("a", 1, 0, "down"), ("b", 3, 1, "up")]


def test_problems_carry_one_exit_code_per_kind(tmp_path: Path) -> None:
    plan = compile_plan(model_of(tmp_path, CONFIG), UplinkAvailability(down=frozenset({"a", "b"})))
    groups = group_statuses(list(plan.groups), list(plan.nft), None)
    report = StatusReport(namespace=None, applied=True, applied_at=None, drift=("rule 10000 is missing",),
                          groups=groups)
    listed = problems(report, [])
    assert [(p.kind, p.exit_code) for p in listed] == [("drift", 3), ("group", 0), ("group", 0)]
    assert report.to_json()["version"] == 1
