"""`markroute flows` and `explain` on real connections: uplink, deciding policy, NAT, bytes."""

from __future__ import annotations

import json
import sys
from typing import Any

import pytest

from markroute.lab import Lab, router_lab
from tests.conftest import markroute

pytestmark = pytest.mark.kernel
DNS_PORT, WEB_PORT = 7001, 7002

POLICIES = """
policies:
  - name: dns-via-b
    proto: udp
    dport: {dns}
    via: {dns_via}
  - name: rest-via-a
    from: {lan}
    via: a
"""

POKE = """
import socket, sys
socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b"knock", (sys.argv[1], int(sys.argv[2])))
"""

SEND = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((sys.argv[1], int(sys.argv[2])))
s.settimeout(5)
s.sendto(b"hello\\n", (sys.argv[3], int(sys.argv[4])))
print(s.recv(1000).decode().strip())
"""


def send_udp(lab: Lab, ns: str, src: str, sport: int, dst: str, dport: int) -> dict[str, Any]:
    """One UDP exchange with a fixed source port; the echo's answer (the source it saw)."""
    proc = lab.run(ns, [sys.executable, "-c", SEND, src, str(sport), dst, str(dport)])
    answer: dict[str, Any] = json.loads(proc.stdout)
    return answer


def flows(ns: str, *args: str) -> list[dict[str, Any]]:
    proc = markroute("flows", "--netns", ns, "--json", *args)
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert data["version"] == 1
    found: list[dict[str, Any]] = data["flows"]
    return found


def test_flows_and_explain_name_the_policy_that_decided(lab: Lab, markroute_cli: Any) -> None:
    r = router_lab(lab, isps=2)
    lab.serve_echo(r.net, DNS_PORT)
    lab.serve_echo(r.net, WEB_PORT)
    uplinks = r.uplinks_yaml(["a", "b"])
    markroute_cli.apply(r.rtr, uplinks + POLICIES.format(dns=DNS_PORT, dns_via="b", lan=r.lan_v4_net))

    dns = send_udp(lab, r.lan, r.client_v4, 40001, r.server, DNS_PORT)
    web = send_udp(lab, r.lan, r.client_v4, 40002, r.server, WEB_PORT)
    assert r.which_isp(dns["src"]) == 1 and r.which_isp(web["src"]) == 0, (dns, web)

    listed = {f["sport"]: f for f in flows(r.rtr, "--from", r.lan_v4_net)}
    assert listed[40001]["uplink"] == "b" and listed[40001]["policy"] == "dns-via-b", listed[40001]
    assert listed[40002]["uplink"] == "a" and listed[40002]["policy"] == "rest-via-a", listed[40002]
    assert listed[40001]["snat"] == r.rtr_wan_v4[1] and listed[40002]["snat"] == r.rtr_wan_v4[0]
    assert listed[40001]["mark"].startswith("0x") and int(listed[40001]["mark"], 16) != 0
    assert listed[40001]["bytes"] > 0 and listed[40001]["age"] is not None, "accounting and timestamps are on"

    assert markroute_cli.status(r.rtr)["drift"] == [], "the label statements list back as planned"
    only = flows(r.rtr, "--policy", "dns-via-b")
    assert [f["sport"] for f in only] == [40001]
    assert [f["sport"] for f in flows(r.rtr, "--uplink", "a", "--to", r.server)] == [40002]
    typo = markroute("flows", "--netns", r.rtr, "--uplink", "c")
    assert typo.returncode == 2 and "no such uplink" in typo.stderr and "Traceback" not in typo.stderr

    text = markroute("flows", "--netns", r.rtr).stdout
    line = next(x for x in text.splitlines() if f":{40001} " in x)
    assert "policy dns-via-b" in line and "uplink b" in line, line

    # explain takes the pasted flows line
    explained = markroute("explain", "--netns", r.rtr, "--json", *line.split()[:4])
    assert explained.returncode == 0, explained.stderr
    data = json.loads(explained.stdout)
    assert data["recorded"]["reason"] == "policy dns-via-b" and data["recorded"]["uplink"] == "b"
    assert data["agree"] is True, data["notes"]
    assert {o["uplink"] for o in data["simulated"]["outcomes"]} == {"b"}

    # The config changes: the connection keeps its uplink, a new one would not; explain says so.
    markroute_cli.apply(r.rtr, uplinks + POLICIES.format(dns=DNS_PORT, dns_via="a", lan=r.lan_v4_net))
    moved = markroute("explain", "--netns", r.rtr, "udp", f"{r.client_v4}:40001", f"{r.server}:{DNS_PORT}")
    assert moved.returncode == 0, moved.stderr
    assert "DISAGREE" in moved.stdout and "a new one would use a" in moved.stdout, moved.stdout
    assert "decided  policy dns-via-b" in moved.stdout

    # A connection arriving through an uplink is that uplink's: recorded as its ingress.
    lab.run(r.isps[0], [sys.executable, "-c", POKE, r.rtr_wan_v4[0], "9999"])
    inbound = [f for f in flows(r.rtr, "--from", r.isp_gw_v4[0]) if f["dport"] == 9999]
    assert inbound and inbound[0]["decision"] == "ingress" and inbound[0]["ingress"] == "a", inbound
    assert inbound[0]["reason"] == "ingress via a" and inbound[0]["uplink"] == "a"
    came_in = markroute("explain", "--netns", r.rtr, "--json", "udp", r.isp_gw_v4[0], f"{r.rtr_wan_v4[0]}:9999")
    assert came_in.returncode == 0, came_in.stderr
    data = json.loads(came_in.stdout)
    assert data["agree"] is True and data["simulated"]["outcomes"][0]["reason"] == "ingress via a", data

    missing = markroute("explain", "--netns", r.rtr, "udp", f"{r.client_v4}:40999", f"{r.server}:{DNS_PORT}")
    assert missing.returncode == 1 and "no tracked connection" in missing.stderr
    markroute_cli.down(r.rtr)


def sysctl_value(lab: Lab, ns: str, key: str) -> str:
    return lab.run(ns, ["sysctl", "-n", key]).stdout.strip()


def test_without_connection_records_nothing_is_recorded_and_conntrack_is_left_as_found(
        lab: Lab, markroute_cli: Any) -> None:
    """`connection_records: false`: no rule writes labels, accounting and timestamps stay as
    found (and an earlier apply's are put back), so new connections carry no counters or start
    time; flows still names the uplink, and says why it names no policy."""
    r = router_lab(lab, isps=2)
    lab.serve_echo(r.net, DNS_PORT)
    uplinks = r.uplinks_yaml(["a", "b"])
    policies = POLICIES.format(dns=DNS_PORT, dns_via="b", lan=r.lan_v4_net)
    acct, stamp = "net.netfilter.nf_conntrack_acct", "net.netfilter.nf_conntrack_timestamp"
    lab.sysctls(r.rtr, {acct: "0", stamp: "0"})
    markroute_cli.apply(r.rtr, uplinks + policies)
    assert sysctl_value(lab, r.rtr, acct) == "1" and sysctl_value(lab, r.rtr, stamp) == "1"

    markroute_cli.apply(r.rtr, uplinks + policies + "settings: {connection_records: false}\n")
    assert sysctl_value(lab, r.rtr, acct) == "0" and sysctl_value(lab, r.rtr, stamp) == "0", "put back as found"
    listing = lab.run(r.rtr, ["nft", "-j", "list", "table", "inet", "markroute"]).stdout
    assert '"label"' not in listing, "no rule uses conntrack labels"
    assert markroute_cli.status(r.rtr)["drift"] == []

    dns = send_udp(lab, r.lan, r.client_v4, 40001, r.server, DNS_PORT)
    assert r.which_isp(dns["src"]) == 1, dns
    proc = markroute("flows", "--netns", r.rtr, "--json", "--from", r.lan_v4_net)
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert data["connection_records"] is False
    flow = next(f for f in data["flows"] if f["sport"] == 40001)
    assert flow["uplink"] == "b" and flow["decision"] is None and flow["reason"] == "not recorded", flow
    assert flow["bytes"] is None and flow["age"] is None, "no accounting or timestamp extension"
    text = markroute("flows", "--netns", r.rtr).stdout
    assert "connection_records: false" in text, text
    refused = markroute("flows", "--netns", r.rtr, "--policy", "dns-via-b")
    assert refused.returncode == 2 and "records no decisions" in refused.stderr and "Traceback" not in refused.stderr

    explained = markroute("explain", "--netns", r.rtr, "--json", "udp", f"{r.client_v4}:40001", f"{r.server}:{DNS_PORT}")
    assert explained.returncode == 0, explained.stderr
    data = json.loads(explained.stdout)
    assert data["agree"] is True and data["simulated"]["outcomes"][0]["reason"] == "policy dns-via-b", data
    assert any("connection_records: false" in note for note in data["notes"]), data["notes"]
    markroute_cli.down(r.rtr)
    assert sysctl_value(lab, r.rtr, acct) == "0"
