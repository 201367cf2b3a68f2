"""The simulator on a recorded live ruleset written by iptables-nft: Docker, ufw, kube-proxy shapes.

`data/xt_neighbours.json` is what `snapshot()` read in a namespace where iptables-nft and
ip6tables-nft installed such rules next to an ipset (`data/record_xt_neighbours.py`
records it again). Many of those rules hold `xt` expressions whose options nft's JSON
does not show; the simulator reads them from iptables-nft-save's text in the snapshot.
"""

from __future__ import annotations

import copy
import json
import shlex
from pathlib import Path
from typing import Any

import pytest

from markroute import sim
from markroute.sim import report
from markroute.sim.packet import make_flow
from markroute.sim.trace import Outcome, Simulator
from markroute.sim.words import plain
from markroute.sim.xt import parse_rule

RECORDED = json.loads((Path(__file__).parent / "data" / "xt_neighbours.json").read_text())


def simulator(state: dict[str, Any] | None = None, sysctls: dict[str, str] | None = None) -> Simulator:
    state = RECORDED if state is None else state
    return sim.live(state, dict(RECORDED["sysctls"], **(sysctls or {})))


def trace(src: str, dst: str, proto: str, dport: int, iif: str, s: Simulator | None = None) -> Outcome:
    paths = (s or simulator()).paths(make_flow(src, dst, proto, 40000, dport, iif))
    assert len(paths) == 1, [p.outcome.label() for p in paths]
    return paths[0].outcome


def text(src: str, dst: str, proto: str, dport: int, iif: str, s: Simulator | None = None) -> str:
    flow = make_flow(src, dst, proto, 40000, dport, iif)
    return report.text(report.document(flow, (s or simulator()).paths(flow), "recorded", [], []))


def test_recorded_rules_hold_xt_expressions() -> None:
    """The recording is what the feature is about: nft's JSON names the extensions, nothing more."""
    xt = [e["xt"] for item in RECORDED["nftables"]["nftables"] if "rule" in item
          for e in item["rule"]["expr"] if "xt" in e]
    assert {"addrtype", "conntrack", "multiport", "set", "DNAT", "MASQUERADE"} <= {x["name"] for x in xt}
    assert all(set(x) == {"type", "name"} for x in xt)


def test_docker_port_forward_follows_addrtype_and_dnat() -> None:
    outcome = trace("203.0.113.20", "10.0.0.2", "tcp", 8080, "wan0")
    assert (outcome.verdict, outcome.oif, outcome.dnat) == ("forward", "docker0", "172.17.0.2")
    # not a local address: addrtype --dst-type LOCAL fails, no DNAT, Docker's FORWARD policy drops it
    other = trace("203.0.113.20", "198.51.100.7", "tcp", 8080, "wan0")
    assert (other.verdict, other.dnat, other.reason) == ("drop", None, "policy drop of ip filter FORWARD")


def test_docker_user_rules_with_set_multiport_iprange_and_connmark() -> None:
    allowed = trace("192.168.1.10", "198.51.100.7", "tcp", 80, "lan0")  # in ipset 'allowed'
    assert (allowed.verdict, allowed.oif) == ("forward", "wan0")
    assert (allowed.mark, allowed.ct_mark) == (0x7, 0x7)  # CONNMARK --set-xmark, then --restore-mark
    assert trace("192.168.1.10", "198.51.100.200", "tcp", 80, "lan0").verdict == "drop"  # a nomatch entry
    assert trace("192.168.1.10", "198.51.100.200", "tcp", 444, "lan0").verdict == "forward"  # --dports 443:445
    assert trace("192.168.1.205", "198.51.100.200", "tcp", 80, "lan0").verdict == "forward"  # --src-range
    assert trace("192.168.1.211", "198.51.100.200", "tcp", 80, "lan0").verdict == "drop"


def test_physdev_of_a_routed_packet_without_br_netfilter_never_matches() -> None:
    assert trace("192.168.1.10", "198.51.100.200", "tcp", 80, "lan0").verdict == "drop"
    bridged = simulator(sysctls={"net/bridge/bridge-nf-call-iptables": "1"})
    outcome = trace("192.168.1.10", "198.51.100.200", "tcp", 80, "lan0", bridged)
    assert outcome.verdict == "indeterminate" and "br_netfilter" in (outcome.reason or "")
    assert outcome.indeterminate is not None
    assert outcome.indeterminate["rule"].startswith("table ip filter, chain DOCKER-USER, rule handle ")
    assert "--physdev-in eth5" in outcome.indeterminate["expression"]


def test_kube_proxy_statistic_splits_between_endpoints() -> None:
    leaves = simulator().explore(make_flow("192.168.1.10", "10.96.0.10", "tcp", 40000, 80, "lan0"), record=False)
    split: dict[str | None, float] = {}
    for leaf in leaves:
        split[leaf.path.outcome.dnat] = split.get(leaf.path.outcome.dnat, 0) + leaf.path.probability
    assert split == pytest.approx({"10.244.0.5": 0.25, "10.244.0.6": 0.75})


def test_ufw_input_chains() -> None:
    assert trace("192.168.1.10", "192.168.1.1", "tcp", 443, "lan0").verdict == "local"  # multiport + comment
    assert trace("192.168.1.10", "192.168.1.1", "udp", 80, "lan0").verdict == "local"  # bitmap:port ipset
    rejected = trace("192.168.1.10", "192.168.1.1", "tcp", 25, "lan0")
    assert rejected.verdict == "drop" and "REJECT" in (rejected.reason or "")
    # the rate-limited LOG rules on the way to the policy cannot change the verdict: skipped
    dropped = trace("192.168.1.10", "192.168.1.1", "tcp", 8443, "lan0")
    assert (dropped.verdict, dropped.reason) == ("drop", "policy drop of ip filter INPUT")


def test_unmodelled_match_is_named_in_words_with_its_rule() -> None:
    outcome = trace("192.168.1.10", "192.168.1.1", "tcp", 22, "lan0")  # ufw limit: -m recent
    assert outcome.verdict == "indeterminate"
    assert outcome.indeterminate is not None
    assert outcome.indeterminate["rule"].startswith("table ip filter, chain ufw-user-input, rule handle ")
    assert "-m recent --update" in outcome.indeterminate["expression"]
    assert "addresses seen recently" in outcome.indeterminate["reason"]
    rendered = text("192.168.1.10", "192.168.1.1", "tcp", 22, "lan0")
    assert "iptables -t filter -A ufw-user-input" in rendered and '{"' not in rendered


def test_ip6tables_rules() -> None:
    assert trace("fd00:1::10", "2001:db8:5::1", "tcp", 443, "lan0").oif == "wan0"
    assert trace("fd00:1::10", "2001:db8:5::1", "tcp", 25, "lan0").reason == "policy drop of ip6 filter FORWARD"


def test_without_iptables_save_xt_is_indeterminate_in_words() -> None:
    state = {key: value for key, value in RECORDED.items() if key not in ("iptables", "ipset")}
    outcome = trace("203.0.113.20", "10.0.0.2", "tcp", 8080, "wan0", simulator(state))
    assert outcome.verdict == "indeterminate"
    assert outcome.indeterminate is not None
    assert outcome.indeterminate["expression"] == "iptables target CONNMARK"  # mangle's --restore-mark comes first
    assert "iptables-nft-save" in outcome.indeterminate["reason"]
    assert outcome.indeterminate["rule"].startswith("table ip mangle, chain PREROUTING, rule handle ")
    assert '{"' not in text("203.0.113.20", "10.0.0.2", "tcp", 8080, "wan0", simulator(state))


def test_listings_that_do_not_pair_up_are_indeterminate() -> None:
    """A rule nft lists that iptables-nft-save does not (added with nft itself) is not guessed at."""
    state = copy.deepcopy(RECORDED)
    saved = state["iptables"]["ip"]["save"]
    state["iptables"]["ip"]["save"] = saved.replace("-A PREROUTING -m addrtype --dst-type LOCAL -j DOCKER\n", "")
    outcome = trace("203.0.113.20", "10.0.0.2", "tcp", 8080, "wan0", simulator(state))
    assert outcome.verdict == "indeterminate" and "do not pair up" in (outcome.reason or "")
    state["iptables"]["ip"] = {"error": "iptables-nft-save is not installed: install iptables"}
    outcome = trace("203.0.113.20", "10.0.0.2", "tcp", 8080, "wan0", simulator(state))
    assert outcome.verdict == "indeterminate" and "not installed" in (outcome.reason or "")


def test_parse_rule_reads_negations_and_quoted_arguments() -> None:
    line = ('-A X ! -s 10.0.0.1/32 -m addrtype ! --dst-type LOCAL,BROADCAST --limit-iface-in '
            '-m comment --comment "two words" -j DNAT --to-destination 10.1.1.1:80-90')
    rule = parse_rule(line, shlex.split(line))
    addrtype, comment = rule.matches
    assert addrtype.name == "addrtype" and addrtype.options[0].negated
    assert addrtype.options[0].args == ("LOCAL,BROADCAST",) and addrtype.options[1].name == "--limit-iface-in"
    assert comment.options[0].args == ("two words",)
    assert rule.target is not None and rule.target.get("--to-destination") is not None


def test_unrendered_nft_json_reads_as_words() -> None:
    assert plain({"limit": {"rate": 10, "per": "second"}}) == "limit rate 10 per second"
    assert plain({"xt": {"type": "match", "name": "addrtype"}}) == "xt match addrtype"
    assert plain({"exthdr": {"name": "hbh", "field": "nexthdr", "offset": 0}}) == "exthdr name hbh field nexthdr offset 0"


@pytest.mark.parametrize(("options", "verdict"), [
    ("--ctstate NEW --ctorigdst 203.0.113.0/24", "forward"),
    ("--ctstate NEW --ctorigdst 203.0.113.128/25", "drop"),
    ("--ctstate NEW,RELATED ! --ctorigsrcport 1024:39999 --ctdir ORIGINAL --ctproto tcp", "forward"),
    ("--ctstate NEW --ctorigsrcport 1024:39999", "drop"),
    ("--ctstate INVALID,UNTRACKED", "drop"),
    ("! --ctstate ESTABLISHED --ctrepldst 192.168.1.10", "forward"),
])
def test_conntrack_options_come_from_the_saved_rule(options: str, verdict: str) -> None:
    """The nft listing only says `xt match conntrack`; what it tests is in iptables-nft-save's line."""
    state = copy.deepcopy(RECORDED)
    saved = state["iptables"]["ip"]["save"]
    original = "-A DOCKER-USER -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT"
    assert original in saved
    state["iptables"]["ip"]["save"] = saved.replace(original, f"-A DOCKER-USER -m conntrack {options} -j ACCEPT")
    assert trace("192.168.1.10", "203.0.113.5", "tcp", 80, "lan0", simulator(state)).verdict == verdict
