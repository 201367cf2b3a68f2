"""Re-record xt_neighbours.json: a router namespace with Docker-, ufw- and kube-proxy-style
rules written by iptables-nft and ip6tables-nft, an ipset, and the snapshot `trace --live`
reads of it (nft JSON, iptables-nft-save text, ipset save, rules, routes, links, sysctls).

Run as root from the repository: `.venv/bin/python tests/data/record_xt_neighbours.py`.
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path

from markroute.kernel import netns, sysctl
from markroute.kernel.snapshot import snapshot
from markroute.lab import Lab
from markroute.sim.system import sysctl_paths

IPSETS = """
create allowed hash:net family inet
add allowed 198.51.100.0/24
add allowed 198.51.100.128/25 nomatch
create webports bitmap:port range 0-1024
add webports 80
"""

IPTABLES = """
-t nat -N DOCKER
-t nat -A PREROUTING -m addrtype --dst-type LOCAL -j DOCKER
-t nat -A OUTPUT ! -d 127.0.0.0/8 -m addrtype --dst-type LOCAL -j DOCKER
-t nat -A POSTROUTING -s 172.17.0.0/16 ! -o docker0 -j MASQUERADE
-t nat -A DOCKER -i docker0 -j RETURN
-t nat -A DOCKER ! -i docker0 -p tcp -m tcp --dport 8080 -j DNAT --to-destination 172.17.0.2:80
-t nat -N KUBE-SERVICES
-t nat -N KUBE-SVC-WEB
-t nat -N KUBE-SEP-A
-t nat -N KUBE-SEP-B
-t nat -N KUBE-MARK-MASQ
-t nat -N KUBE-POSTROUTING
-t nat -A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-t nat -A POSTROUTING -m comment --comment "kubernetes postrouting rules" -j KUBE-POSTROUTING
-t nat -A KUBE-SERVICES -d 10.96.0.10/32 -p tcp -m comment --comment "default/web cluster IP" -m tcp --dport 80 -j KUBE-SVC-WEB
-t nat -A KUBE-SVC-WEB -m comment --comment "default/web -> 10.244.0.5:80" -m statistic --mode random --probability 0.25000000000 -j KUBE-SEP-A
-t nat -A KUBE-SVC-WEB -m comment --comment "default/web -> 10.244.0.6:80" -j KUBE-SEP-B
-t nat -A KUBE-SEP-A -s 10.244.0.5/32 -j KUBE-MARK-MASQ
-t nat -A KUBE-SEP-A -p tcp -m tcp -j DNAT --to-destination 10.244.0.5:80
-t nat -A KUBE-SEP-B -s 10.244.0.6/32 -j KUBE-MARK-MASQ
-t nat -A KUBE-SEP-B -p tcp -m tcp -j DNAT --to-destination 10.244.0.6:80
-t nat -A KUBE-MARK-MASQ -j MARK --or-mark 0x4000
-t nat -A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN
-t nat -A KUBE-POSTROUTING -j MARK --xor-mark 0x4000
-t nat -A KUBE-POSTROUTING -m comment --comment "kubernetes service traffic requiring SNAT" -j MASQUERADE --random-fully
-t mangle -A PREROUTING -i lan0 -m connmark --mark 0x0/0xff -j CONNMARK --set-xmark 0x7/0xff
-t mangle -A PREROUTING -j CONNMARK --restore-mark --nfmask 0xff --ctmask 0xff
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
-A DOCKER-USER -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
-A DOCKER-USER -i lan0 -m set --match-set allowed dst -j ACCEPT
-A DOCKER-USER -i lan0 -p tcp -m multiport --dports 22,443:445 -j ACCEPT
-A DOCKER-USER -i lan0 -m physdev --physdev-in eth5 -j ACCEPT
-A DOCKER-USER -i lan0 -m iprange --src-range 192.168.1.200-192.168.1.210 -j ACCEPT
-A DOCKER-USER -j RETURN
-N ufw-before-input
-N ufw-not-local
-N ufw-logging-deny
-N ufw-user-input
-N ufw-after-logging-input
-P INPUT DROP
-A INPUT -j ufw-before-input
-A INPUT -j ufw-after-logging-input
-A ufw-before-input -i lo -j ACCEPT
-A ufw-before-input -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
-A ufw-before-input -m conntrack --ctstate INVALID -j ufw-logging-deny
-A ufw-before-input -m conntrack --ctstate INVALID -j DROP
-A ufw-before-input -p icmp -m icmp --icmp-type 8 -j ACCEPT
-A ufw-before-input -p udp -m udp --sport 67 --dport 68 -j ACCEPT
-A ufw-before-input -j ufw-not-local
-A ufw-before-input -j ufw-user-input
-A ufw-not-local -m addrtype --dst-type LOCAL -j RETURN
-A ufw-not-local -m addrtype --dst-type MULTICAST -j RETURN
-A ufw-not-local -m addrtype --dst-type BROADCAST -j RETURN
-A ufw-not-local -m limit --limit 3/min --limit-burst 10 -j ufw-logging-deny
-A ufw-not-local -j DROP
-A ufw-logging-deny -m conntrack --ctstate INVALID -m limit --limit 3/min --limit-burst 10 -j RETURN
-A ufw-logging-deny -m limit --limit 3/min --limit-burst 10 -j LOG --log-prefix "[UFW BLOCK] "
-A ufw-user-input -p tcp -m tcp --dport 22 -m conntrack --ctstate NEW -m recent --set --name DEFAULT --mask 255.255.255.255 --rsource
-A ufw-user-input -p tcp -m tcp --dport 22 -m conntrack --ctstate NEW -m recent --update --seconds 30 --hitcount 6 --name DEFAULT --mask 255.255.255.255 --rsource -j DROP
-A ufw-user-input -p tcp -m multiport --dports 80,443 -m comment --comment "'dapp_Nginx%20Full'" -j ACCEPT
-A ufw-user-input -p udp -m set --match-set webports dst -j ACCEPT
-A ufw-user-input -p tcp -m tcp --dport 25 -j REJECT --reject-with tcp-reset
-A ufw-after-logging-input -m limit --limit 3/min --limit-burst 10 -j LOG --log-prefix "[UFW BLOCK] "
"""

IP6TABLES = """
-P FORWARD DROP
-A FORWARD -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
-A FORWARD -i lan0 -p tcp -m multiport --dports 80,443 -j ACCEPT
"""


def main() -> None:
    with Lab() as lab:
        rtr = lab.add_ns("rtr")
        other = lab.add_ns("peer")
        for ifname, peer, cidrs in (("lan0", "p0", ("192.168.1.1/24", "fd00:1::1/64")),
                                    ("wan0", "p1", ("10.0.0.2/24", "2001:db8::2/64")),
                                    ("docker0", "p2", ("172.17.0.1/16",))):
            lab.veth(rtr, ifname, other, peer)
            for cidr in cidrs:
                lab.addr(rtr, ifname, cidr)
        lab.forwarding(rtr, ipv6=True)
        lab.route(rtr, "default", "via", "10.0.0.1")
        lab.route(rtr, "default", "via", "2001:db8::1")
        lab.run(rtr, ["ipset", "restore"], input=IPSETS.strip() + "\n")
        for command, rules in (("iptables-nft", IPTABLES), ("ip6tables-nft", IP6TABLES)):
            for line in rules.strip().splitlines():
                lab.run(rtr, [command, "-w", *shlex.split(line)])
        with netns.inside(rtr):
            state = snapshot()
            state["sysctls"] = {path: sysctl.read(path) for path in sysctl_paths(list(state["links"]))
                                if sysctl.exists(path) and not path.startswith("net/bridge/")}
    target = Path(__file__).with_name("xt_neighbours.json")
    target.write_text(json.dumps(state, indent=1, sort_keys=True) + "\n")


if __name__ == "__main__":
    main()
