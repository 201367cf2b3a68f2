"""A router process bound to an uplink's address (or device) leaves through that uplink.

Under a catch-all 1:1 balance, a socket bound to ISP B's address used to leave through
ISP A in about half the attempts, its source rewritten. Now the route its socket got
(the `from ADDRESS` rule into ISP B's bound table, whose default route carries a realm)
pins it; unbound router traffic is still balanced (seed 004's documented exception).
The realm stays out of the tables forwarded traffic looks up: a reply coming in through
an uplink must not have its route tagged, or the kernel would allocate one per packet.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import pytest

from markroute.lab import Lab, router_lab

pytestmark = pytest.mark.kernel
PORT = 7000
FLOWS = 100

BALANCE = """
groups:
  both: {balance: {isp_a: 1, isp_b: 1}}
policies:
  - name: rest
    via: both
"""

#: One TCP connection or UDP exchange from a socket bound with SO_BINDTODEVICE; prints what the server saw.
BOUND_TO_DEVICE = """
import json, socket, sys
proto, device, host, port = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
seen = []
for _ in range(int(sys.argv[5])):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, device.encode())
    s.settimeout(2)
    s.connect((host, port))
    s.send(b"x\\n")
    seen.append(json.loads(s.recv(4096).split(b"\\n")[0])["src"])
    s.close()
print(json.dumps(seen))
"""


def test_bound_sockets_keep_their_uplink_under_a_catch_all_balance(lab: Lab, markroute_cli: Any) -> None:
    r = router_lab(lab, isps=2)
    lab.serve_echo(r.net, PORT)
    markroute_cli.apply(r.rtr, r.uplinks_yaml(["isp_a", "isp_b"]) + BALANCE)

    for proto in ("tcp", "udp"):
        bound_b = lab.probe(r.rtr, proto, r.server, PORT, count=FLOWS, bind=r.rtr_wan_v4[1])
        assert r.isp_counts(bound_b["seen"]) == {1: FLOWS}, (proto, bound_b)
    bound_a = lab.probe(r.rtr, "tcp", r.server, PORT, count=20, bind=r.rtr_wan_v4[0])
    assert r.isp_counts(bound_a["seen"]).keys() <= {0, 1} and bound_a["ok"] == 20

    for proto in ("tcp", "udp"):
        out = lab.run(r.rtr, [sys.executable, "-c", BOUND_TO_DEVICE, proto, "wan1", r.server, str(PORT), "20"])
        assert {r.which_isp(source) for source in json.loads(out.stdout)} == {1}, (proto, out.stdout)

    unbound = r.isp_counts(lab.probe(r.rtr, "tcp", r.server, PORT, count=FLOWS)["seen"])
    assert set(unbound) == {0, 1} and min(unbound.values()) >= 20, f"router's own unbound traffic is balanced: {unbound}"
    lan = r.isp_counts(lab.probe(r.lan, "tcp", r.server, PORT, count=FLOWS)["seen"])
    assert set(lan) == {0, 1} and min(lan.values()) >= 20, lan
    markroute_cli.down(r.rtr)


def test_a_policy_naming_the_source_still_decides_first(lab: Lab, markroute_cli: Any) -> None:
    r = router_lab(lab, isps=2)
    lab.serve_echo(r.net, PORT)
    config = r.uplinks_yaml(["isp_a", "isp_b"]) + BALANCE.replace(
        "policies:\n", f"policies:\n  - {{name: b-via-a, from: {r.rtr_wan_v4[1]}, via: isp_a}}\n")
    markroute_cli.apply(r.rtr, config)
    moved = lab.probe(r.rtr, "tcp", r.server, PORT, count=20, bind=r.rtr_wan_v4[1])
    assert r.isp_counts(moved["seen"]) == {0: 20}, moved
    markroute_cli.down(r.rtr)


def test_forwarded_replies_carry_no_realm_while_bound_sockets_do(lab: Lab, markroute_cli: Any) -> None:
    """The kernel's own lookups, as a forwarded reply and a bound socket make them."""
    r = router_lab(lab, isps=2)
    markroute_cli.apply(r.rtr, r.uplinks_yaml(["isp_a", "isp_b"]) + BALANCE)
    marks = {rule["table"]: rule["fwmark"] for rule in json.loads(lab.ip(r.rtr, "-j", "-4", "rule", "show").stdout)
             if "fwmark" in rule and rule.get("table")}
    assert len(marks) == 2, marks
    for k, wan in enumerate(r.rtr_wan_ifs):
        table = sorted(marks)[k]
        [reply] = json.loads(lab.ip(r.rtr, "-j", "route", "get", r.clients[0].v4, "from", r.server, "iif", wan,
                                    "mark", marks[table]).stdout)
        assert reply["dev"] == r.rtr_lan_if and reply["table"] == table and "flow" not in reply, reply
    [bound] = json.loads(lab.ip(r.rtr, "-j", "route", "get", r.server, "from", r.rtr_wan_v4[1]).stdout)
    assert bound["dev"] == r.rtr_wan_ifs[1] and bound.get("flow", {}).get("to") == sorted(marks)[1], bound
    markroute_cli.down(r.rtr)
    assert not [route for route in json.loads(lab.ip(r.rtr, "-j", "route", "show", "table", "all").stdout)
                if route.get("protocol") == "77"], "down removes the bound tables too"
