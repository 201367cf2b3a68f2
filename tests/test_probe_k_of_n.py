"""`check: {targets: [...], min_up: K}` with real probes: a round succeeds when K targets
answer, so with 2 of 3 one dead target keeps the uplink up and two take it down."""

from __future__ import annotations

import time

import pytest
from daemon_helpers import DaemonLab, dlab  # noqa: F401 (dlab: a fixture)
from kernelhelp import markroute

TARGETS = ("203.0.113.1", "203.0.113.2", "203.0.113.3")  # answered by `net` (AnyIP), behind both ISPs
CONFIG = f"""
uplinks:
  isp_a:
    interface: wan0
    gateway: 10.0.0.1
    nat: masquerade
    check: {{targets: [{", ".join(TARGETS)}], min_up: 2}}
  isp_b: {{interface: wan1, gateway: 10.0.1.1, nat: masquerade}}
groups:
  primary: {{failover: [isp_a, isp_b]}}
policies:
  - {{name: rest, to: 198.18.0.0/15, via: primary}}
"""
TABLE = "mrdeadtargets"


@pytest.mark.kernel
def test_two_of_three_targets_one_dead_keeps_the_uplink_up_two_take_it_down(dlab: DaemonLab) -> None:  # noqa: F811
    d, r = dlab, dlab.router
    d.start(d.write(CONFIG))
    d.wait_states({"isp_a": "up"})
    shown = markroute("status", "--netns", d.rtr).stdout
    per_day = 3 * 2 * (20 + 8 + 16) * 10 * 86400  # three ICMP echoes and replies, ten rounds a second
    assert d.record().uplinks["isp_a"].probe_bytes_per_day == per_day
    assert f"probes ~{per_day / 1e6:.1f} MB/day" in shown, shown
    r.lab.nft(r.net, f"table inet {TABLE} {{\n chain input {{\n type filter hook input priority -400;\n }}\n}}\n")

    def kill(target: str) -> None:
        r.lab.run(r.net, ["nft", "add", "rule", "inet", TABLE, "input", "ip", "daddr", target,
                          "icmp", "type", "echo-request", "drop"])

    kill(TARGETS[0])
    time.sleep(2.0)  # 20 rounds: far more than the 4 unanswered ones that would take it down
    record = d.record().uplinks["isp_a"]
    assert (record.state, record.transitions) == ("up", 0), d.log()
    assert record.loss == 0, "two answers make every round a success"

    kill(TARGETS[1])
    d.wait_states({"isp_a": "down"}, timeout=10)
    assert "isp_a: up -> down (4 probes unanswered)" in d.log()
