"""The nftables interpreter on hand-written rulesets, as nft itself lists them.

Each kernel test writes a ruleset in nft syntax, loads it into a throw-away namespace
and interprets what `nft -j list ruleset` prints, so the parser is proven on real
listings (implicit dependencies dropped, flags as lists, names for constants) rather
than on JSON written to suit it. The host around the ruleset is a small fixed router:
LAN on lan0, two uplinks, main's default route via wan0.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from markroute import sim
from markroute.lab import Lab
from markroute.sim.datatypes import Span, parse
from markroute.sim.packet import make_flow
from markroute.sim.sets import Lookup
from markroute.sim.trace import Path, Simulator

LAN_MAC = "02:00:00:00:00:01"
RULES = [dict(r, family=f) for r in ({"priority": 0, "src": "all", "table": "local"},
                                     {"priority": 32766, "src": "all", "table": "main"}) for f in ("inet", "inet6")]
ROUTES = [
    {"family": "inet", "dst": "default", "gateway": "10.0.0.1", "dev": "wan0"},
    {"family": "inet", "dst": "10.0.0.0/24", "dev": "wan0", "scope": "link"},
    {"family": "inet", "dst": "10.0.1.0/24", "dev": "wan1", "scope": "link"},
    {"family": "inet", "dst": "192.168.1.0/24", "dev": "lan0", "scope": "link"},
    {"family": "inet", "type": "local", "dst": "192.168.1.1", "dev": "lan0", "table": "local"},
    {"family": "inet", "type": "local", "dst": "10.0.0.2", "dev": "wan0", "table": "local"},
    {"family": "inet", "type": "local", "dst": "10.0.1.2", "dev": "wan1", "table": "local"},
    {"family": "inet", "type": "local", "dst": "127.0.0.0/8", "dev": "lo", "table": "local"},
    {"family": "inet6", "dst": "default", "gateway": "2001:db8:0:1::1", "dev": "wan0"},
    {"family": "inet6", "dst": "2001:db8:0:1::/64", "dev": "wan0"},
    {"family": "inet6", "dst": "fd00:1::/64", "dev": "lan0"},
    {"family": "inet6", "type": "local", "dst": "fd00:1::1", "dev": "lan0", "table": "local"},
]
LINKS = {
    "lan0": {"up": True, "mac": LAN_MAC, "addresses": ["192.168.1.1/24", "fd00:1::1/64"]},
    "wan0": {"up": True, "mac": "02:00:00:00:00:02", "addresses": ["10.0.0.2/24", "2001:db8:0:1::2/64"]},
    "wan1": {"up": True, "mac": "02:00:00:00:00:03", "addresses": ["10.0.1.2/24"]},
    "lo": {"up": True, "mac": "00:00:00:00:00:00", "addresses": ["127.0.0.1/8", "::1/128"]},
}
SYSCTLS = {"net/ipv4/ip_forward": "1", "net/ipv6/conf/all/forwarding": "1"}


def listing(lab: Lab, text: str) -> dict[str, Any]:
    """`nft -j list ruleset` of TEXT loaded into a namespace of its own."""
    ns = lab.add_ns(f"nft{len(lab.namespaces)}")
    lab.nft(ns, text)
    document: dict[str, Any] = json.loads(lab.run(ns, ["nft", "-j", "list", "ruleset"]).stdout)
    return document


def simulator(document: dict[str, Any], routes: list[dict[str, Any]] | None = None,
              rules: list[dict[str, Any]] | None = None) -> Simulator:
    snapshot = {"nftables": document, "rules": RULES + (rules or []), "routes": ROUTES + (routes or []),
                "links": LINKS}
    return sim.live(snapshot, SYSCTLS)


def trace(simulator: Simulator, src: str, dst: str, proto: str | None = "tcp", sport: int | None = 40000,
          dport: int | None = 443, iif: str | None = "lan0", **options: Any) -> list[Path]:
    ports = proto in ("tcp", "udp")
    flow = make_flow(src, dst, proto, sport if ports else None, dport if ports else None, iif,
                     iif is None, options.pop("mac", LAN_MAC if iif else None), **options)
    return simulator.paths(flow)


def only(paths: list[Path]) -> Any:
    assert len(paths) == 1, [p.outcome.label() for p in paths]
    return paths[0].outcome


pytestmark = pytest.mark.kernel


def test_base_chains_of_all_tables_run_by_priority(lab: Lab) -> None:
    simr = simulator(listing(lab, """
        table ip late {
            chain c { type filter hook prerouting priority 10; meta mark set meta mark | 0x1; }
        }
        table inet early {
            chain c { type filter hook prerouting priority -10; meta mark set 0x10; }
        }
        table ip6 other {
            chain c { type filter hook prerouting priority 0; meta mark set 0x99; }
        }
    """))
    assert only(trace(simr, "192.168.1.10", "203.0.113.9")).mark == 0x11
    assert only(trace(simr, "fd00:1::10", "2001:db8:9::1")).mark == 0x99


def test_jump_returns_goto_does_not(lab: Lab) -> None:
    simr = simulator(listing(lab, """
        table inet t {
            chain pre { type filter hook prerouting priority 0;
                ip daddr 203.0.113.1 jump sub
                ip daddr 203.0.113.2 goto sub
                meta mark set meta mark | 0x100
            }
            chain sub { meta mark set meta mark | 0x1; return; meta mark set 0x7777; }
        }
    """))
    assert only(trace(simr, "192.168.1.10", "203.0.113.1")).mark == 0x101
    assert only(trace(simr, "192.168.1.10", "203.0.113.2")).mark == 0x1, "goto: return ends the base chain"
    assert only(trace(simr, "192.168.1.10", "203.0.113.3")).mark == 0x100


def test_sets_maps_and_verdict_maps_named_and_anonymous(lab: Lab) -> None:
    simr = simulator(listing(lab, """
        table inet t {
            set nets { type ipv4_addr; flags interval; elements = { 10.20.0.0/16, 203.0.113.10-203.0.113.20 } }
            set pairs { type ipv4_addr . inet_service; elements = { 192.168.1.10 . 443 } }
            set ranges { type ipv4_addr . inet_proto . inet_service; flags interval;
                         elements = { 192.168.1.0/24 . udp . 5000-5999 } }
            map marks { type ipv4_addr : mark; flags interval; elements = { 198.51.100.0/24 : 0x30 } }
            map verdicts { type mark : verdict; elements = { 0x30 : drop } }
            chain pre { type filter hook prerouting priority 0;
                ip daddr @nets meta mark set 0x1 accept
                ip saddr . tcp dport @pairs meta mark set 0x2 accept
                ip saddr . meta l4proto . th dport @ranges meta mark set 0x3 accept
                ip saddr . ip daddr { 192.168.1.11 . 192.0.2.5 } meta mark set 0x4 accept
                meta mark set ip daddr map @marks
                meta mark vmap @verdicts
                tcp dport vmap { 22 : drop, 80-90 : jump web }
            }
            chain web { meta mark set 0x50; }
        }
    """))
    assert only(trace(simr, "192.168.1.99", "203.0.113.15", dport=80)).mark == 0x1
    assert only(trace(simr, "192.168.1.10", "192.0.2.1", dport=443)).mark == 0x2
    assert only(trace(simr, "192.168.1.12", "192.0.2.1", proto="udp", dport=5500)).mark == 0x3
    assert only(trace(simr, "192.168.1.12", "192.0.2.1", proto="udp", dport=6000)).mark == 0x0
    assert only(trace(simr, "192.168.1.11", "192.0.2.5", proto="icmp")).mark == 0x4
    assert only(trace(simr, "192.168.1.12", "198.51.100.7")).verdict == "drop"
    assert only(trace(simr, "192.168.1.12", "192.0.2.1", dport=22)).verdict == "drop"
    assert only(trace(simr, "192.168.1.12", "192.0.2.1", dport=85)).mark == 0x50


def test_marks_with_masks_and_binary_operations(lab: Lab) -> None:
    simr = simulator(listing(lab, """
        table inet t {
            chain pre { type filter hook prerouting priority 0;
                meta mark set 0x12345678
                meta mark set meta mark & 0xffff01ff | 0x100
                ct mark set meta mark ^ 0xf
                meta mark & 0xff00 == 0x100 ct mark set ct mark | 0x10000000
            }
        }
    """))
    outcome = only(trace(simr, "192.168.1.10", "203.0.113.9"))
    assert outcome.mark == (0x12345678 & 0xFFFF01FF) | 0x100
    assert outcome.ct_mark == (outcome.mark ^ 0xF) | 0x10000000


def test_conntrack_state_direction_and_mark_of_replies(lab: Lab) -> None:
    simr = simulator(listing(lab, """
        table inet t {
            chain pre { type filter hook prerouting priority mangle;
                ct state established,related ct direction reply meta mark set ct mark accept
                ct state new iifname "lan0" ct mark set 0x200
                ct state new meta mark set 0x1
            }
        }
    """), routes=[{"family": "inet", "dst": "default", "gateway": "10.0.1.1", "dev": "wan1", "table": "200"}])
    first = only(trace(simr, "192.168.1.10", "203.0.113.9"))
    assert (first.mark, first.ct_mark, first.reply["mark"]) == (0x1, 0x200, "0x200")
    reply = only(trace(simr, "192.168.1.10", "203.0.113.9", reply=True))
    assert (reply.verdict, reply.oif, reply.mark) == ("forward", "lan0", 0x200)


def test_numgen_maps_are_probabilities(lab: Lab) -> None:
    simr = simulator(listing(lab, """
        table inet t {
            chain pre { type filter hook prerouting priority 0;
                meta mark set numgen random mod 10 map { 0-3 : 0x100, 4-10 : 0x200 }
                numgen random mod 4 vmap { 0 : accept, 1-3 : jump more }
            }
            chain more { meta mark set meta mark | 0x1; }
        }
    """))
    shares = {(p.outcome.mark): round(p.probability, 6) for p in trace(simr, "192.168.1.10", "203.0.113.9")}
    assert shares == {0x100: 0.1, 0x101: 0.3, 0x200: 0.15, 0x201: 0.45}


def test_payload_and_meta_matches(lab: Lab) -> None:
    simr = simulator(listing(lab, """
        table inet t {
            chain pre { type filter hook prerouting priority 0;
                ether saddr 52:54:00:c2:a5:43 meta mark set 0x1 accept
                ip dscp ef meta mark set 0x2 accept
                icmp type echo-request meta mark set 0x3 accept
                icmpv6 type echo-request meta mark set 0x4 accept
                meta l4proto udp udp sport 1-1023 meta mark set 0x5 accept
                tcp flags & (syn | ack) == syn tcp dport 25 meta mark set 0x6 accept
                iifname "wan*" meta nfproto ipv4 meta mark set 0x7 accept
                ip6 nexthdr tcp meta mark set 0x9 accept
            }
        }
    """))
    mark = lambda **kw: only(trace(simr, **kw)).mark  # noqa: E731
    assert mark(src="192.168.1.10", dst="192.0.2.1", mac="52:54:00:c2:a5:43") == 0x1
    assert mark(src="192.168.1.10", dst="192.0.2.1", dscp="ef") == 0x2
    assert mark(src="192.168.1.10", dst="192.0.2.1", proto="icmp") == 0x3
    assert mark(src="fd00:1::10", dst="2001:db8:9::1", proto="icmpv6") == 0x4
    assert mark(src="192.168.1.10", dst="192.0.2.1", proto="udp", sport=123, dport=123) == 0x5
    assert mark(src="192.168.1.10", dst="192.0.2.1", dport=25) == 0x6
    assert mark(src="198.51.100.7", dst="192.168.1.10", iif="wan1") == 0x7
    assert mark(src="fd00:1::10", dst="2001:db8:9::1") == 0x9
    assert mark(src="192.168.1.10", dst="192.0.2.1") == 0x0


def test_a_match_on_a_value_the_flow_does_not_give_is_indeterminate(lab: Lab) -> None:
    simr = simulator(listing(lab, """
        table inet t {
            chain pre { type filter hook prerouting priority 0; ether saddr 52:54:00:c2:a5:43 drop; }
        }
    """))
    outcome = only(trace(simr, "192.168.1.10", "192.0.2.1", mac=None))
    assert outcome.verdict == "indeterminate"
    assert outcome.indeterminate["expression"] == "ether saddr" and "--mac" in outcome.indeterminate["reason"]


def test_fib_type_local_and_reverse_path_lookup(lab: Lab) -> None:
    simr = simulator(listing(lab, """
        table inet t {
            chain pre { type filter hook prerouting priority 0;
                fib daddr type local meta mark set 0x1 accept
                fib saddr . iif oif missing drop
            }
        }
    """))
    assert only(trace(simr, "192.168.1.10", "10.0.1.2")).mark == 0x1
    assert only(trace(simr, "192.168.1.10", "198.51.100.9")).verdict == "forward"
    spoofed = only(trace(simr, "198.51.100.7", "192.0.2.1"))
    assert spoofed.verdict == "drop", "the route back to 198.51.100.7 leaves by wan0, not lan0"


def test_nat_chains_masquerade_snat_dnat_and_redirect(lab: Lab) -> None:
    simr = simulator(listing(lab, """
        table ip nat {
            chain pre { type nat hook prerouting priority dstnat;
                tcp dport 8080 dnat to 10.0.1.50:80
                tcp dport 2222 redirect to :22
            }
            chain post { type nat hook postrouting priority srcnat;
                oifname "wan0" masquerade
                oifname "wan1" snat to 10.0.1.99
            }
        }
        table ip late {
            chain post { type nat hook postrouting priority 200; oifname "wan0" snat to 10.0.0.77; }
        }
    """))
    out = only(trace(simr, "192.168.1.10", "203.0.113.9"))
    assert (out.oif, out.snat) == ("wan0", "10.0.0.2"), "only the first NAT chain that binds counts"
    forwarded = only(trace(simr, "192.168.1.10", "203.0.113.9", dport=8080))
    assert (forwarded.oif, forwarded.next_hop, forwarded.dnat, forwarded.snat) == ("wan1", "10.0.1.50",
                                                                                   "10.0.1.50", "10.0.1.99")
    redirected = only(trace(simr, "192.168.1.10", "203.0.113.9", dport=2222))
    assert (redirected.verdict, redirected.dnat) == ("local", "192.168.1.1")


def test_a_route_chain_reroutes_local_traffic_and_a_filter_chain_does_not(lab: Lab) -> None:
    table_200 = [{"family": "inet", "dst": "default", "gateway": "10.0.1.1", "dev": "wan1", "table": "200"}]
    fwmark = [{"family": "inet", "priority": 100, "src": "all", "fwmark": "0x1", "table": "200"}]
    for kind, oif in (("route", "wan1"), ("filter", "wan0")):
        ruleset = listing(lab, f"""
            table ip t {{
                chain out {{ type {kind} hook output priority mangle; meta mark set 0x1; }}
            }}
        """)
        simr = simulator(ruleset, routes=table_200, rules=fwmark)
        assert only(trace(simr, "10.0.0.2", "203.0.113.9", iif=None)).oif == oif, kind


def test_forward_policy_drop_and_unmodelled_statements(lab: Lab) -> None:
    simr = simulator(listing(lab, """
        table inet f {
            chain forward_chain { type filter hook forward priority 0; policy drop;
                counter
                log prefix "fwd "
                ct state vmap { established : accept, new : continue }
                ip daddr 192.0.2.0/24 accept
                ip daddr 198.51.100.0/24 limit rate 10/second accept
            }
        }
    """))
    assert only(trace(simr, "192.168.1.10", "192.0.2.1")).verdict == "forward"
    dropped = only(trace(simr, "192.168.1.10", "203.0.113.1"))
    assert dropped.verdict == "drop" and "policy drop" in dropped.reason
    unknown = only(trace(simr, "192.168.1.10", "198.51.100.1"))
    assert unknown.verdict == "indeterminate" and "limit" in unknown.indeterminate["expression"]
    assert "{" not in unknown.indeterminate["expression"]  # in words, never JSON
    assert unknown.indeterminate["rule"].startswith("table inet f, chain forward_chain, rule handle ")


# -- without a kernel ------------------------------------------------------------------------


@pytest.mark.parametrize(("dtype", "value", "expected"), [
    ("ipv4_addr", {"prefix": {"addr": "10.0.0.0", "len": 8}}, Span(0x0A000000, 0x0AFFFFFF)),
    ("ipv4_addr", {"range": ["192.0.2.1", "192.0.2.9"]}, Span(0xC0000201, 0xC0000209)),
    ("ct_state", ["established", "related"], 6),
    ("tcp_flag", ["syn", "ack"], 0x12),
    ("dscp", "ef", 46),
    ("inet_proto", "udp", 17),
    ("icmp_type", "echo-request", 8),
    ("mark", 512, 512),
])
def test_constants_become_comparable_values(dtype: str, value: Any, expected: Any) -> None:
    assert parse(dtype, value) == expected


def test_interval_lookup_and_its_partition_for_numgen() -> None:
    lookup = Lookup([Span(0, 3), Span(4, 10), 42])
    assert [lookup.find(v) for v in (0, 3, 4, 10, 11, 42)] == [0, 0, 1, 1, -1, 2]
    assert sorted(lookup.partition(0, 9)) == [(4, 0), (6, 1)]
