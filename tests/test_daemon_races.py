"""`markroute run` against other writers: a failover racing an apply, a reload the kernel refuses.

Same lab as test_daemon_failover: two ISPs, 203.0.113.0/24 through the failover group
[isp_a, isp_b], 198.18.0.0/15 pinned to isp_b.
"""

from __future__ import annotations

import json
import signal
import time

from daemon_helpers import DaemonLab, dlab  # noqa: F401 (dlab: a fixture)
from kernelhelp import KERNEL, markroute

from markroute.kernel import state

pytestmark = KERNEL

CONFIG = """
uplinks:
  isp_a: {interface: wan0, gateway: 10.0.0.1, nat: masquerade}
  isp_b: {interface: wan1, gateway: 10.0.1.1, nat: masquerade}
groups:
  primary: {failover: [isp_a, isp_b]}
policies:
  - {name: pinned-b, to: 198.18.0.0/15, via: isp_b}
  - {name: rest, to: 203.0.113.0/24, via: primary}
"""
# Another config: the pinned network goes through isp_a instead.
OTHER = CONFIG.replace("to: 198.18.0.0/15, via: isp_b", "to: 198.18.0.0/15, via: isp_a")


def no_drift(d: DaemonLab, config: str) -> bool:
    result = markroute("status", "--netns", d.rtr, "--json", "-c", config)
    return result.returncode == 0 and json.loads(result.stdout)["drift"] == []


def wait_for(check: object, what: str, d: DaemonLab, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():  # type: ignore[operator]
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}; daemon log:\n{d.log()}")


def test_a_failover_racing_an_apply_of_another_config_is_not_silent(dlab: DaemonLab) -> None:  # noqa: F811
    """The daemon is frozen (SIGSTOP) while an uplink dies and another config is applied; when it
    wakes, its failover must not rewrite chains into the other config's table: it notices the
    other writer, installs its own config for the uplinks' states, and `status -c` agrees. Pinned
    traffic leaves through isp_b, the failover group through isp_b too."""
    d, r = dlab, dlab.router
    path = d.write(CONFIG)
    other = d.write(OTHER, "other.yaml")
    daemon = d.start(path)
    d.wait_states({"isp_a": "up", "isp_b": "up"})
    with state.locked(d.rtr, "test: the daemon is frozen between two writes"):
        daemon.send_signal(signal.SIGSTOP)  # never while it holds the lock: apply would wait for it
    try:
        d.kill_upstream(0)
        d.apply_behind(other)  # `markroute apply` would ask the (frozen) daemon instead
        time.sleep(3)  # the probes of isp_a time out while the daemon sleeps
    finally:
        daemon.send_signal(signal.SIGCONT)
    d.wait_states({"isp_a": "down"})
    wait_for(lambda: no_drift(d, str(path)), "the daemon's own config back, with no drift", d)
    log = d.log()
    assert "changed by another process" in log or "another markroute command changed" in log, log
    pinned = r.lab.probe(r.lan, "udp", r.server_alt, d.port, count=3)
    assert d.isp_of(set(pinned["seen"])) == {1}, pinned
    rest = r.lab.probe(r.lan, "udp", r.server, d.port, count=3)
    assert d.isp_of(set(rest["seen"])) == {1}, rest
    d.apply_behind(path)
    # that apply installs the config's chains; the daemon, which holds isp_a down, then puts its
    # failover back: status may see the table and the daemon's record apart for that moment
    wait_for(lambda: no_drift(d, str(path)), "no drift once the daemon re-asserted isp_a down", d)


def test_a_reload_the_kernel_refuses_keeps_the_old_config_and_failover(dlab: DaemonLab) -> None:  # noqa: F811
    """A config `check` accepts but the system refuses, sent by SIGHUP: it moves isp_b to table
    150, where another program already has a default route (apply will not take it over
    silently). The daemon says once that it keeps the previous config, and when isp_a then
    dies the failover still moves its traffic to isp_b. (A gateway no interface reaches is
    no refusal under `run`: that uplink waits for its link, issue 13.)"""
    d, r = dlab, dlab.router
    path = d.write(CONFIG)
    daemon = d.start(path)
    d.wait_states({"isp_a": "up", "isp_b": "up"})
    r.lab.ip(r.rtr, "route", "add", "default", "via", "10.0.1.1", "dev", "wan1", "table", "150")
    path.write_text(CONFIG.replace("isp_b: {interface: wan1, gateway: 10.0.1.1, nat: masquerade}",
                                   "isp_b: {interface: wan1, gateway: 10.0.1.1, nat: masquerade, table: 150}"))
    daemon.send_signal(signal.SIGHUP)
    wait_for(lambda: "still running the previous config" in d.log(), "the reload to fail", d)
    assert d.log().count("still running the previous config") == 1
    assert "route default gateway 10.0.1.1 dev wan1 table 150" in d.log(), d.log()
    d.kill_upstream(0)
    d.wait_states({"isp_a": "down"})
    wait_for(lambda: d.isp_of(set(r.lab.probe(r.lan, "udp", r.server, d.port, count=3)["seen"])) == {1},
             "traffic of the failover group through isp_b", d)
    time.sleep(1.5)
    log = d.log()
    assert "cannot act on the uplinks' states" not in log, log
    assert log.count("still running the previous config") == 1, log
    assert daemon.poll() is None


def test_a_failover_after_a_foreign_change_to_the_table_puts_the_table_right(dlab: DaemonLab) -> None:  # noqa: F811
    """Someone adds a rule to markroute's table behind the daemon's back (nf_tables' generation
    moves, state.json does not): the next failover must not trust its picture of the table and
    rewrite only its chains; it goes through apply, which finds the foreign rule and replaces the
    table, so `status -c` has no drift afterwards. (Before, the rewrite went into the table
    as it was and the daemon's record then took the foreign rule in: `status` said no drift.)"""
    d, r = dlab, dlab.router
    path = d.write(CONFIG)
    d.start(path)
    d.wait_states({"isp_a": "up", "isp_b": "up"})
    listing = json.loads(r.lab.run(d.rtr, ["nft", "-j", "list", "table", "inet", "markroute"]).stdout)["nftables"]
    chain = next(item["chain"]["name"] for item in listing
                 if "chain" in item and not item["chain"]["name"].startswith(("via_", "group_")))
    r.lab.run(d.rtr, ["nft", "insert", "rule", "inet", "markroute", chain, "meta", "mark", "0x5eed", "counter"])
    assert not no_drift(d, str(path))
    d.kill_upstream(0)
    d.wait_states({"isp_a": "down"})
    wait_for(lambda: no_drift(d, str(path)), "no drift", d)
    table = r.lab.run(d.rtr, ["nft", "list", "table", "inet", "markroute"]).stdout
    assert "0x00005eed" not in table and "0x5eed" not in table, "the foreign rule was adopted, not removed"
    assert "changed by another process" in d.log()
    rest = r.lab.probe(r.lan, "udp", r.server, d.port, count=3)
    assert d.isp_of(set(rest["seen"])) == {1}, rest
