"""The seeds' own hand-written rules, as their authors meant them, interpreted as nft lists them.

The seeds are not markroute configs: seed 000 writes nftables tables and ip rules,
seeds 002 and 003 iptables rules (translated here to the nftables their authors would
write today), seed 004 a whole nftables table. Each is loaded into a throw-away
namespace and read back with `nft -j list ruleset`; the simulator must then tell the
story the seed tells. Seed 000's `type route hook postrouting` chain does not exist in
nftables and is left out; its intent (mark 0x1 leaves by eth0) is done by ip rules.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from test_trace_differential import SEED_004_NFT

from markroute import sim
from markroute.lab import Lab
from markroute.sim.packet import make_flow
from markroute.sim.trace import Outcome, Path, Simulator

pytestmark = pytest.mark.kernel

KERNEL_RULES = [{"family": "inet", "priority": 0, "src": "all", "table": "local"},
                {"family": "inet", "priority": 32766, "src": "all", "table": "main"}]


def listing(lab: Lab, text: str) -> dict[str, Any]:
    ns = lab.add_ns(f"seed{len(lab.namespaces)}")
    lab.nft(ns, text)
    document: dict[str, Any] = json.loads(lab.run(ns, ["nft", "-j", "list", "ruleset"]).stdout)
    return document


def host(document: dict[str, Any], interfaces: dict[str, str], rules: list[dict[str, Any]],
         routes: list[dict[str, Any]], sysctls: dict[str, str]) -> Simulator:
    """A simulator of a host with INTERFACES (name: address/prefix) and connected and local routes."""
    links: dict[str, Any] = {}
    every = list(routes)
    for name, cidr in interfaces.items():
        address, length = cidr.split("/")
        links[name] = {"up": True, "mac": f"02:00:00:00:00:{len(links):02x}", "addresses": [cidr]}
        network = ".".join(address.split(".")[:3]) + ".0" if length == "24" else address
        every.append({"family": "inet", "dst": f"{network}/{length}", "dev": name, "scope": "link"})
        every.append({"family": "inet", "type": "local", "dst": address, "dev": name, "table": "local"})
    snapshot = {"nftables": document, "rules": KERNEL_RULES + rules, "routes": every, "links": links}
    return sim.live(snapshot, sysctls)


def paths(simulator: Simulator, src: str, dst: str, iif: str | None, **options: Any) -> list[Path]:
    return simulator.paths(make_flow(src, dst, "tcp", options.pop("sport", 40000), options.pop("dport", 443), iif,
                                     iif is None, **options))


def one(simulator: Simulator, src: str, dst: str, iif: str | None, **options: Any) -> Outcome:
    found = paths(simulator, src, dst, iif, **options)
    assert len(found) == 1, [p.outcome.label() for p in found]
    return found[0].outcome


def test_seed_000_mark_then_fwmark_rule_then_masquerade_by_mark(lab: Lab) -> None:
    document = listing(lab, """
        table ip mangle {
            chain prerouting {
                type filter hook prerouting priority mangle; policy accept;
                ip saddr 192.168.1.0/24 ip daddr 1.1.1.1 meta mark set 0x1
            }
        }
        table ip nat {
            chain postrouting {
                type nat hook postrouting priority 100; policy accept;
                meta mark 0x1 ip daddr 0.0.0.0/0 oifname "eth0" masquerade
                meta mark 0x0 ip daddr 0.0.0.0/0 oifname "eth1" masquerade
            }
        }
    """)
    simulator = host(document, {"lan0": "192.168.1.1/24", "eth0": "10.0.0.2/24", "eth1": "10.0.1.2/24"},
                     [{"family": "inet", "priority": 1000, "src": "all", "fwmark": "0x1", "table": "100"}],
                     [{"family": "inet", "dst": "default", "gateway": "10.0.0.1", "dev": "eth0", "table": "100"},
                      {"family": "inet", "dst": "default", "gateway": "10.0.1.1", "dev": "eth1"}],
                     {"net/ipv4/ip_forward": "1"})
    cloudflare = one(simulator, "192.168.1.20", "1.1.1.1", "lan0")
    assert (cloudflare.oif, cloudflare.next_hop, cloudflare.mark, cloudflare.snat) == ("eth0", "10.0.0.1", 1,
                                                                                        "10.0.0.2")
    other = one(simulator, "192.168.1.20", "9.9.9.9", "lan0")
    assert (other.oif, other.mark, other.snat, other.table) == ("eth1", 0, "10.0.1.2", "main")


IPTABLES_002 = """
    table ip mangle {
        chain INPUT {
            type filter hook input priority mangle; policy accept;
            ip protocol tcp tcp dport 80 ct state new ether saddr 52:54:00:c2:a5:43 ip saddr != 192.168.10.0/24 meta mark set 0x2
            ct mark set meta mark
            ct state established,related meta mark set ct mark
        }
        chain OUTPUT {
            type route hook output priority mangle; policy accept;
            meta mark set ct mark
        }
    }
"""


def test_seed_002_connmark_on_input_sends_replies_back_through_router_2(lab: Lab) -> None:
    simulator = host(listing(lab, IPTABLES_002), {"eth0": "192.168.10.50/24"},
                     [{"family": "inet", "priority": 32000, "src": "all", "fwmark": "0x2", "table": "200"}],
                     [{"family": "inet", "dst": "default", "gateway": "192.168.10.2", "dev": "eth0", "table": "200"},
                      {"family": "inet", "dst": "default", "gateway": "192.168.10.1", "dev": "eth0"}], {})
    via_r2 = one(simulator, "203.0.113.9", "192.168.10.50", "eth0", dport=80, mac="52:54:00:c2:a5:43", reply=True)
    assert (via_r2.verdict, via_r2.next_hop, via_r2.mark) == ("forward", "192.168.10.2", 2)
    via_r1 = one(simulator, "203.0.113.9", "192.168.10.50", "eth0", dport=80, mac="52:54:00:11:22:33", reply=True)
    assert (via_r1.next_hop, via_r1.mark) == ("192.168.10.1", 0)


IPTABLES_003 = """
    table ip mangle {
        chain PREROUTING {
            type filter hook prerouting priority mangle; policy accept;
            iifname "eth1" meta mark set 0x1
            iifname "eth1" ct mark set meta mark
        }
        chain OUTPUT {
            type route hook output priority mangle; policy accept;
            meta mark set ct mark
        }
    }
"""


@pytest.mark.parametrize("src_valid_mark", ["1", "0"])
def test_seed_003_fwmark_table_and_src_valid_mark_under_strict_rp_filter(lab: Lab, src_valid_mark: str) -> None:
    simulator = host(listing(lab, IPTABLES_003), {"eth0": "10.10.0.5/24", "eth1": "10.20.0.5/24"},
                     [{"family": "inet", "priority": 1000, "src": "all", "fwmark": "0x1", "table": "100"}],
                     [{"family": "inet", "dst": "default", "gateway": "10.20.0.1", "dev": "eth1", "table": "100"},
                      {"family": "inet", "dst": "default", "gateway": "10.20.0.1", "dev": "eth1"},
                      {"family": "inet", "dst": "203.0.113.0/24", "gateway": "10.10.0.1", "dev": "eth0"}],
                     {"net/ipv4/conf/all/rp_filter": "1", "net/ipv4/conf/eth1/src_valid_mark": src_valid_mark})
    syn = one(simulator, "203.0.113.7", "10.20.0.5", "eth1", dport=21)
    if src_valid_mark == "0":
        assert syn.verdict == "drop" and "strict rp_filter" in str(syn.reason)
        return
    assert syn.verdict == "local"
    assert syn.reply is not None and (syn.reply["oif"], syn.reply["next_hop"]) == ("eth1", "10.20.0.1")


def test_seed_004_table_balances_lan_traffic_and_drops_unsolicited_wan_connections(lab: Lab) -> None:
    """The seed's table as the differential test loads it; its routes and SNATs kept as written."""
    simulator = host(listing(lab, SEED_004_NFT),
                     {"lan0": "192.168.1.1/24", "wan0": "10.0.0.2/24", "wan1": "10.0.1.2/24"},
                     [{"family": "inet", "priority": 100, "src": "all", "fwmark": "100", "table": "100"},
                      {"family": "inet", "priority": 101, "src": "all", "fwmark": "101", "table": "101"}],
                     [{"family": "inet", "dst": "default", "gateway": "10.0.0.1", "dev": "wan0", "table": "100"},
                      {"family": "inet", "dst": "default", "gateway": "10.0.1.1", "dev": "wan1", "table": "101"},
                      {"family": "inet", "dst": "default", "gateway": "10.0.0.1", "dev": "wan0"}],
                     {"net/ipv4/ip_forward": "1"})
    found = paths(simulator, "192.168.1.5", "203.0.113.9", "lan0")
    split = {(p.outcome.oif, p.outcome.snat): round(p.probability, 9) for p in found}
    # As the seed wrote it: mark 100 is routed by table 100 (eth1) but SNATed to eth2's address.
    assert split == {("wan0", "10.0.1.2"): 0.4, ("wan1", "10.0.0.2"): 0.6}
    assert one(simulator, "203.0.113.9", "192.168.1.5", "wan0").verdict == "drop"
