"""Fail-closed groups in the compiled plan: their last resort, and the floor rules that keep
their uplinks' traffic out of `main` while an uplink's table is empty (kernel proof:
tests/test_failclosed_kernel.py)."""

from __future__ import annotations

from pathlib import Path

from markroute.compile import UplinkAvailability, compile_plan
from markroute.config import load_model
from markroute.model import Failback, Model
from markroute.plan import RESERVED_RULE_OFFSET, IpRule

HEAD = """
uplinks:
  isp: {interface: eth0, gateway: 192.0.2.1, nat: masquerade}
  vpn: {interface: tun0, nat: masquerade, check: {targets: [10.8.0.1]}}
  vpn2: {interface: tun1, nat: masquerade, check: {targets: [10.9.0.1]}}
"""


def model_of(tmp_path: Path, text: str) -> Model:
    path = tmp_path / "markroute.yaml"
    path.write_text(HEAD + text)
    model, diagnostics = load_model(str(path))
    assert model is not None, [d.render() for d in diagnostics]
    return model


def floor_rules(model: Model) -> set[tuple[str, int, str]]:
    """(uplink, IP version, action) of every per-uplink rule in the reserved band."""
    base = model.settings.rule_priority + RESERVED_RULE_OFFSET
    owners = {u.mark: name for name, u in model.uplinks.items()}
    plan = compile_plan(model)
    return {(owners[r.fwmark], r.version, r.action) for r in plan.rules
            if r.priority == base and r.fwmark in owners}


def group_chain(model: Model, group: str, down: frozenset[str] = frozenset()) -> list[dict[str, object]]:
    plan = compile_plan(model, UplinkAvailability(down=down))
    return [o["rule"]["expr"][-1] for o in plan.nft if "rule" in o and o["rule"]["chain"] == f"group_{group}"]


def test_a_list_ending_with_blackhole_is_a_fail_closed_group_with_floors_for_its_uplinks(tmp_path: Path) -> None:
    model = model_of(tmp_path, "groups:\n  safe: {failover: [vpn, vpn2, blackhole]}\npolicies:\n  - via: safe\n")
    assert model.groups["safe"].members == (("vpn", 1), ("vpn2", 1))
    assert model.last_resort_of("safe") == "blackhole"
    assert floor_rules(model) == {(u, v, "blackhole") for u in ("vpn", "vpn2") for v in (4, 6)}
    assert group_chain(model, "safe", frozenset({"vpn", "vpn2"})) == [{"goto": {"target": "mark_blackhole"}}]


def test_group_last_resort_key_overrides_the_global_one_for_that_group_only(tmp_path: Path) -> None:
    model = model_of(tmp_path, """
groups:
  safe: {failover: [vpn, isp], last_resort: unreachable}
  open: {failover: [vpn2, isp]}
settings: {last_resort: main}
policies:
  - {from: 192.168.1.10, via: safe}
  - via: open
""")
    assert group_chain(model, "safe", frozenset({"vpn", "isp"}))[-1] == {"goto": {"target": "mark_unreachable"}}
    assert group_chain(model, "open", frozenset({"vpn2", "isp"}))[-1] == {"accept": None}
    assert floor_rules(model) == {(u, v, "unreachable") for u in ("vpn", "isp") for v in (4, 6)}


def test_an_inline_failover_is_a_group_of_the_policy_and_unused_groups_add_no_floor(tmp_path: Path) -> None:
    model = model_of(tmp_path, """
groups:
  unused: {failover: [vpn2, blackhole]}
policies:
  - {name: p, from: 192.168.1.10, via: {failover: [vpn, blackhole], failback: {hold: 30, flows: move}}}
""")
    inline = model.groups[model.policies[0].via]
    assert inline.inline and inline.failback == Failback(30.0, "move")
    assert floor_rules(model) == {("vpn", 4, "blackhole"), ("vpn", 6, "blackhole")}


def test_without_a_fail_closed_group_the_plan_has_no_floor(tmp_path: Path) -> None:
    model = model_of(tmp_path, "groups:\n  g: {failover: [vpn, isp]}\npolicies:\n  - via: g\n")
    assert floor_rules(model) == set()
    assert not any(isinstance(r, IpRule) and r.action != "lookup" for r in compile_plan(model).rules)
