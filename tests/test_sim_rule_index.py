"""Skipping rules by their guard (`sim.ruleindex`) changes no walk's outcome (issue 15).

The simulator walks long policy chains through `ChainIndex`, which leaves out the rules
whose guard (destination, source, destination port or input interface) a packet is
outside of. Random configs of many policies (nested and repeated destinations, ports,
`not:`, protocols, sources, interfaces and wildcards, DSCP, `local`, IPv6, policies with
no destination) are compiled; the same witness flows `check` would build are walked with the
indexes and with every index removed, and every outcome must be the same.
"""

from __future__ import annotations

import ipaddress
import random
from pathlib import Path

from test_compile import plan_of

from markroute.sim import reach
from markroute.sim.nft import Ruleset
from markroute.sim.ruleindex import ChainIndex
from markroute.sim.trace import Simulator

UPLINKS = """
uplinks:
  a: {interface: eth1, gateway: 192.0.2.1, nat: masquerade}
  b: {interface: eth2, gateway: 198.51.100.1, gateway6: "2001:db8:1::1", nat: masquerade}
groups:
  both:
    balance: {a: 1, b: 1}
policies:
"""
DESTINATIONS = ("10.{n}.0.0/16", "10.{n}.{m}.0/24", "10.{n}.{m}.7", "10.{n}.0.0-10.{n}.3.255", "2001:db8:{n}::/48")
ALONE = ("from: 172.16.{m}.{o}/28", "dport: {p}", "iif: lan{m}", "iif: \"wan*\"", "proto: tcp, dport: {p}",
         "from: \"2001:db8:f{m}::/64\"", "sport: {p}", "dscp: {d}", "not: {{from: 172.16.{m}.0/24}}")
EXTRAS = ("", ", dport: {p}", ", proto: tcp", ", proto: udp, dport: [{p}, 53]", ", not: {{dport: {p}}}",
          ", from: 172.16.{m}.0/24", ", iif: lan{m}", ", dscp: {d}", ", local: true", ", sport: {p}-{q}")


def random_config(rng: random.Random) -> str:
    lines = []
    for index in range(rng.randint(40, 90)):
        fields = {"n": rng.randrange(6), "m": rng.randrange(4), "p": rng.choice((22, 80, 443, 8080)),
                  "q": 9000, "d": rng.choice((10, 46)), "o": rng.randrange(16) * 16}
        via = rng.choice(("a", "b", "both"))
        if rng.random() < 0.4:  # no destination: guarded by source, port or interface, or not at all
            match = rng.choice(ALONE).format(**fields)
            via = "b" if "2001" in match else via
            lines.append(f"  - {{name: p{index}, {match}, via: {via}}}\n")
            continue
        to = rng.choice(DESTINATIONS).format(**fields)
        extra = rng.choice(EXTRAS).format(**fields)
        if ":" in to and "172.16" in extra:
            extra = ""
        if ":" in to:
            via = "b"
        lines.append(f"  - {{name: p{index}, to: \"{to}\"{extra}, via: {via}}}\n")
    return UPLINKS + "".join(lines)


def test_walks_with_the_index_end_as_walks_of_every_rule(tmp_path: Path) -> None:
    rng = random.Random(15)
    indexed = 0
    for round_ in range(6):
        plan = plan_of(tmp_path, random_config(rng))
        document = plan.nft_document()
        rpdb, system = reach._system(plan)
        fast = Ruleset(document, system)
        slow = Ruleset(document, system)
        for chain in slow.chains.values():
            chain.index = None
        indexed += sum(chain.index is not None for chain in fast.chains.values())
        pools = {name: list(values) for name, values in reach._candidates(document).common.items()}
        for _ in range(300):
            for flow in reach._flows({name: rng.choice(values) for name, values in pools.items()}):
                rpdb.sending_from = (flow.version, flow.src) if flow.local else None
                ours = [leaf.path.outcome.key() for leaf in Simulator(fast, system).explore(flow, record=False)]
                plain = [leaf.path.outcome.key() for leaf in Simulator(slow, system).explore(flow, record=False)]
                assert ours == plain, (round_, flow)
    assert indexed >= 6  # the policy chains were indexed, so the index was what answered


def daddr_rule(third: int, before: list[dict] | None = None) -> dict:
    """`[BEFORE] ip daddr 10.0.THIRD.0/24 accept` as nft JSON."""
    match = {"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "daddr"}},
                       "right": {"prefix": {"addr": f"10.0.{third}.0", "len": 24}}}}
    return {"expr": [*(before or []), match, {"accept": None}]}


def test_rules_the_simulator_cannot_model_or_that_test_other_fields_first_are_never_skipped() -> None:
    cgroup = {"match": {"op": "==", "left": {"meta": {"key": "cgroup"}}, "right": 5}}
    bodies = [daddr_rule(i) for i in range(40)]
    bodies[7] = daddr_rule(7, [cgroup])  # an unmodelled key before the guard: it may be indeterminate
    index = ChainIndex.build(bodies, unmodelled={12})
    assert index is not None
    outside = {"daddr4": int(ipaddress.ip_address("192.0.2.1")), "iifname": ""}
    assert index.reachable(outside) == [7, 12]
    assert index.reachable({**outside, "daddr4": int(ipaddress.ip_address("10.0.3.9"))}) == [3, 7, 12]
    assert index.reachable({**outside, "daddr4": None}) == list(range(40))  # not known: nothing skipped
    moved = [*bodies, {"expr": [{"dnat": {"addr": "10.9.9.9"}}]}]
    assert ChainIndex.build(moved, unmodelled=set()) is None  # the destination may change mid-chain
