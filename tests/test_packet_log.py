"""`log:` on a policy and on an inbound drop: real connections produce lines that `markroute log`
reads over nfnetlink_log in the router's namespace and decodes (policy, target, uplink)."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pytest

from markroute.lab import Lab, router_lab
from tests.daemon_helpers import python_env
from tests.test_flows import POKE, send_udp

pytestmark = pytest.mark.kernel
PORT = 7001

CONFIG = """
uplinks:
  a:
    interface: {wan0}
    gateway: {gw0}
    nat: masquerade
    inbound: {{policy: drop, log: {{prefix: wan-a, rate: 0}}}}
  b: {{interface: {wan1}, gateway: {gw1}, nat: masquerade}}
policies:
  - {{name: dns-logged, proto: udp, dport: {port}, via: b, log: true}}
  - {{name: rest, from: {lan}, via: a}}
"""

def test_policy_and_inbound_drop_lines_are_read_back_decoded(lab: Lab, markroute_cli: Any) -> None:
    r = router_lab(lab, isps=2)
    lab.serve_echo(r.net, PORT)
    markroute_cli.apply(r.rtr, CONFIG.format(wan0=r.rtr_wan_ifs[0], wan1=r.rtr_wan_ifs[1], gw0=r.isp_gw_v4[0],
                                             gw1=r.isp_gw_v4[1], port=PORT, lan=r.lan_v4_net))
    reader = subprocess.Popen(
        [sys.executable, "-m", "markroute", "log", "--netns", r.rtr, "--json", "--count", "2", "--timeout", "20"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=python_env())
    try:
        assert reader.stderr is not None and "listening" in reader.stderr.readline()
        busy = subprocess.run([sys.executable, "-m", "markroute", "log", "--netns", r.rtr, "--timeout", "0"],
                              capture_output=True, text=True, env=python_env())
        assert busy.returncode == 1 and "another reader" in busy.stderr, busy.stderr

        send_udp(lab, r.lan, r.client_v4, 40011, r.server, PORT)
        send_udp(lab, r.lan, r.client_v4, 40011, r.server, PORT)  # the same connection: not logged again
        lab.run(r.isps[0], [sys.executable, "-c", POKE, r.rtr_wan_v4[0], "9999"])
        out, err = reader.communicate(timeout=30)
    finally:
        if reader.poll() is None:
            reader.kill()
            reader.wait()
    assert reader.returncode == 0, err
    lines = [json.loads(line) for line in out.splitlines()]
    assert len(lines) == 2, lines
    policy = next(x for x in lines if x["kind"] == "policy")
    assert policy["policy"] == "dns-logged" and policy["target"] == "b"
    assert (policy["src"], policy["sport"], policy["dst"], policy["dport"]) == (r.client_v4, 40011, r.server, PORT)
    assert policy["proto"] == "udp" and policy["in"] == r.rtr_lan_if
    drop = next(x for x in lines if x["kind"] == "drop")
    assert drop["uplink"] == "a" and drop["prefix"] == "wan-a" and drop["dport"] == 9999
    assert drop["in"] == r.rtr_wan_ifs[0]
    markroute_cli.down(r.rtr)
