"""`trace --live` against the kernel on a router that also runs other programs' rules.

Docker (like ufw and kube-proxy) writes its rules with iptables-nft, next to markroute's
table: FORWARD policy DROP, the DOCKER-USER, DOCKER and DOCKER-ISOLATION chains, a
MASQUERADE for the container network, a DNAT port forward reached through `addrtype
--dst-type LOCAL`, conntrack RELATED,ESTABLISHED accepts; and ufw-style input filtering
(policy DROP, multiport, REJECT, a rate-limited LOG). Several of those stay
iptables `xt` expressions in nf_tables, whose options only iptables-nft-save shows.
The rules here are installed with iptables-nft itself, exactly as Docker's own code
issues them, then real flows are sent as in `test_trace_differential` and every flow's
fate (dropped, delivered, forwarded by which interface and next hop, with which mark
and NAT source) must be what the simulator, reading the namespace live, said.
"""

from __future__ import annotations

import json
import random
import shlex
from typing import Any

import pytest
from kernelhelp import markroute
from test_trace_differential import (
    Entry,
    Scenario,
    collect,
    compare,
    live_simulator,
    local_flows,
    observe,
    random_flows,
    router_scenario,
    run_traffic,
)

from markroute.lab import Lab

pytestmark = pytest.mark.kernel

CONFIG = """
uplinks:
  isp_a: {interface: wan0, gateway: 10.0.0.1, nat: masquerade}
  isp_b: {interface: wan1, gateway: 10.0.1.1, nat: masquerade}
policies:
  - name: containers-via-a
    from: 172.17.0.0/16
    via: isp_a
  - name: server-via-a
    from: 192.168.1.0/24
    to: 203.0.113.10
    via: isp_a
  - name: rest-via-b
    from: 192.168.1.0/24
    via: isp_b
"""

# What dockerd 24 runs (through iptables-nft) for a bridge network docker0 with one
# container 172.17.0.2 publishing port 80 as 8080, plus what an admin adds to DOCKER-USER
# so the LAN may still reach the internet through this router.
DOCKER = """
-t nat -N DOCKER
-t nat -A PREROUTING -m addrtype --dst-type LOCAL -j DOCKER
-t nat -A OUTPUT ! -d 127.0.0.0/8 -m addrtype --dst-type LOCAL -j DOCKER
-t nat -A POSTROUTING -s 172.17.0.0/16 ! -o docker0 -j MASQUERADE
-t nat -A POSTROUTING -s 172.17.0.2/32 -d 172.17.0.2/32 -p tcp -m tcp --dport 80 -j MASQUERADE
-t nat -A DOCKER -i docker0 -j RETURN
-t nat -A DOCKER ! -i docker0 -p tcp -m tcp --dport 8080 -j DNAT --to-destination 172.17.0.2:80
-P FORWARD DROP
-N DOCKER
-N DOCKER-ISOLATION-STAGE-1
-N DOCKER-ISOLATION-STAGE-2
-N DOCKER-USER
-A FORWARD -j DOCKER-USER
-A FORWARD -j DOCKER-ISOLATION-STAGE-1
-A FORWARD -o docker0 -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
-A FORWARD -o docker0 -j DOCKER
-A FORWARD -i docker0 ! -o docker0 -j ACCEPT
-A FORWARD -i docker0 -o docker0 -j ACCEPT
-A DOCKER -d 172.17.0.2/32 ! -i docker0 -o docker0 -p tcp -m tcp --dport 80 -j ACCEPT
-A DOCKER-ISOLATION-STAGE-1 -i docker0 ! -o docker0 -j DOCKER-ISOLATION-STAGE-2
-A DOCKER-ISOLATION-STAGE-1 -j RETURN
-A DOCKER-ISOLATION-STAGE-2 -o docker0 -j DROP
-A DOCKER-ISOLATION-STAGE-2 -j RETURN
-A DOCKER-USER -m conntrack --ctstate RELATED,ESTABLISHED -m comment --comment "replies" -j ACCEPT
-A DOCKER-USER -i lan0 -p tcp -m multiport --dports 22,80,443:445 -j ACCEPT
-A DOCKER-USER -i lan0 -p udp -m conntrack --ctstate NEW -j ACCEPT
-A DOCKER-USER -i lan0 -p icmp -m icmp --icmp-type 8 -j ACCEPT
-A DOCKER-USER -i wan1 -p tcp -m tcp --dport 22 -j REJECT --reject-with tcp-reset
-A DOCKER-USER -j RETURN
"""

# ufw-style input filtering (ufw's chains folded into INPUT), with its rate-limited LOG.
UFW = """
-P INPUT DROP
-A INPUT -i lo -j ACCEPT
-A INPUT -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
-A INPUT -m conntrack --ctstate INVALID -j DROP
-A INPUT -p icmp -m icmp --icmp-type 8 -j ACCEPT
-A INPUT -m addrtype ! --dst-type LOCAL -j DROP
-A INPUT -p tcp -m multiport --dports 22,80 -m comment --comment "'dapp_OpenSSH'" -j ACCEPT
-A INPUT -p udp -m udp --dport 53 -j ACCEPT
-A INPUT -p tcp -m tcp --dport 443 -j REJECT --reject-with tcp-reset
-A INPUT -m limit --limit 3/min --limit-burst 10 -j LOG --log-prefix "[UFW BLOCK] "
"""


# The shape of firewalld's own nftables table (firewalld 1.x, nftables backend): zones
# dispatched by interface with goto, `ct status dnat`, `fib ... oif missing`, `reject with
# icmpx`, a port forward and masquerading in the public zone. Forwarding from the LAN
# is allowed out of wan0 only, so where markroute routes a flow decides its fate.
FIREWALLD = """
table inet firewalld {
    chain mangle_PREROUTING {
        type filter hook prerouting priority mangle + 10; policy accept;
        jump mangle_PREROUTING_ZONES
    }
    chain mangle_PREROUTING_ZONES {
        iifname { "wan0", "wan1" } goto mangle_PRE_public
        goto mangle_PRE_internal
    }
    chain mangle_PRE_public { jump mangle_PRE_public_allow; }
    chain mangle_PRE_public_allow { }
    chain mangle_PRE_internal { }
    chain nat_PREROUTING {
        type nat hook prerouting priority dstnat + 10; policy accept;
        jump nat_PREROUTING_ZONES
    }
    chain nat_PREROUTING_ZONES {
        iifname { "wan0", "wan1" } goto nat_PRE_public
        goto nat_PRE_internal
    }
    chain nat_PRE_public { jump nat_PRE_public_allow; }
    chain nat_PRE_public_allow { meta nfproto ipv4 tcp dport 8080 dnat ip to 192.168.1.10:80; }
    chain nat_PRE_internal { }
    chain nat_POSTROUTING {
        type nat hook postrouting priority srcnat + 10; policy accept;
        jump nat_POSTROUTING_ZONES
    }
    chain nat_POSTROUTING_ZONES {
        oifname { "wan0", "wan1" } goto nat_POST_public
        goto nat_POST_internal
    }
    chain nat_POST_public { jump nat_POST_public_allow; }
    chain nat_POST_public_allow { meta nfproto ipv4 oifname != "lo" masquerade; }
    chain nat_POST_internal { }
    chain filter_PREROUTING {
        type filter hook prerouting priority filter + 10; policy accept;
        icmpv6 type { nd-router-advert, nd-neighbor-solicit } accept
        meta nfproto ipv6 fib saddr . mark . iif oif missing drop
    }
    chain filter_INPUT {
        type filter hook input priority filter + 10; policy accept;
        ct state { established, related } accept
        ct status dnat accept
        iifname "lo" accept
        ct state invalid drop
        jump filter_INPUT_ZONES
        reject with icmpx admin-prohibited
    }
    chain filter_FORWARD {
        type filter hook forward priority filter + 10; policy accept;
        ct state { established, related } accept
        ct status dnat accept
        iifname "lo" accept
        ct state invalid drop
        ip6 daddr { ::/96, ::ffff:0.0.0.0/96, 2002::/24, 2002:a00::/24, 2002:7f00::/24, 2002:a9fe::/32, 2002:ac10::/28, 2002:c0a8::/32, 2002:e000::/19 } reject with icmpv6 addr-unreachable
        jump filter_FORWARD_ZONES
        reject with icmpx admin-prohibited
    }
    chain filter_INPUT_ZONES {
        iifname { "wan0", "wan1" } goto filter_IN_public
        goto filter_IN_internal
    }
    chain filter_IN_public {
        jump filter_IN_public_allow
        meta l4proto { icmp, ipv6-icmp } accept
    }
    chain filter_IN_public_allow {
        tcp dport 22 ct state { new, untracked } accept
        ip6 daddr fe80::/64 udp dport 546 ct state { new, untracked } accept
    }
    chain filter_IN_internal {
        tcp dport { 22, 53, 80 } ct state { new, untracked } accept
        udp dport 53 ct state { new, untracked } accept
        meta l4proto { icmp, ipv6-icmp } accept
    }
    chain filter_FORWARD_ZONES {
        iifname { "wan0", "wan1" } goto filter_FWD_public
        goto filter_FWD_internal
    }
    chain filter_FWD_public { }
    chain filter_FWD_internal { oifname "wan0" accept; }
}
"""


# kube-proxy (iptables mode) for one ClusterIP service with two endpoints, and an ipset of
# blocked sources; markroute's marks moved out of kube-proxy's masquerade bit 0x4000.
KUBE_CONFIG = CONFIG + """
settings:
  mark_mask: 0xff0000
"""
KUBE = """
-t nat -N KUBE-SERVICES
-t nat -N KUBE-SVC-WEB
-t nat -N KUBE-SEP-A
-t nat -N KUBE-SEP-B
-t nat -N KUBE-MARK-MASQ
-t nat -N KUBE-POSTROUTING
-t nat -A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-t nat -A OUTPUT -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-t nat -A POSTROUTING -m comment --comment "kubernetes postrouting rules" -j KUBE-POSTROUTING
-t nat -A KUBE-SERVICES ! -s 10.244.0.0/16 -d 10.96.0.10/32 -p tcp -m comment --comment "default/web cluster IP" -m tcp --dport 80 -j KUBE-MARK-MASQ
-t nat -A KUBE-SERVICES -d 10.96.0.10/32 -p tcp -m comment --comment "default/web cluster IP" -m tcp --dport 80 -j KUBE-SVC-WEB
-t nat -A KUBE-SVC-WEB -m comment --comment "default/web -> 10.244.0.5:8080" -m statistic --mode random --probability 0.25000000000 -j KUBE-SEP-A
-t nat -A KUBE-SVC-WEB -m comment --comment "default/web -> 10.244.0.6:8080" -j KUBE-SEP-B
-t nat -A KUBE-SEP-A -s 10.244.0.5/32 -m comment --comment "default/web" -j KUBE-MARK-MASQ
-t nat -A KUBE-SEP-A -p tcp -m comment --comment "default/web" -m tcp -j DNAT --to-destination 10.244.0.5:8080
-t nat -A KUBE-SEP-B -s 10.244.0.6/32 -m comment --comment "default/web" -j KUBE-MARK-MASQ
-t nat -A KUBE-SEP-B -p tcp -m comment --comment "default/web" -m tcp -j DNAT --to-destination 10.244.0.6:8080
-t nat -A KUBE-MARK-MASQ -j MARK --or-mark 0x4000
-t nat -A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN
-t nat -A KUBE-POSTROUTING -j MARK --xor-mark 0x4000
-t nat -A KUBE-POSTROUTING -m comment --comment "kubernetes service traffic requiring SNAT" -j MASQUERADE --random-fully
-A FORWARD -i wan0 -m set --match-set blocked src -j DROP
-A FORWARD -m conntrack --ctstate INVALID -j DROP
"""
BLOCKED = """
create blocked hash:net family inet
add blocked 203.0.113.0/25
add blocked 203.0.113.64/26 nomatch
"""


def install_kube(lab: Lab, router: str) -> None:
    """Two pods (one namespace with both endpoint addresses) behind cni0, kube-proxy's rules, an ipset."""
    pods = lab.add_ns("pods")
    lab.veth(router, "cni0", pods, "eth0")
    lab.addr(router, "cni0", "10.244.0.1/24")
    lab.addr(pods, "eth0", "10.244.0.5/24")
    lab.addr(pods, "eth0", "10.244.0.6/24")
    lab.route(pods, "default", "via", "10.244.0.1")
    lab.run(router, ["ipset", "restore"], input=BLOCKED.lstrip())
    _iptables(lab, router, KUBE)


def _iptables(lab: Lab, router: str, rules: str) -> None:
    for line in rules.split("\n"):
        if line.strip():
            lab.run(router, ["iptables-nft", "-w", *shlex.split(line)])


def install_docker(lab: Lab, router: str) -> None:
    """The container network (a veth docker0 to a container namespace), Docker's and ufw's rules."""
    container = lab.add_ns("ctr")
    lab.veth(router, "docker0", container, "eth0")
    lab.addr(router, "docker0", "172.17.0.1/16")
    lab.addr(container, "eth0", "172.17.0.2/16")
    lab.route(container, "default", "via", "172.17.0.1")
    _iptables(lab, router, DOCKER + UFW)


def docker_scenario(lab: Lab) -> tuple[Any, Scenario]:
    r, base = router_scenario(lab, "docker neighbours")
    install_docker(lab, r.rtr)
    container = next(ns for ns in lab.namespaces if ns.endswith("-ctr"))
    entries = base.entries + (Entry("docker0", container, "eth0", ("172.17.0.2", "172.17.0.0/16")),)
    destinations = base.destinations + (*r.rtr_wan_v4, *r.rtr_wan_v4, "172.17.0.2", "172.17.0.2", "172.17.0.0/16")
    return r, Scenario(base.name, base.router, entries, destinations, local_sources=base.local_sources,
                       local_destinations=base.local_destinations + ("172.17.0.2",),
                       ports=(22, 53, 80, 443, 8080, 8080, 8080))


def test_docker_rules_next_to_markroute(lab: Lab, markroute_cli: Any, weighted_split: Any) -> None:
    r, scenario = docker_scenario(lab)
    markroute_cli.apply(scenario.router, CONFIG)
    saved = lab.run(scenario.router, ["iptables-nft-save"]).stdout
    listing = lab.run(scenario.router, ["nft", "-j", "list", "ruleset"]).stdout
    assert '"xt"' in listing and "addrtype --dst-type LOCAL" in saved, "the rules should hold xt expressions"
    simulator = live_simulator(scenario.router)
    observe(lab, scenario.router)
    rng = random.Random(18)
    flows = random_flows(lab, scenario, rng, 800)
    flows += local_flows(scenario, rng, 100, flows)
    run_traffic(lab, scenario, flows)
    seen = collect(lab, scenario.router)
    stats = compare(scenario, simulator, flows, seen, weighted_split)
    print(scenario.name, stats)
    assert stats["drop"] > 50 and stats["forward"] > 100 and stats["local"] > 20 and stats["replies"] > 50
    # the port forward and the container's masquerade were among the flows the kernel handled
    dnat = [f for f in flows if f.dst in r.rtr_wan_v4 and f.proto == 6 and f.dport == 8080 and f.iif != "docker0"]
    assert any(seen.get(f.key) and seen[f.key].oif["original"] for f in dnat)


def test_kube_proxy_rules_next_to_markroute(lab: Lab, markroute_cli: Any, weighted_split: Any) -> None:
    """statistic's random draw must fit the kernel's choices; an ipset with a nomatch entry filters."""
    r, base = router_scenario(lab, "kube-proxy neighbour")
    install_kube(lab, r.rtr)
    markroute_cli.apply(r.rtr, KUBE_CONFIG)
    lan, wan = base.entries[0], base.entries[1]
    entries = (Entry(lan.iif, lan.ns, lan.ifname, ("192.168.1.0/24",)),
               Entry(wan.iif, wan.ns, wan.ifname, ("203.0.113.0/24",)))
    scenario = Scenario(base.name, base.router, entries,
                        ("10.96.0.10",) * 20 + ("198.51.100.0/24", "10.244.0.5", r.rtr_lan_v4),
                        ports=(80,) * 10 + (443,))
    simulator = live_simulator(scenario.router)
    observe(lab, scenario.router)
    rng = random.Random(1819)
    flows = random_flows(lab, scenario, rng, 2000)
    run_traffic(lab, scenario, flows)
    stats = compare(scenario, simulator, flows, collect(lab, scenario.router), weighted_split)
    print(scenario.name, stats)
    assert stats["balanced"] >= 300 and stats["drop"] > 20


def test_firewalld_table_next_to_markroute(lab: Lab, markroute_cli: Any, weighted_split: Any) -> None:
    _, scenario = router_scenario(lab, "firewalld neighbour")
    markroute_cli.apply(scenario.router, CONFIG)
    lab.nft(scenario.router, FIREWALLD)
    simulator = live_simulator(scenario.router)
    observe(lab, scenario.router)
    rng = random.Random(1818)
    flows = random_flows(lab, scenario, rng, 600)
    flows += local_flows(scenario, rng, 100, flows)
    run_traffic(lab, scenario, flows)
    stats = compare(scenario, simulator, flows, collect(lab, scenario.router), weighted_split)
    print(scenario.name, stats)
    assert stats["drop"] > 50 and stats["forward"] > 100 and stats["local"] > 10


def test_trace_live_explains_docker_flows_in_words(lab: Lab, markroute_cli: Any) -> None:
    """The CLI names each xt rule it passes by its iptables command; nothing is indeterminate or JSON."""
    r, scenario = docker_scenario(lab)
    markroute_cli.apply(scenario.router, CONFIG)
    base = ["trace", "--live", "--netns", scenario.router, "--proto", "tcp", "--sport", "40000"]
    forward = markroute(*base, "--from", "203.0.113.20", "--to", r.rtr_wan_v4[0], "--dport", "8080",
                        "--iif", "wan0", "--json")
    assert forward.returncode == 0, forward.stderr
    data = json.loads(forward.stdout)
    assert data["verdict"] == "forward" and data["oif"] == "docker0" and data["dnat"] == "172.17.0.2"
    rules = [step["rule"] for step in data["steps"] if step["stage"] == "rule"]
    assert any("-m addrtype --dst-type LOCAL" in rule for rule in rules)
    text = markroute(*base, "--from", "203.0.113.20", "--to", "198.51.100.200", "--dport", "25", "--iif", "wan1")
    assert text.returncode == 0, text.stderr
    assert "DROPPED" in text.stdout and "policy drop of ip filter FORWARD" in text.stdout
    assert '{"' not in text.stdout
