"""`markroute run` puts back the ip rules a network manager deletes, and says who, once.

systemd-networkd (with its default `ManageForeignRoutingPolicyRules=yes`) deletes every
ip rule it did not configure when it starts or reconfigures a link. networkd itself
cannot run in a test namespace, so its sweep is reproduced by a long-lived process that
deletes every rule except the kernel's three over one netlink socket, as networkd does.
While a UDP flow runs from the LAN through the uplink a policy pins it to, the sweep
runs twice; markroute's rules must be back within a second each time, the flow must be
answered through its uplink again right after (in between it falls back to main), and the daemon's log must name the deleting
process once per rule (the second sweep is only counted), not loop. A flush of one of
markroute's uplink tables is put back the same way, but never while another writer
holds the namespace's lock (the repair is an apply, like every daemon write).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest
from daemon_helpers import DaemonLab, dlab  # noqa: F401 (dlab: a fixture)

from markroute.kernel import state

pytestmark = pytest.mark.kernel

CONFIG = """
uplinks:
  isp_a: {interface: wan0, gateway: 10.0.0.1, nat: masquerade}
  isp_b: {interface: wan1, gateway: 10.0.1.1, nat: masquerade}
policies:
  - {name: pinned-b, to: 198.18.0.0/15, via: isp_b}
"""

# networkd's sweep: one socket, every rule but the kernel's own deleted; "sweep" on stdin runs it.
SWEEPER = """
import socket, sys
from pyroute2 import IPRoute
KERNEL = {0, 32766, 32767}
with IPRoute() as ipr:
    for line in sys.stdin:
        count = 0
        for family in (socket.AF_INET, socket.AF_INET6):
            for msg in ipr.get_rules(family=family):
                priority = msg.get_attr("FRA_PRIORITY") or 0
                if priority in KERNEL:
                    continue
                ipr.rule("del", family=family, priority=priority, table=msg.get_attr("FRA_TABLE") or msg["table"],
                         action=msg["action"], fwmark=msg.get_attr("FRA_FWMARK"), fwmask=msg.get_attr("FRA_FWMASK"),
                         src=msg.get_attr("FRA_SRC"), src_len=msg["src_len"])
                count += 1
        print(count, flush=True)
"""
RESTORE_WITHIN = 1.0


def own_rules(d: DaemonLab) -> list[dict[str, object]]:
    rules: list[dict[str, object]] = []
    for family in ("-4", "-6"):
        rules += json.loads(d.router.lab.run(d.rtr, ["ip", family, "-j", "rule"]).stdout or "[]")
    return [rule for rule in rules if rule.get("protocol") == "77"]


def test_run_restores_rules_a_network_manager_deletes(dlab: DaemonLab) -> None:  # noqa: F811
    d, r = dlab, dlab.router
    d.start(d.write(CONFIG))
    installed = own_rules(d)
    assert installed, "markroute installed its rules"
    flow = d.flow("udp", "198.18.0.10", duration=6.0, interval=0.02)
    time.sleep(1.0)

    sweeper = subprocess.Popen(["ip", "netns", "exec", r.rtr, sys.executable, "-c", SWEEPER],
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        restored: list[float] = []
        back: list[float] = []  # wall-clock time each restore was seen, as the meter records answers
        for _ in range(2):
            assert sweeper.stdin is not None and sweeper.stdout is not None
            sweeper.stdin.write("sweep\n")
            sweeper.stdin.flush()
            deleted = int(sweeper.stdout.readline())
            swept = time.monotonic()
            assert deleted >= len(installed)
            while own_rules(d) != installed and time.monotonic() - swept < 10:
                time.sleep(0.02)
            restored.append(time.monotonic() - swept)
            back.append(time.time())
            time.sleep(1.0)
    finally:
        sweeper.kill()
        sweeper.wait()
    result = flow.result()

    assert all(seconds <= RESTORE_WITHIN for seconds in restored), f"rules back after {restored} s\n{d.log()}"
    # While the rules are gone the flow falls back to main (isp_a); once back, it is isp_b's again.
    for when in back:
        assert d.isp_of(result.sources(when + 0.2, when + 1.0)) == {1}, "the pinned flow is back on its uplink"
        assert result.answered_between(when + 0.2, when + 1.0) > 0, "the flow is answered after the restore"
    log = d.log()
    lines = [line for line in log.splitlines() if "removed markroute's ip rule" in line]
    assert len(lines) == len(installed), log  # each rule once: the second sweep is only counted
    assert all("python" in line for line in lines), log  # the deleting process is named
    assert log.count("more times by the same programs") == 1, log


def own_routes(d: DaemonLab) -> list[dict[str, object]]:
    routes = json.loads(d.router.lab.run(d.rtr, ["ip", "-j", "route", "show", "table", "all"]).stdout or "[]")
    return sorted((r for r in routes if r.get("protocol") == "77"), key=lambda r: json.dumps(r, sort_keys=True))


def test_run_restores_routes_flushed_from_its_tables(dlab: DaemonLab) -> None:  # noqa: F811
    """A script flushing markroute's uplink table (as a VPN's down script might) loses nothing for long."""
    d = dlab
    d.start(d.write(CONFIG))
    installed = own_routes(d)
    assert any(r.get("table") == "101" for r in installed), installed
    d.router.lab.run(d.rtr, ["ip", "route", "flush", "table", "101"])
    flushed = time.monotonic()
    while own_routes(d) != installed and time.monotonic() - flushed < 10:
        time.sleep(0.02)
    assert time.monotonic() - flushed <= RESTORE_WITHIN, d.log()
    assert "removed markroute's route default table 101" in d.log()


def test_run_repairs_churn_only_once_the_lock_is_free(dlab: DaemonLab) -> None:  # noqa: F811
    """The repair is a write like any other: while another process holds the namespace's lock
    (an apply running), the flushed routes stay gone; once the lock is free they come back."""
    d = dlab
    d.start(d.write(CONFIG))
    installed = own_routes(d)
    with state.locked(d.rtr, "test holder"):
        d.router.lab.run(d.rtr, ["ip", "route", "flush", "table", "101"])
        time.sleep(3.0)
        assert not any(r.get("table") == "101" for r in own_routes(d)), "repaired while the lock was held"
    released = time.monotonic()
    while own_routes(d) != installed and time.monotonic() - released < 15:
        time.sleep(0.05)
    assert own_routes(d) == installed, d.log()
    assert "removed markroute's route default table 101" in d.log()
