"""Reload and events that never lie, with real packets: a scripted sequence (start with one
uplink dead, kill the other, recover both, reload with a changed gateway) gives exactly
the expected `on_change` calls, and the changed uplink carries no traffic before its
new gateway answered its first probes."""

from __future__ import annotations

import signal
import sys
import time

import pytest
from conftest import PacketCounters
from daemon_helpers import SENDER, DaemonLab, dlab  # noqa: F401 (dlab: a fixture)

CONFIG = """
uplinks:
  isp_a: {{interface: wan0, gateway: 10.0.0.1, nat: masquerade}}
  isp_b: {{interface: wan1, gateway: {gateway_b}, nat: masquerade}}
groups:
  primary: {{failover: [isp_a, isp_b]}}
settings: {{on_change: [{python}, {hook}]}}
policies:
  - {{name: pinned-b, to: 198.18.0.0/15, via: isp_b}}
  - {{name: rest, to: 203.0.113.0/24, via: primary}}
"""
NEW_GATEWAY = "10.0.1.3"
BLOCK_TABLE = "mrprobeblock"


def wait_for(predicate: object, what: str, d: DaemonLab, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}; log:\n{d.log()}")


@pytest.mark.kernel
def test_on_change_hears_each_real_transition_once_and_a_changed_gateway_is_probed_first(
    dlab: DaemonLab,  # noqa: F811
) -> None:
    d, r = dlab, dlab.router
    lab, isp1 = r.lab, r.isps[1]
    heard = d.workdir / "heard.txt"
    hook = d.workdir / "hook.py"
    hook.write_text(
        "import os\n"
        f"with open({str(heard)!r}, 'a') as out:\n"
        "    out.write(' '.join(os.environ[k] for k in ('MARKROUTE_UPLINK', 'MARKROUTE_OLD_STATE',"
        " 'MARKROUTE_NEW_STATE')) + '\\n')\n"
    )

    def text(gateway_b: str) -> str:
        return CONFIG.format(gateway_b=gateway_b, python=sys.executable, hook=hook)

    def lines() -> list[str]:
        return heard.read_text().splitlines() if heard.exists() else []

    path = d.write(text("10.0.1.1"))
    d.kill_upstream(1)  # isp_b is dead before the daemon starts
    daemon = d.start(path)
    d.wait_states({"isp_a": "up", "isp_b": "down"})
    d.kill_upstream(0)
    d.wait_states({"isp_a": "down"})
    d.revive_upstream(1)
    d.wait_states({"isp_b": "up"})
    d.revive_upstream(0)
    d.wait_states({"isp_a": "up"})

    # The new gateway exists and forwards, but does not answer probes yet.
    lab.addr(isp1, "down0", f"{NEW_GATEWAY}/24")
    lab.nft(isp1, f"table inet {BLOCK_TABLE} {{\n chain input {{\n type filter hook input priority -400;\n"
                  f" ip daddr {NEW_GATEWAY} icmp type echo-request drop\n }}\n}}\n")
    seen = PacketCounters(lab, isp1, "prerouting", {"pinned": f'iifname "down0" ip daddr {r.server_alt} udp dport 7400'})
    lab.spawn(r.lan, [sys.executable, "-c", SENDER, r.server_alt, "7400", "30"])
    wait_for(lambda: seen["pinned"] > 0, "pinned traffic through isp_b", d)

    path.write_text(text(NEW_GATEWAY))
    daemon.send_signal(signal.SIGHUP)
    wait_for(lambda: "isp_b out of service until probed again" in d.log(), "isp_b out of service", d)
    time.sleep(0.2)  # datagrams already past the router's rules
    before = seen["pinned"]
    wait_for(lambda: "reloaded:" in d.log(), "the reload", d)
    d.wait_states({"isp_b": "down"})  # its new gateway does not answer
    time.sleep(1.0)
    assert seen["pinned"] == before, "traffic went through isp_b before its new gateway answered a probe"

    lab.run(isp1, ["nft", "delete", "table", "inet", BLOCK_TABLE])
    d.wait_states({"isp_b": "up"})
    wait_for(lambda: seen["pinned"] > before, "pinned traffic through the new gateway", d)
    wait_for(lambda: len(lines()) >= 7, "seven on_change calls", d, timeout=10)
    time.sleep(0.5)

    heard_lines = lines()
    per_uplink = {name: [line.split(" ", 1)[1] for line in heard_lines if line.startswith(name + " ")]
                  for name in ("isp_a", "isp_b")}
    assert per_uplink == {
        "isp_a": ["unknown up", "up down", "down up"],
        "isp_b": ["unknown down", "down up", "unknown down", "down up"],
    }, heard_lines
    assert heard_lines[2:5] == ["isp_a up down", "isp_b down up", "isp_a down up"], heard_lines
