"""Failback control with real traffic: a UDP stream and a TCP connection that failed over
to isp_b, measured after isp_a (the preferred member) recovers: with `flows: keep` both
stay on isp_b; with `flows: move` the UDP stream comes home to isp_a and the TCP
connection, whose NAT mapping was isp_b's, is ended. `hold` keeps new connections on
isp_b for its duration after the recovery."""

from __future__ import annotations

import time

import pytest
from daemon_helpers import DaemonLab, dlab  # noqa: F401 (dlab: a fixture)
from kernelhelp import KERNEL

pytestmark = KERNEL

CONFIG = """
uplinks:
  isp_a: {{interface: wan0, gateway: 10.0.0.1, nat: masquerade}}
  isp_b: {{interface: wan1, gateway: 10.0.1.1, nat: masquerade}}
groups:
  primary:
    failover: [isp_a, isp_b]
    failback: {{{failback}}}
policies:
  - {{name: rest, to: 203.0.113.0/24, via: primary}}
"""
UDP_PORT, TCP_PORT = 41011, 41010


@pytest.mark.parametrize("flows", ["keep", "move"])
def test_keep_leaves_failed_over_flows_and_move_brings_udp_home(dlab: DaemonLab, flows: str) -> None:  # noqa: F811
    d, r = dlab, dlab.router
    d.start(d.write(CONFIG.format(failback=f"flows: {flows}")))
    d.wait_states({"isp_a": "up", "isp_b": "up"})
    d.kill_upstream(0)
    d.wait_states({"isp_a": "down"})
    udp = d.flow("udp", r.server, duration=6, sport=UDP_PORT)
    tcp = d.flow("tcp", r.server, duration=6, interval=0.02, sport=TCP_PORT)
    time.sleep(1.5)
    d.revive_upstream(0)
    back = d.wait_states({"isp_a": "up"}, timeout=10).uplinks["isp_a"].since
    udp_flow, tcp_flow = udp.result(), tcp.result()
    settled = back + 0.5  # the rewrite and the conntrack deletion follow the transition at once

    assert d.isp_of(udp_flow.sources(0, back)) == {1} and d.isp_of(tcp_flow.sources(0, back)) == {1}
    if flows == "keep":
        for flow in (udp_flow, tcp_flow):
            assert d.isp_of(flow.sources(back)) == {1} and flow.answered_between(settled, flow.start + 6) > 0
            assert flow.errors == []
    else:
        assert d.isp_of(udp_flow.sources(settled)) == {0}, "the UDP stream came home"
        assert udp_flow.answered_between(settled, udp_flow.start + 6) > 0
        assert d.isp_of(tcp_flow.sources(settled)) <= {0} and tcp_flow.answered_between(settled, tcp_flow.start + 6) == 0, \
            "the TCP connection was ended: nothing more came back through isp_b"
        assert "flows of isp_b moved" in d.log()


def test_hold_keeps_new_connections_on_the_backup_until_it_ran_out(dlab: DaemonLab) -> None:  # noqa: F811
    d, r = dlab, dlab.router
    d.start(d.write(CONFIG.format(failback="hold: 3")))
    d.wait_states({"isp_a": "up", "isp_b": "up"})
    d.kill_upstream(0)
    d.wait_states({"isp_a": "down"})
    d.revive_upstream(0)
    d.wait_states({"isp_a": "up"}, timeout=10)
    during = r.lab.probe(r.lan, "udp", r.server, d.port, count=5)
    assert d.isp_of(set(during["seen"])) == {1}, "isp_a is up but still on hold"
    time.sleep(3.5)
    after = r.lab.probe(r.lan, "udp", r.server, d.port, count=5)
    assert d.isp_of(set(after["seen"])) == {0}, "the hold ran out: new connections go home"
