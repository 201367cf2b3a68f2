"""The simulator against the real kernel: for each seed scenario, at least 1,000 random flows.

Each scenario builds its lab, applies the config with `markroute apply` (or, for the
seeds' own hand-written rules, loads them with nft and ip), and installs an observer
table of its own (`inet mrdiff`) whose chains run after every other chain. Then real
packets are injected as raw Ethernet frames on the router's neighbours' interfaces,
with random sources, destinations, protocols, ports, DSCP and ingress interfaces, and
some connections are opened by the router itself. The observer records, per
connection (its conntrack original tuple) and direction: the egress interface and mark
at postrouting, the next hop (`rt ip nexthop`) and the source after NAT, or delivery
at input. Replies the far ends send by themselves (SYN-ACKs, RSTs) are recorded too.

The simulator reads the same namespace live (`snapshot()`) and must agree on every
flow: verdict (forward, local, drop), egress interface, next hop, mark and NAT source,
and the same for every reply the kernel routed. Where a balance group decides, the
kernel's choice must be one of the simulator's paths, and the choices over all flows
must fit the simulator's probabilities. Kernel behaviour the simulator deliberately
does not model is listed in docs/trace-divergences.md; no flow here is excused.
"""

from __future__ import annotations

import ipaddress
import json
import random
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

import pytest
from test_check import SEED_002_SNIPPET as SEED_002

from markroute import sim
from markroute.kernel import netns, sysctl
from markroute.kernel.snapshot import snapshot
from markroute.lab import Lab, multihomed_lab, router_lab, two_routers_lab
from markroute.sim.datatypes import L4_PROTOCOLS
from markroute.sim.packet import make_flow
from markroute.sim.system import sysctl_paths
from markroute.sim.trace import Outcome, Simulator

pytestmark = pytest.mark.kernel

FLOWS = 1000

# Closed at once (linger 0) so no SYN is retransmitted: a retransmitted SYN is still
# `ct state new` and would be classified, and possibly balanced, all over again.
CONNECT = r"""
import json, socket, struct, sys, time
for f in json.load(sys.stdin):
    family = socket.AF_INET6 if ":" in f["src"] else socket.AF_INET
    kind = socket.SOCK_STREAM if f["proto"] == 6 else socket.SOCK_DGRAM
    sock = socket.socket(family, kind)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.bind((f["src"], f["sport"]))
    sock.setblocking(False)
    try:
        if kind == socket.SOCK_STREAM:
            sock.connect_ex((f["dst"], f["dport"]))
        else:
            sock.sendto(b"x", (f["dst"], f["dport"]))
    except OSError as exc:
        print(json.dumps({"flow": f["seq"], "error": exc.errno}))
    sock.close()
    time.sleep(0.0003)
"""

OBSERVER = """
table inet mrdiff {{
{sets}
    chain post {{
        type filter hook postrouting priority 1000; policy accept;
{post}
    }}
    chain input {{
        type filter hook input priority 1000; policy accept;
{input}
    }}
}}
"""


@dataclass(frozen=True)
class Entry:
    """Where the router let in some traffic: its interface, the sender's MAC, the router's MAC."""

    iif: str
    ns: str
    ifname: str
    sources: tuple[str, ...]


@dataclass
class Scenario:
    name: str
    router: str
    entries: tuple[Entry, ...]
    destinations: tuple[str, ...]
    local_sources: tuple[str, ...] = ()
    local_destinations: tuple[str, ...] = ()
    ports: tuple[int, ...] = (22, 25, 53, 80, 443)


@dataclass
class Flow:
    seq: int
    version: int
    src: str
    dst: str
    proto: int
    sport: int | None
    dport: int | None
    dscp: int
    iif: str | None
    mac: str | None = None
    inject: dict[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> tuple[str, str, int]:
        return (self.src, self.dst, self.proto)


def _directions() -> dict[str, set[Any]]:
    return {"original": set(), "reply": set()}


@dataclass
class Seen:
    """What the kernel did to one connection, per direction: the values the observer recorded."""

    oif: dict[str, set[Any]] = field(default_factory=_directions)
    mark: dict[str, set[Any]] = field(default_factory=_directions)
    hop: dict[str, set[Any]] = field(default_factory=_directions)
    nat: dict[str, set[Any]] = field(default_factory=_directions)
    iif: dict[str, set[Any]] = field(default_factory=_directions)
    inmark: dict[str, set[Any]] = field(default_factory=_directions)


# -- scenario plumbing -------------------------------------------------------------------


def mac_of(lab: Lab, ns: str, ifname: str) -> str:
    info = json.loads(lab.run(ns, ["ip", "-j", "link", "show", ifname]).stdout)
    return str(info[0]["address"])


# What the observer records per connection and direction: (set name, hook, value, its type).
RECORDS = (
    ("oif", "post", "oif", "iface_index"),
    ("mark", "post", "meta mark", "mark"),
    ("hop", "post", "rt {ip} nexthop", "{addr}"),
    ("nat", "post", "{ip} saddr", "{addr}"),
    ("iif", "input", "iif", "iface_index"),
    ("inmark", "input", "meta mark", "mark"),
)


def observe(lab: Lab, ns: str) -> None:
    """The observer table: one set per recorded value (long concatenations crash nft 1.0.6).

    Only the first packet of each direction is recorded (conntrack accounting on): a
    retransmitted SYN is `ct state new` again and may be routed differently.
    """
    lab.sysctl(ns, "net.netfilter.nf_conntrack_acct", 1)
    chains: dict[str, list[str]] = {"post": [], "input": []}
    sets = []
    for v, ip, addr in ((4, "ip", "ipv4_addr"), (6, "ip6", "ipv6_addr")):
        key = f"{addr} . {addr} . inet_proto . ct_dir"
        tuple_ = f"ct original {ip} saddr . ct original {ip} daddr . ct original protocol . ct direction"
        for name, hook, value, kind in RECORDS:
            sets.append(f"    set {name}{v} {{ type {key} . {kind.format(addr=addr)}; flags dynamic; size 65535; }}")
            for direction in ("original", "reply"):
                chains[hook].append(
                    f"        meta nfproto ipv{v} ct state != related ct direction {direction} "
                    f"ct {direction} packets 1 update @{name}{v} {{ {tuple_} . {value.format(ip=ip)} }}")
    lab.nft(ns, OBSERVER.format(sets="\n".join(sets), post="\n".join(chains["post"]), input="\n".join(chains["input"])))


def collect(lab: Lab, ns: str) -> dict[tuple[str, str, int], Seen]:
    values: dict[tuple[tuple[str, str, int], str, str], set[Any]] = {}
    for name, _, _, _ in RECORDS:
        for v in (4, 6):
            listing = json.loads(lab.run(ns, ["nft", "-j", "list", "set", "inet", "mrdiff", f"{name}{v}"]).stdout)
            for item in listing["nftables"]:
                for element in item.get("set", {}).get("elem", []):
                    src, dst, proto, direction, value = element["concat"]
                    proto_number = proto if isinstance(proto, int) else L4_PROTOCOLS[proto]
                    key = (_norm(src), _norm(dst), proto_number)
                    if name in ("hop", "nat"):
                        value = _norm(value)
                    values.setdefault((key, direction, name), set()).add(value)
    seen: dict[tuple[str, str, int], Seen] = {}
    for (key, direction, name), found in values.items():
        getattr(seen.setdefault(key, Seen()), name)[direction] = found
    return seen


def _norm(address: str) -> str:
    return str(ipaddress.ip_address(address))


def live_simulator(ns: str) -> Simulator:
    with netns.inside(ns):
        state = snapshot()
        values = {path: sysctl.read(path) for path in sysctl_paths(list(state["links"])) if sysctl.exists(path)}
    return sim.live(state, values)


def random_flows(lab: Lab, scenario: Scenario, rng: random.Random, count: int) -> list[Flow]:
    flows: list[Flow] = []
    keys: set[tuple[str, str, int]] = set()
    router_macs = {entry.iif: mac_of(lab, scenario.router, entry.iif) for entry in scenario.entries}
    sender_macs = {entry: mac_of(lab, entry.ns, entry.ifname) for entry in scenario.entries}
    for _ in range(count * 50):
        if len(flows) == count:
            break
        entry = rng.choice(scenario.entries)
        src = pick(rng, entry.sources)
        dst = pick(rng, scenario.destinations)
        version = ipaddress.ip_address(src).version
        if ipaddress.ip_address(dst).version != version or src == dst:
            continue
        proto = rng.choice((6, 6, 6, 17, 17, 1 if version == 4 else 58))
        ports = proto in (6, 17)
        flow = Flow(
            seq=len(flows), version=version, src=src, dst=dst, proto=proto,
            sport=rng.randint(1024, 65535) if ports else None,
            dport=rng.choice(scenario.ports + (rng.randint(1, 65535),)) if ports else None,
            dscp=rng.choice((0, 0, 0, 8, 46)), iif=entry.iif, mac=sender_macs[entry],
        )
        if flow.key in keys:
            continue
        keys.add(flow.key)
        flow.inject = {
            "ns": entry.ns, "ifname": entry.ifname, "dst_mac": router_macs[entry.iif], "src_mac": sender_macs[entry],
            "version": version, "src": src, "dst": dst, "proto": proto, "sport": flow.sport or 0,
            "dport": flow.dport or 0, "dscp": flow.dscp, "seq": flow.seq,
        }
        flows.append(flow)
    assert len(flows) == count, f"{scenario.name}: only {len(flows)} distinct flows in the address pools"
    return flows


def pick(rng: random.Random, pool: tuple[str, ...]) -> str:
    """An address of the pool: a listed address, or a random one of a listed prefix."""
    choice = rng.choice(pool)
    if "/" not in choice:
        return _norm(choice)
    network = ipaddress.ip_network(choice)
    return str(network[rng.randint(1, network.num_addresses - 2)])


def local_flows(scenario: Scenario, rng: random.Random, count: int, taken: list[Flow]) -> list[Flow]:
    flows: list[Flow] = []
    keys = {flow.key for flow in taken}
    start = len(taken)
    for _ in range(count * 50):
        if len(flows) == count:
            break
        src = pick(rng, scenario.local_sources)
        dst = pick(rng, scenario.local_destinations)
        version = ipaddress.ip_address(src).version
        if ipaddress.ip_address(dst).version != version:
            continue
        proto = rng.choice((6, 17))
        flow = Flow(seq=start + len(flows), version=version, src=src, dst=dst, proto=proto,
                    sport=rng.randint(20000, 60000), dport=rng.choice(scenario.ports), dscp=0, iif=None)
        if flow.key in keys:
            continue
        keys.add(flow.key)
        flow.inject = {"src": src, "dst": dst, "proto": proto, "sport": flow.sport, "dport": flow.dport,
                       "seq": flow.seq}
        flows.append(flow)
    return flows


def run_traffic(lab: Lab, scenario: Scenario, flows: list[Flow]) -> None:
    by_sender: dict[str, list[dict[str, Any]]] = {}
    for flow in flows:
        if flow.iif is not None:
            by_sender.setdefault(flow.inject["ns"], []).append(flow.inject)
    for ns, frames in by_sender.items():
        lab.run(ns, [sys.executable, "-m", "markroute.lab.frames"], input=json.dumps(frames), timeout=120)
    local = [flow.inject for flow in flows if flow.iif is None]
    if local:
        lab.run(scenario.router, [sys.executable, "-c", CONNECT], input=json.dumps(local), timeout=120)
    time.sleep(1.5)


# -- comparing --------------------------------------------------------------------------


def kernel_outcome(seen: Seen | None, direction: str) -> tuple[Any, ...]:
    """(verdict, oif, next hop, mark, source after NAT) as the observer saw it."""
    if seen is None:
        return ("drop",)
    if seen.iif[direction]:
        marks = seen.inmark[direction]
        if len(marks) != 1:
            return ("delivered with different marks", str(sorted(marks)))
        return ("local", None, None, next(iter(marks)), None)
    if not seen.oif[direction]:
        return ("drop",)
    found = [seen.oif[direction], seen.hop[direction], seen.mark[direction], seen.nat[direction]]
    if any(len(values) != 1 for values in found):
        return ("packets of one connection left differently", str([sorted(map(str, v)) for v in found]))
    oif, hop, mark, nat = (next(iter(values)) for values in found)
    return ("forward", oif, hop, mark, nat)


def simulated_outcome(outcome: Outcome, flow: Flow, direction: str) -> tuple[Any, ...]:
    if outcome.verdict == "drop":
        return ("drop",)
    if outcome.verdict == "local":
        return ("local", None, None, outcome.mark, None)
    assert outcome.verdict == "forward", f"flow {flow}: {outcome.verdict}: {outcome.reason}"
    source = outcome.snat if outcome.snat is not None else (flow.src if direction == "original" else None)
    return ("forward", outcome.oif, outcome.next_hop, outcome.mark, source)


def compare(scenario: Scenario, simulator: Simulator, flows: list[Flow], seen: Mapping[tuple[str, str, int], Seen],
            weighted_split: Callable[[Mapping[Any, int], Mapping[Any, int]], None]) -> dict[str, int]:
    disagreements: list[str] = []
    balanced: dict[tuple[tuple[Any, Fraction], ...], Counter[tuple[Any, ...]]] = {}
    stats: Counter[str] = Counter()
    for flow in flows:
        question = make_flow(flow.src, flow.dst, flow.proto, flow.sport, flow.dport, flow.iif, flow.iif is None,
                             flow.mac, flow.dscp)
        record = seen.get(flow.key)
        kernel = kernel_outcome(record, "original")
        paths: dict[tuple[Any, ...], Fraction] = {}
        for leaf in simulator.explore(question, record=False):
            outcome = leaf.path.outcome
            assert outcome.verdict != "indeterminate", f"{scenario.name} flow {flow}: {outcome.reason}"
            key = simulated_outcome(outcome, flow, "original")
            paths[key] = paths.get(key, Fraction(0)) + Fraction(leaf.path.probability).limit_denominator(10000)
        stats[kernel[0]] += 1
        if kernel not in paths:
            disagreements.append(f"flow {flow.seq} {flow.src}->{flow.dst} proto {flow.proto} "
                                 f"{flow.sport}->{flow.dport} iif {flow.iif} dscp {flow.dscp}: "
                                 f"kernel {kernel}, simulator {sorted(paths, key=str)}")
            continue
        if len(paths) > 1:
            balanced.setdefault(tuple(sorted(paths.items(), key=str)), Counter())[kernel] += 1
        if record is not None and (record.oif["reply"] or record.iif["reply"]):
            stats["replies"] += 1
            reply_question = make_flow(flow.src, flow.dst, flow.proto, flow.sport, flow.dport, flow.iif,
                                       flow.iif is None, flow.mac, flow.dscp, reply=True)
            reply_kernel = kernel_outcome(record, "reply")
            replies = set()
            for leaf in simulator.explore(reply_question, record=False):
                # A reply exists only on the path the kernel's first packet took.
                replies.add(simulated_outcome(leaf.path.outcome, flow, "reply")[:4])
            if len(reply_kernel) == 2 or reply_kernel[:4] not in replies:
                disagreements.append(f"reply of flow {flow.seq} {flow.src}->{flow.dst} proto {flow.proto} "
                                     f"iif {flow.iif}: kernel {reply_kernel[:4]}, simulator {sorted(replies, key=str)}")
    assert not disagreements, f"{scenario.name}: {len(disagreements)} of {len(flows)} flows differ:\n" + "\n".join(
        disagreements[:40])
    for distribution, counts in balanced.items():
        if sum(counts.values()) >= 50:
            scale = max(p.denominator for _, p in distribution)
            weighted_split(counts, {outcome: int(p * scale) for outcome, p in distribution})
            stats["balanced"] += sum(counts.values())
    return dict(stats)


# -- scenarios ----------------------------------------------------------------------------

SEED_000 = """
uplinks:
  isp_a: {interface: wan0, gateway: 10.0.0.1, nat: masquerade}
  isp_b: {interface: wan1, gateway: 10.0.1.1, nat: masquerade}
policies:
  - name: server-via-a
    from: 192.168.1.0/24
    to: 203.0.113.10
    via: isp_a
  - name: rest-via-b
    from: 192.168.1.0/24
    via: isp_b
"""

SEED_001 = """
uplinks:
  cheap: {interface: wan1, nat: masquerade}
policies:
  - name: exception-host
    from: 192.168.1.12
    via: main
  - name: mail
    proto: tcp
    dport: 25
    via: cheap
"""

SEED_003 = """
uplinks:
  mgmt: {interface: eth0, gateway: 10.10.0.1}
  ftp: {interface: eth1, gateway: 10.20.0.1}
settings:
  rp_filter: strict
"""

SEED_004 = """
uplinks:
  wan1:
    interface: wan0
    gateway: 10.0.0.1
    nat: {snat: 10.0.0.2}
    inbound: {policy: drop}
  wan2:
    interface: wan1
    gateway: 10.0.1.1
    nat: {snat: 10.0.1.2}
    inbound:
      policy: drop
      allow:
        - {proto: tcp, dport: 22}
groups:
  wans:
    balance: {wan1: 4, wan2: 6}
policies:
  - name: local-networks
    to: [172.17.0.0/16, 127.0.0.0/8]
    via: main
  - name: balance
    via: wans
"""

# Seed 004's own nftables ruleset and ip rules/routes, made valid (`ct mark set meta mark`
# once per rule, the map's 4-10 kept as written) and renamed for the lab: eth0 -> lan0,
# eth1 (192.168.0.109, gw .1) -> wan0 (10.0.0.2, gw .1), eth2 (192.168.29.2) -> wan1
# (10.0.1.2). Kept as written, too: table 100 routes via eth1/wan0 while mark 100 is
# SNATed to eth2's/wan1's address.
SEED_004_NFT = """
table ip my_nat {
    chain my_filter {
        type filter hook prerouting priority -150; policy accept;
        iif lo accept
        iifname wan0 jump my_input_public
        iifname wan1 jump my_input_public
        iifname lan0 ip daddr 192.168.1.0/24 jump local_sys
        meta mark set ct mark
        ct state new meta mark set numgen random mod 10 map { 0-3 : 100, 4-10 : 101 } comment "Without Queue monitor..."
        ct mark set meta mark
        counter comment "<- Pre routing"
    }
    chain my_input_public {
        ct state { established, related } counter accept
        ct state invalid counter drop
        ct state new counter drop
    }
    chain local_sys {
        ct state { established, related } counter accept
        ct state invalid counter drop
        ct state new counter accept
    }
    chain output {
        type filter hook output priority filter; policy accept;
        ct state { established, related } counter accept
        ip saddr 10.0.1.2 ct state new meta mark set 100 counter
        ip saddr 10.0.0.2 ct state new meta mark set 101 counter
        meta mark 0 ct state new meta mark set numgen random mod 2 map { 0 : 100, 1 : 101 } counter
        ip daddr 127.0.0.1 ct state new meta mark set 50 counter
        ip daddr 192.168.1.0/24 ct state new meta mark set 50 counter
        ct mark set meta mark
    }
    chain my_postrouting {
        type nat hook postrouting priority -100; policy accept;
        ct mark set meta mark counter comment "<- Post routing"
        meta mark > 50 jump my_snat_postrouting
        counter comment "<- Post routing"
        meta mark 50 accept
        log counter drop
    }
    chain my_snat_postrouting {
        counter comment "<- Out Post routing"
        meta mark 100 counter
        meta mark 101 counter
        meta mark 100 snat to 10.0.1.2
        meta mark 101 snat to 10.0.0.2
        log counter drop
    }
}
"""
SEED_004_RPDB = (
    ("route", "add", "table", "100", "default", "dev", "wan0", "via", "10.0.0.1"),
    ("route", "add", "table", "101", "default", "dev", "wan1", "via", "10.0.1.1"),
    ("rule", "add", "fwmark", "100", "table", "100"),
    ("rule", "add", "fwmark", "101", "table", "101"),
    ("rule", "add", "from", "10.0.1.2", "table", "100"),
    ("rule", "add", "from", "10.0.0.2", "table", "101"),
)

DUAL_STACK = """
uplinks:
  isp_a: {interface: wan0, gateway: 10.0.0.1, gateway6: "2001:db8:0::1", nat: masquerade}
  isp_b: {interface: wan1, gateway: 10.0.1.1, gateway6: "2001:db8:1::1", nat: masquerade}
sets:
  streaming: [198.18.0.0/16, "2001:db8:100:5::/64", 203.0.113.128/25]
groups:
  both:
    balance: {isp_a: 1, isp_b: 3}
  primary:
    failover: [isp_a, isp_b]
policies:
  - {name: lan-to-lan, to: [192.168.0.0/16, "fd00::/8"], via: main}
  - {name: streaming, to: "@streaming", via: isp_b}
  - {name: voip, dscp: ef, via: primary}
  - {name: ssh, from: [192.168.1.0/24, "fd00:1::/64"], proto: tcp, dport: 22, via: isp_a}
  - {name: dns, from: [192.168.1.0/24, "fd00:1::/64"], proto: udp, dport: 53, via: isp_b}
  - {name: mail, from: [192.168.1.0/24, "fd00:1::/64"], proto: tcp, dport: [25, 465, 587], via: isp_a}
  - {name: v6-docs-net, to: "2001:db8:100::/48", via: isp_a}
  - {name: not-web, from: 192.168.1.0/25, not: {proto: tcp, dport: [80, 443]}, via: isp_b}
  - {name: rest, via: both}
"""

PUBLIC = ("203.0.113.10", "203.0.113.20", "203.0.113.0/24", "198.18.0.10", "198.18.0.0/15", "198.51.100.128/25",
          "192.0.2.0/24")
PUBLIC6 = ("2001:db8:100::10", "2001:db8:100::/48", "2001:db8:100:5::/64", "2001:db8:77::/48")


def router_scenario(lab: Lab, name: str, **kwargs: Any) -> tuple[Any, Scenario]:
    r = router_lab(lab, isps=2, **kwargs)
    lan_sources: tuple[str, ...] = (r.client_v4, *r.client_v4_extra[:4], "192.168.1.0/24", "192.168.1.12",
                                    "10.99.0.0/16")
    public = PUBLIC + (PUBLIC6 if r.ipv6 else ())
    if r.ipv6:
        assert r.client_v6 is not None and r.rtr_lan_v6 is not None
        lan_sources += (r.client_v6, "fd00:1::/64", "fd00:1::/64")
    entries = [Entry(r.rtr_lan_if, r.lan, "eth0", lan_sources + public[:2])]
    for i, isp in enumerate(r.isps):
        own = (f"10.0.{i}.1", "192.168.1.50") + ((f"2001:db8:{i}::1", "fd00:1::50") if r.ipv6 else ())
        entries.append(Entry(r.rtr_wan_ifs[i], isp, "down0", public + own))
    if r.site is not None:
        entries.append(Entry("site0", r.site, "eth0", ("172.17.0.10", "172.17.0.0/16", "10.255.0.2")))
    destinations: tuple[str, ...] = public + (r.client_v4, "192.168.1.0/24", r.rtr_lan_v4, *r.rtr_wan_v4,
                                              r.isp_gw_v4[1], "172.17.0.10", "172.17.0.0/16", "10.200.0.0/16")
    local_sources: tuple[str, ...] = (r.rtr_lan_v4, *r.rtr_wan_v4) + ((r.rtr_site_v4,) if r.rtr_site_v4 else ())
    local_destinations: tuple[str, ...] = PUBLIC + (r.client_v4, "172.17.0.10", r.isp_gw_v4[0])
    if r.client_v6 is not None and r.rtr_lan_v6 is not None:
        destinations += (*PUBLIC6, r.client_v6, "fd00:1::/64", r.rtr_lan_v6, *r.rtr_wan_v6)
        local_sources += (r.rtr_lan_v6, *r.rtr_wan_v6)
        local_destinations += (*PUBLIC6, r.client_v6)
    scenario = Scenario(name, r.rtr, tuple(entries), destinations, local_sources=local_sources,
                        local_destinations=local_destinations, ports=(22, 25, 53, 80, 443, 465, 587))
    return r, scenario


@pytest.fixture
def run_scenario(lab: Lab, markroute_cli: Any, weighted_split: Any) -> Iterator[Callable[..., dict[str, int]]]:
    def run(scenario: Scenario, config: str | None, seed: int, local: int = 0) -> dict[str, int]:
        if config is not None:
            markroute_cli.apply(scenario.router, config)
        simulator = live_simulator(scenario.router)
        observe(lab, scenario.router)
        rng = random.Random(seed)
        flows = random_flows(lab, scenario, rng, FLOWS)
        flows += local_flows(scenario, rng, local, flows) if local else []
        run_traffic(lab, scenario, flows)
        seen = collect(lab, scenario.router)
        stats = compare(scenario, simulator, flows, seen, weighted_split)
        print(scenario.name, stats)
        return stats

    yield run


def test_seed_000_destination_policy(lab: Lab, run_scenario: Callable[..., dict[str, int]]) -> None:
    _, scenario = router_scenario(lab, "seed 000")
    stats = run_scenario(scenario, SEED_000, seed=0, local=150)
    assert stats["replies"] > 100 and stats["local"] > 0


def test_seed_001_mail_via_point_to_point_link(lab: Lab, run_scenario: Callable[..., dict[str, int]]) -> None:
    _, scenario = router_scenario(lab, "seed 001", p2p=[1])
    stats = run_scenario(scenario, SEED_001, seed=1, local=150)
    assert stats["replies"] > 100


def test_seed_004_balanced_router(lab: Lab, run_scenario: Callable[..., dict[str, int]]) -> None:
    _, scenario = router_scenario(lab, "seed 004", site=True)
    stats = run_scenario(scenario, SEED_004, seed=4, local=200)
    assert stats["balanced"] >= 300 and stats.get("drop", 0) > 0


def test_seed_004_hand_written_ruleset(lab: Lab, run_scenario: Callable[..., dict[str, int]]) -> None:
    """The seed's own table ip my_nat and ip rules, loaded without markroute."""
    r, scenario = router_scenario(lab, "seed 004 as written", site=True)
    lab.nft(r.rtr, SEED_004_NFT)
    for command in SEED_004_RPDB:
        lab.ip(r.rtr, *command)
    stats = run_scenario(scenario, None, seed=40, local=200)
    assert stats["balanced"] >= 300


def test_dual_stack_groups_sets_and_merged_policies(lab: Lab, run_scenario: Callable[..., dict[str, int]]) -> None:
    """Not a seed: IPv6 next to IPv4, a named set, DSCP, failover and balance groups, merged policy maps."""
    _, scenario = router_scenario(lab, "dual stack", ipv6=True)
    stats = run_scenario(scenario, DUAL_STACK, seed=6, local=200)
    # local flows from a non-main uplink's address are pinned to it (compile.bound), not balanced
    assert stats["balanced"] >= 80 and stats["replies"] > 100


def test_seed_002_reply_via_second_router(lab: Lab, run_scenario: Callable[..., dict[str, int]]) -> None:
    t = two_routers_lab(lab)
    remote = ("203.0.113.20", "203.0.113.0/24", "198.51.100.128/25", "192.168.10.9", "192.168.10.0/24")
    entries = (Entry("eth0", t.r1, "lan0", remote), Entry("eth0", t.r2, "lan0", remote))
    scenario = Scenario("seed 002", t.host, entries, (t.host_addr, t.host_addr, "192.168.10.1", "203.0.113.20",
                                                      "10.1.0.0/16"), ports=(80, 80, 22, 443))
    stats = run_scenario(scenario, SEED_002, seed=2)
    assert stats["local"] > 300 and stats["replies"] > 200


def test_seed_003_multihomed_host(lab: Lab, run_scenario: Callable[..., dict[str, int]]) -> None:
    m = multihomed_lab(lab)
    remote = (m.monitoring, "203.0.113.0/24", "198.51.100.128/25", "192.0.2.0/24", "10.10.0.9", "10.20.0.0/24")
    entries = (Entry("eth0", m.gw0, "lan0", remote), Entry("eth1", m.gw1, "lan0", remote))
    scenario = Scenario("seed 003", m.host, entries, (m.host_mgmt, m.host_ftp, m.host_ftp, m.monitoring,
                                                      "10.20.0.77"), ports=(21, 22, 80))
    stats = run_scenario(scenario, SEED_003, seed=3)
    assert stats["local"] > 300 and stats["replies"] > 300 and stats.get("drop", 0) > 0
