"""Policies no packet reaches and uplinks no new connection uses, found by the interpreter."""

from __future__ import annotations

import gc
from pathlib import Path

from test_compile import plan_of

from markroute.sim import offline, reachability
from markroute.sim.packet import make_flow

UPLINKS = """
uplinks:
  a: {interface: eth1, gateway: 192.0.2.1, nat: masquerade}
  b: {interface: eth2, gateway: 198.51.100.1, gateway6: "2001:db8:1::1", nat: masquerade}
"""


def test_a_policy_behind_a_broader_one_is_unreachable(tmp_path: Path) -> None:
    plan = plan_of(tmp_path, UPLINKS + """
policies:
  - {name: web, from: 10.1.0.0/16, proto: tcp, dport: [80, 443], via: a}
  - {name: lan, from: [10.1.0.0/17, 10.1.128.0/17], via: b}
  - {name: late-web, from: 10.1.5.0/24, proto: tcp, dport: 443, via: b}
  - {name: v6, to: "2001:db8:5::/48", via: b}
""")
    assert reachability(plan).unreachable_policies == ["late-web"]


def test_policies_merged_into_one_map_are_each_reachable(tmp_path: Path) -> None:
    plan = plan_of(tmp_path, UPLINKS + """
policies:
  - {name: p1, from: 10.1.0.0/16, proto: tcp, dport: 443, via: a}
  - {name: p2, from: 10.2.0.0/16, proto: tcp, dport: 80, via: b}
  - {name: p3, from: 10.1.0.0/16, proto: tcp, dport: 443, via: b}
  - {name: p4, from: 10.3.0.0/16, proto: udp, dport: 53, via: a}
""")
    assert any("vmap" in rule for obj in plan.nft if "rule" in obj for rule in obj["rule"]["expr"])
    assert reachability(plan).unreachable_policies == ["p3"]


def test_a_partly_shadowed_policy_is_reachable_through_the_gap(tmp_path: Path) -> None:
    plan = plan_of(tmp_path, UPLINKS + """
policies:
  - {name: most, from: 10.0.0.0/9, via: a}
  - {name: all, from: 10.0.0.0/8, via: b}
  - {name: ssh-rest, proto: tcp, dport: 22, via: a}
""")
    assert reachability(plan).unreachable_policies == []


def test_an_uplink_no_policy_uses_and_whose_inbound_is_dropped_is_unused(tmp_path: Path) -> None:
    plan = plan_of(tmp_path, """
uplinks:
  a: {interface: eth1, gateway: 192.0.2.1, nat: masquerade}
  spare: {interface: eth2, gateway: 198.51.100.1, nat: masquerade, inbound: {policy: drop}}
policies:
  - {name: all, via: a}
""")
    assert reachability(plan).unused_uplinks == ["spare"]


def test_a_policy_on_a_large_set_is_reachable(tmp_path: Path) -> None:
    prefixes = "\n".join(f"10.{i // 256}.{i % 256}.0/24" for i in range(0, 10000, 2))
    plan = plan_of(tmp_path, UPLINKS + """
sets:
  many: {file: many.txt}
policies:
  - {name: many, to: "@many", via: b}
  - {name: rest, via: a}
""", {"many.txt": prefixes})
    assert reachability(plan).unreachable_policies == []


def test_router_originated_packets_reach_local_policies(tmp_path: Path) -> None:
    """Issue #12 (11): `local: true` policies see only packets this router sends; they were never tried."""
    plan = plan_of(tmp_path, UPLINKS + """
policies:
  - {name: mine, local: true, via: a}
  - {name: mine-web, local: true, proto: tcp, dport: 443, from: 192.0.2.7, via: b}
  - {name: rest, via: b}
  - {name: late-mine, local: true, to: 203.0.113.0/24, via: a}
""")
    assert reachability(plan).unreachable_policies == ["mine-web", "late-mine"]


def test_policies_with_a_port_exception_among_many_are_reachable(tmp_path: Path) -> None:
    """Issue 15: `to: X, not: {dport: ...}` jumps to its own chain from an uncommented rule; its
    destination was not among the policy's own witness values, and with 1,000 other
    destinations the sampled ones missed it: a false "can never match"."""
    many = "".join(f"  - {{name: p{i}, to: 11.{i // 128}.{i % 128 * 2}.0/24, via: a}}\n" for i in range(1000))
    plan = plan_of(tmp_path, UPLINKS + "policies:\n" + many + """
  - {name: not-https, to: 12.0.2.0/24, not: {dport: 443}, via: b}
  - {name: not-web, to: 12.0.4.0/24, proto: tcp, not: {dport: [80, 443]}, via: a}
  - {name: hidden, to: 12.0.4.0/25, proto: tcp, dport: 8080, via: b}
""")
    assert reachability(plan).unreachable_policies == ["hidden"]


def test_simulators_leave_no_reference_cycles_for_the_paused_collector(tmp_path: Path) -> None:
    """Commands pause the cycle collector; a ruleset left in cycles would be walked again after them."""
    policies = "".join(f"  - {{name: p{i}, to: 10.{i}.0.0/16, proto: tcp, dport: {1000 + i}, via: a}}\n"
                       for i in range(40))
    plan = plan_of(tmp_path, UPLINKS + "policies:\n" + policies)
    enabled = gc.isenabled()
    gc.disable()
    try:
        gc.collect()
        assert reachability(plan).unreachable_policies == []
        after_search = gc.collect()
        simulator = offline(plan, ["lan0=192.168.1.1/24", "eth1=192.0.2.2/24"])
        paths = simulator.paths(make_flow("192.168.1.2", "10.7.0.1", "tcp", 40000, 1007, iif="lan0"))
        del simulator
        assert [path.outcome.policy for path in paths] == ["p7"]
        after_trace = gc.collect()
    finally:
        if enabled:
            gc.enable()
    assert after_search < 100, f"{after_search} objects of the search were left to the cycle collector"
    assert after_trace < 100, f"{after_trace} objects of the trace were left to the cycle collector"
