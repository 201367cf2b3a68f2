"""`markroute trace` offline: compiled plans of the five seed scenarios, walked step by step.

The configs are the ones the differential test applies in the lab, so the offline
answers here and the kernel's answers there are about the same plans. Each test asks
about flows whose fate the seed describes. Marks and tables are read from the plan
rather than written down, so the tests do not depend on allocation order.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytest
from test_compile import plan_of
from test_sim_seeds import host
from test_trace_differential import SEED_000, SEED_001, SEED_002, SEED_003, SEED_004

from markroute import sim
from markroute.plan import Plan, UplinkPlan
from markroute.sim import report
from markroute.sim.packet import make_flow
from markroute.sim.sample import split
from markroute.sim.trace import Outcome, Simulator
from markroute.sim.trace import Path as TracePath

# The seeds' configs as the differential test applies them in the lab, with the lab's
# interface names and addresses (router_lab, two_routers_lab, multihomed_lab).
ADDR_000 = ["lan0=192.168.1.1/24", "wan0=10.0.0.2/24", "wan1=10.0.1.2/24"]
ADDR_001 = ["lan0=192.168.1.1/24", "wan0=10.0.0.2/24", "wan1=10.0.1.2/32"]
ROUTES_001 = ["default via 10.0.0.1 dev wan0"]
ADDR_002 = ["eth0=192.168.10.50/24"]
ROUTES_002 = ["default via 192.168.10.1 dev eth0"]
R2_MAC = "52:54:00:c2:a5:43"
ADDR_003 = ["eth0=10.10.0.5/24", "eth1=10.20.0.5/24"]
ROUTES_003 = ["default via 10.20.0.1 dev eth1", "203.0.113.0/24 via 10.10.0.1 dev eth0"]
ADDR_004 = ADDR_000 + ["site0=10.255.0.1/30"]
ROUTES_004 = ["default via 10.0.0.1 dev wan0", "172.17.0.0/16 via 10.255.0.2 dev site0"]


def uplink(plan: Plan, name: str) -> UplinkPlan:
    return next(u for u in plan.uplinks if u.name == name)


def paths(simulator: Simulator, src: str, dst: str, proto: str | None = "tcp", sport: int | None = 40000,
          dport: int | None = 443, **options: Any) -> list[TracePath]:
    ports = proto in ("tcp", "udp")
    return simulator.paths(make_flow(src, dst, proto, sport if ports else None, dport if ports else None,
                                     **options))


def one(simulator: Simulator, *args: Any, **options: Any) -> Outcome:
    found = paths(simulator, *args, **options)
    assert len(found) == 1, [p.outcome.label() for p in found]
    return found[0].outcome


def test_seed_000_one_destination_via_isp_a_the_rest_via_isp_b(tmp_path: Path) -> None:
    plan = plan_of(tmp_path, SEED_000)
    simulator = sim.offline(plan, ADDR_000)
    a, b = uplink(plan, "isp_a"), uplink(plan, "isp_b")
    to_server = one(simulator, "192.168.1.20", "203.0.113.10", iif="lan0")
    assert (to_server.verdict, to_server.oif, to_server.next_hop) == ("forward", "wan0", "10.0.0.1")
    assert (to_server.mark & plan.mask, to_server.table) == (a.mark, str(a.table))
    assert (to_server.snat, to_server.policy) == ("10.0.0.2", "server-via-a")
    elsewhere = one(simulator, "192.168.1.20", "198.51.100.99", iif="lan0")
    assert (elsewhere.oif, elsewhere.snat, elsewhere.mark & plan.mask) == ("wan1", "10.0.1.2", b.mark)
    assert elsewhere.reply is not None and elsewhere.reply["oif"] == "lan0"


def test_traffic_left_to_main_is_indeterminate_offline_unless_main_is_given(tmp_path: Path) -> None:
    plan = plan_of(tmp_path, SEED_000)
    unknown = one(sim.offline(plan, ADDR_000), "10.9.9.9", "9.9.9.9", iif="lan0")
    assert (unknown.verdict, unknown.table, unknown.oif) == ("indeterminate", "main", None)
    assert "--route" in str(unknown.reason)
    known = one(sim.offline(plan, ADDR_000, ["default via 10.0.0.1 dev wan0"]), "10.9.9.9", "9.9.9.9", iif="lan0")
    assert (known.verdict, known.table, known.oif, known.policy) == ("forward", "main", "wan0", None)


def test_without_the_host_addresses_the_first_question_is_indeterminate(tmp_path: Path) -> None:
    outcome = one(sim.offline(plan_of(tmp_path, SEED_000)), "192.168.1.20", "203.0.113.10", iif="lan0")
    assert outcome.verdict == "indeterminate"
    assert outcome.indeterminate is not None and "--addr" in outcome.indeterminate["reason"]


def test_seed_001_mail_takes_the_point_to_point_link(tmp_path: Path) -> None:
    plan = plan_of(tmp_path, SEED_001)
    simulator = sim.offline(plan, ADDR_001, ROUTES_001)
    mail = one(simulator, "192.168.1.20", "203.0.113.25", dport=25, iif="lan0")
    assert (mail.oif, mail.next_hop, mail.policy, mail.snat) == ("wan1", "203.0.113.25", "mail", "10.0.1.2")
    web = one(simulator, "192.168.1.20", "203.0.113.25", dport=443, iif="lan0")
    assert (web.oif, web.table, web.policy) == ("wan0", "main", None)
    excepted = one(simulator, "192.168.1.12", "203.0.113.25", dport=25, iif="lan0")
    assert (excepted.oif, excepted.policy) == ("wan0", "exception-host")


def test_seed_002_replies_leave_by_the_router_the_connection_came_through(tmp_path: Path) -> None:
    plan = plan_of(tmp_path, SEED_002)
    simulator = sim.offline(plan, ADDR_002, ROUTES_002)
    for mac, gateway, name in ((R2_MAC, "192.168.10.2", "router2"), ("52:54:00:aa:bb:cc", "192.168.10.1", "router1")):
        first = one(simulator, "203.0.113.9", "192.168.10.50", dport=80, iif="eth0", mac=mac)
        assert first.ct_mark is not None
        assert (first.verdict, first.ct_mark & plan.mask) == ("local", uplink(plan, name).mark)
        reply = one(simulator, "203.0.113.9", "192.168.10.50", dport=80, iif="eth0", mac=mac, reply=True)
        assert (reply.verdict, reply.oif, reply.next_hop) == ("forward", "eth0", gateway), name


def test_seed_003_replies_leave_by_the_interface_the_connection_came_in_on(tmp_path: Path) -> None:
    plan = plan_of(tmp_path, SEED_003)
    simulator = sim.offline(plan, ADDR_003, ROUTES_003)
    monitoring = one(simulator, "203.0.113.7", "10.20.0.5", dport=21, iif="eth1")
    assert monitoring.verdict == "local", monitoring.reason
    assert monitoring.reply is not None and (monitoring.reply["oif"], monitoring.reply["next_hop"]) == (
        "eth1", "10.20.0.1")
    assert monitoring.rp_filter == {"reply_dropped": False, "checked": False,
                                    "reason": "the reply is not source-validated (IPv6, or sent by this host)"}


def test_seed_003_without_markroute_strict_rp_filter_drops_the_monitoring_host() -> None:
    """The seed's problem itself: the static route makes the reverse path eth0, the SYN came on eth1."""
    routes = [{"family": "inet", "dst": "default", "gateway": "10.20.0.1", "dev": "eth1"},
              {"family": "inet", "dst": "203.0.113.0/24", "gateway": "10.10.0.1", "dev": "eth0"}]
    interfaces = {"eth0": "10.10.0.5/24", "eth1": "10.20.0.5/24"}
    strict = host({"nftables": []}, interfaces, [], routes, {"net/ipv4/conf/all/rp_filter": "1"})
    syn = one(strict, "203.0.113.7", "10.20.0.5", dport=21, iif="eth1")
    assert syn.verdict == "drop" and "strict rp_filter" in str(syn.reason)
    loose = host({"nftables": []}, interfaces, [], routes, {"net/ipv4/conf/all/rp_filter": "2"})
    answered = one(loose, "203.0.113.7", "10.20.0.5", dport=21, iif="eth1")
    assert answered.reply is not None and answered.reply["oif"] == "eth0", "the reply follows the static route"


def test_seed_004_balances_new_connections_four_to_six(tmp_path: Path,
                                                       weighted_split: Callable[[Mapping[Any, int], Mapping[Any, int]],
                                                                                None]) -> None:
    plan = plan_of(tmp_path, SEED_004)
    simulator = sim.offline(plan, ADDR_004, ROUTES_004)
    found = paths(simulator, "192.168.1.5", "203.0.113.9", iif="lan0")
    shares = {p.outcome.oif: round(p.probability, 9) for p in found}
    assert shares == {"wan0": 0.4, "wan1": 0.6}
    assert {p.outcome.snat for p in found} == {"10.0.0.2", "10.0.1.2"}
    assert {p.outcome.policy for p in found} == {"balance"}
    leaves = simulator.explore(make_flow("192.168.1.5", "203.0.113.9", "tcp", 40000, 443, "lan0"), record=False)
    rows = split(leaves, 20000, seed=4)
    weighted_split({row["oif"]: row["sampled"] for row in rows}, {"wan0": 4, "wan1": 6})


def test_seed_004_local_networks_inbound_drops_and_router_traffic(tmp_path: Path) -> None:
    plan = plan_of(tmp_path, SEED_004)
    simulator = sim.offline(plan, ADDR_004, ROUTES_004)
    site = one(simulator, "192.168.1.5", "172.17.3.3", iif="lan0")
    assert (site.policy, site.table, site.oif, site.next_hop) == ("local-networks", "main", "site0", "10.255.0.2")
    unsolicited = one(simulator, "203.0.113.9", "192.168.1.5", dport=443, iif="wan1")
    assert unsolicited.verdict == "drop"
    ssh = one(simulator, "203.0.113.9", "10.0.1.2", dport=22, iif="wan1")
    assert ssh.verdict == "local"
    local = paths(simulator, "10.0.0.2", "203.0.113.9", local=True)
    assert {p.outcome.oif for p in local} == {"wan0", "wan1"}, "a route chain re-routes the router's own traffic"
    foreign = one(simulator, "192.168.1.77", "203.0.113.9", local=True)
    assert foreign.verdict == "drop" and "not an address of this host" in str(foreign.reason)


def test_a_reply_shows_its_own_steps_after_the_original_direction(tmp_path: Path) -> None:
    plan = plan_of(tmp_path, SEED_002)
    simulator = sim.offline(plan, ADDR_002, ROUTES_002)
    flow = make_flow("203.0.113.9", "192.168.10.50", "tcp", 5555, 80, "eth0", mac=R2_MAC, reply=True)
    data = report.document(flow, simulator.paths(flow), "test", simulator.system.assumptions, [])
    directions = [s["direction"] for s in data["steps"] if s["stage"] == "direction"]
    assert directions == ["original", "reply"]
    rerouted = [s for s in data["steps"] if s["stage"] == "routing" and s["what"].startswith("re-route")]
    assert rerouted and rerouted[-1]["gateway"] == "192.168.10.2"
    text = report.text(data)
    assert "re-route" in text and "192.168.10.2" in text


def test_json_document_has_the_promised_fields_and_paths(tmp_path: Path) -> None:
    plan = plan_of(tmp_path, SEED_004)
    simulator = sim.offline(plan, ADDR_004, ROUTES_004)
    flow = make_flow("192.168.1.5", "203.0.113.9", "udp", 5000, 53, "lan0")
    data = report.document(flow, simulator.paths(flow), "test", [], [])
    for key in ("verdict", "oif", "next_hop", "table", "mark", "snat", "policy", "steps", "paths"):
        assert key in data, key
    assert data["verdict"] == "forward" and data["oif"] is None and data["policy"] == "balance"
    assert sorted(p["probability"] for p in data["paths"]) == pytest.approx([0.4, 0.6])
    assert all(p["steps"][: len(data["steps"])] == data["steps"] for p in data["paths"])


def test_dual_stack_ipv6_and_a_large_set_of_prefixes(tmp_path: Path) -> None:
    prefixes = "\n".join(str(ipaddress.ip_network(f"10.{i // 256}.{i % 256}.0/24")) for i in range(0, 50000, 2))
    config = """
uplinks:
  isp_a: {interface: wan0, gateway: 10.255.0.1, gateway6: "2001:db8:a::1", nat: masquerade}
  isp_b: {interface: wan1, gateway: 10.255.1.1, gateway6: "2001:db8:b::1", nat: masquerade}
sets:
  many: {file: many.txt}
policies:
  - {name: many, to: "@many", via: isp_b}
  - {name: v6, to: "2001:db8:100::/48", via: isp_b}
  - {name: rest, via: isp_a}
"""
    plan = plan_of(tmp_path, config, {"many.txt": prefixes})
    simulator = sim.offline(plan, ["lan0=192.168.1.1/24", "lan0=fd00:1::1/64", "wan0=10.255.0.2/24",
                                   "wan0=2001:db8:a::2/64", "wan1=10.255.1.2/24", "wan1=2001:db8:b::2/64"])
    assert one(simulator, "192.168.1.9", "10.1.2.3", iif="lan0").oif == "wan1"
    assert one(simulator, "192.168.1.9", "10.1.3.3", iif="lan0").oif == "wan0", "odd /24s are not in the set"
    v6 = one(simulator, "fd00:1::9", "2001:db8:100::5", iif="lan0")
    assert (v6.oif, v6.next_hop, v6.snat) == ("wan1", "2001:db8:b::1", "2001:db8:b::2")


def test_a_connection_no_ingress_rule_takes_goes_on_to_the_policies(tmp_path: Path) -> None:
    """The arriving interface's ingress chain is jumped to: when its `ingress:` match (here the
    sending router's MAC) does not hold, the policies still decide, as with the rules inline."""
    plan = plan_of(tmp_path, f"""
uplinks:
  edge: {{interface: eth0, gateway: 192.168.10.2, ingress: {{mac: "{R2_MAC}"}}}}
  wan: {{interface: eth1, gateway: 10.20.0.1}}
policies:
  - {{name: rest, via: wan}}
""")
    simulator = sim.offline(plan, ["eth0=192.168.10.50/24", "eth1=10.20.0.5/24"], ["default via 10.20.0.1 dev eth1"])
    from_edge = one(simulator, "203.0.113.9", "198.51.100.7", iif="eth0", mac=R2_MAC)
    assert from_edge.ct_mark is not None and from_edge.ct_mark & plan.mask == uplink(plan, "edge").mark
    assert from_edge.policy is None
    other = one(simulator, "192.168.10.9", "198.51.100.7", iif="eth0", mac="52:54:00:aa:bb:cc")
    assert other.policy == "rest" and other.mark is not None and other.mark & plan.mask == uplink(plan, "wan").mark
