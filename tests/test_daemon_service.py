"""`markroute run` as a service: status and metrics, signals, reload, on_change, probe methods.

Same lab as test_daemon_failover: two ISPs, traffic to 203.0.113.0/24 through the
failover group [isp_a, isp_b], 198.18.0.0/15 pinned to isp_b.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from daemon_helpers import (  # noqa: F401 (dlab: a fixture)
    DaemonLab,
    daemon_lab,
    dlab,
    python_env,
)
from kernelhelp import markroute

from markroute.kernel.state import directory
from markroute.values import BOUND_TABLE_OFFSET

CONFIG = """
uplinks:
  isp_a: {{interface: wan0, gateway: 10.0.0.1, nat: masquerade{check_a}}}
  isp_b: {{interface: wan1, gateway: 10.0.1.1, nat: masquerade{check_b}}}
groups:
  primary: {{failover: [isp_a, isp_b]}}
settings: {{{settings}}}
policies:
  - {{name: pinned-b, to: 198.18.0.0/15, via: isp_b}}
  - {{name: rest, to: 203.0.113.0/24, via: primary}}
"""
METRICS = "127.0.0.1:9586"


def config(check_a: str = "", check_b: str = "", settings: str = "") -> str:
    return CONFIG.format(
        check_a=f", check: {check_a}" if check_a else "", check_b=f", check: {check_b}" if check_b else "",
        settings=settings,
    )


def status(d: DaemonLab, *args: str) -> tuple[int, dict[str, object]]:
    result = markroute("status", "--netns", d.rtr, "--json", *args)
    return result.returncode, json.loads(result.stdout)


def scrape(d: DaemonLab) -> str:
    """GET /metrics from inside the router namespace, where the daemon listens."""
    fetch = f"import urllib.request; print(urllib.request.urlopen('http://{METRICS}/metrics').read().decode())"
    return str(d.router.lab.run(d.rtr, [sys.executable, "-c", fetch]).stdout)


@pytest.mark.kernel
def test_status_and_metrics_show_the_uplinks_state(dlab: DaemonLab) -> None:  # noqa: F811
    d, r = dlab, dlab.router
    d.start(d.write(config()), "--metrics", METRICS)
    d.wait_states({"isp_a": "up", "isp_b": "up"})
    changes = d.record().rule_changes  # the first verdicts (unknown -> up) rewrote the chains too
    r.lab.probe(r.lan, "udp", r.server, d.port, count=4)
    d.kill_upstream(0)
    d.wait_states({"isp_a": "down", "isp_b": "up"})
    time.sleep(1.5)  # the table record follows the rewrite, and RTTs are saved once a second

    code, report = status(d)
    assert code == 0 and report["drift"] == [], "the rewritten chains are what the state records"
    health = {u["name"]: u["health"] for u in report["uplinks"]}  # type: ignore[attr-defined]
    assert health["isp_a"]["state"] == "down" and health["isp_a"]["transitions"] == 1
    assert health["isp_b"]["state"] == "up" and health["isp_b"]["rtt"] > 0 and health["isp_b"]["loss"] == 0
    assert report["daemon"]["running"] and report["daemon"]["rule_changes"] == changes + 1  # type: ignore[index]
    code, _ = status(d, "-c", str(d.workdir / "markroute.yaml"))
    assert code == 0, "the config's plan still matches: health is not a config change"
    text = markroute("status", "--netns", d.rtr).stdout
    assert "health down since" in text and "markroute run: pid" in text

    metrics = scrape(d)
    assert 'markroute_uplink_state{uplink="isp_a",state="down"} 1' in metrics
    assert 'markroute_uplink_state{uplink="isp_b",state="up"} 1' in metrics
    assert f"markroute_rule_changes_total {changes + 1}" in metrics
    assert 'markroute_policy_packets_total{policy="rest"} 4' in metrics
    assert 'markroute_uplink_transmit_packets_total{uplink="isp_b",interface="wan1"}' in metrics


@pytest.mark.kernel
def test_sigterm_leaves_the_rules_and_down_on_exit_removes_them(dlab: DaemonLab) -> None:  # noqa: F811
    d, r = dlab, dlab.router
    path = d.write(config())
    first = d.start(path)
    first.send_signal(signal.SIGTERM)
    assert first.wait(timeout=10) == 0
    code, report = status(d)
    assert code == 0 and report["applied"] and not report["daemon"]["running"]  # type: ignore[index]
    assert r.lab.probe(r.lan, "udp", r.server_alt, d.port)["ok"] == 1

    second = d.start(path, "--down-on-exit")
    second.send_signal(signal.SIGINT)
    assert second.wait(timeout=10) == 0
    assert not directory(d.rtr).exists(), "markroute removed, its records too"
    assert "stopped; markroute removed" in d.log()


@pytest.mark.kernel
def test_sighup_reloads_the_config_and_keeps_the_uplinks_state(dlab: DaemonLab) -> None:  # noqa: F811
    d, r = dlab, dlab.router
    path = d.write(config())
    daemon = d.start(path)
    d.kill_upstream(0)
    before = d.wait_states({"isp_a": "down"}).uplinks["isp_a"]
    path.write_text(config() + "  - {name: extra, to: 192.0.2.0/24, via: isp_b}\n")
    daemon.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 10
    while status(d, "-c", str(path))[0] != 0 and time.monotonic() < deadline:
        time.sleep(0.2)
    code, report = status(d, "-c", str(path))
    assert code == 0 and "extra" in [p["name"] for p in report["policies"]]  # type: ignore[attr-defined]
    after = d.record().uplinks["isp_a"]
    assert (after.state, after.since, after.transitions) == (before.state, before.since, before.transitions), (
        "isp_a's definition did not change: its health was kept")
    assert d.isp_of(set(r.lab.probe(r.lan, "udp", r.server, d.port, count=3)["seen"])) == {1}

    path.write_text("uplinks: [broken\n")
    daemon.send_signal(signal.SIGHUP)
    time.sleep(1)
    assert daemon.poll() is None and "reload: the config is invalid" in d.log()
    assert status(d)[0] == 0


@pytest.mark.kernel
def test_a_reload_reads_a_set_file_again_only_when_it_changed(dlab: DaemonLab) -> None:  # noqa: F811
    """The daemon keeps a set file's addresses between reloads while the file is unchanged
    (`config.sets.SetFiles`); rewritten in place with the same size and its modification time
    put back, only its change time differs, and the reload still installs the new list."""
    d = dlab
    lists = d.workdir / "lists.txt"

    def listed(text: str) -> None:
        before = lists.stat() if lists.exists() else None
        with open(lists, "r+" if before else "w") as out:
            out.write(text)
        then = time.time() - 60  # a list written last night: past the racy window, so it is kept
        os.utime(lists, ns=(before.st_atime_ns, before.st_mtime_ns) if before else (int(then * 1e9),) * 2)

    def live() -> str:
        return str(d.router.lab.run(d.rtr, ["nft", "-j", "list", "set", "inet", "markroute", "lists_v4"]).stdout)

    listed("100.64.1.0/24\n")
    policy = '  - {name: listed, to: "@lists", via: isp_b}\n'
    path = d.write(config() + policy + "sets:\n  lists: {file: lists.txt}\n")
    d.start(path)
    assert "100.64.1.0" in live()
    path.write_text(config() + policy + "  - {name: extra, to: 192.0.2.0/24, via: isp_b}\n"
                    "sets:\n  lists: {file: lists.txt}\n")
    result = markroute("apply", "-c", str(path), "--netns", d.rtr)
    assert result.returncode == 0 and "applied by markroute run" in result.stdout, (result.stdout, result.stderr)
    assert "100.64.1.0" in live()
    listed("100.64.2.0/24\n")  # same size, same inode, same modification time
    result = markroute("apply", "-c", str(path), "--netns", d.rtr)
    assert result.returncode == 0 and "applied:" in result.stdout, (result.stdout, result.stderr)
    assert "100.64.2.0" in live() and "100.64.1.0" not in live(), live()


@pytest.mark.kernel
def test_an_apply_or_down_behind_the_daemons_back_is_put_right(dlab: DaemonLab) -> None:  # noqa: F811
    d, r = dlab, dlab.router
    path = d.write(config())
    d.start(path)
    d.kill_upstream(0)
    d.wait_states({"isp_a": "down"})
    time.sleep(1)
    for command in ("apply", "down"):
        noticed = d.log().count("another markroute command changed")
        # the CLI's apply would ask the daemon and its down is refused (tests/test_daemon_control.py)
        if command == "apply":
            d.apply_behind(path)
        else:
            d.down_behind()
        deadline = time.monotonic() + 10
        while d.log().count("another markroute command changed") == noticed and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(0.5)
        assert status(d, "-c", str(path))[0] == 0, f"after '{command}': applied again, no drift"
        seen = r.lab.probe(r.lan, "udp", r.server, d.port, count=3)["seen"]
        assert d.isp_of(set(seen)) == {1}, f"after '{command}': traffic still avoids the dead isp_a"


@pytest.mark.kernel
def test_on_change_runs_with_the_uplink_and_its_states(dlab: DaemonLab) -> None:  # noqa: F811
    d = dlab
    seen = d.workdir / "changes.txt"
    hook = d.workdir / "hook.py"
    hook.write_text(
        "import os\n"
        f"with open({str(seen)!r}, 'a') as out:\n"
        "    out.write(' '.join(os.environ[k] for k in ('MARKROUTE_UPLINK', 'MARKROUTE_OLD_STATE',"
        " 'MARKROUTE_NEW_STATE', 'MARKROUTE_NETNS')) + '\\n')\n"
    )
    d.start(d.write(config(settings=f"on_change: [{sys.executable}, {hook}]")))
    d.kill_upstream(0)
    d.wait_states({"isp_a": "down"})
    d.revive_upstream(0)
    d.wait_states({"isp_a": "up"}, timeout=10)
    deadline = time.monotonic() + 5
    while len(seen.read_text().splitlines() if seen.exists() else []) < 4 and time.monotonic() < deadline:
        time.sleep(0.1)
    lines = seen.read_text().splitlines()
    # the first known state of each uplink (from unknown), then every real change, in order
    assert sorted(lines[:2]) == [f"isp_a unknown up {d.rtr}", f"isp_b unknown up {d.rtr}"]
    assert lines[2:] == [f"isp_a up down {d.rtr}", f"isp_a down up {d.rtr}"]


@pytest.mark.kernel
def test_probes_leave_through_their_own_uplink_whatever_the_policies_say(dlab: DaemonLab) -> None:  # noqa: F811
    d = dlab
    # isp_a probes an address the policies pin to isp_b, isp_b one they send to isp_a:
    # a probe that followed the policies would be answered through the other uplink.
    d.start(d.write(config(check_a="{targets: [198.18.0.1]}", check_b="{targets: [203.0.113.1]}")))
    d.wait_states({"isp_a": "up", "isp_b": "up"})
    d.kill_upstream(1)
    d.wait_states({"isp_b": "down"})
    time.sleep(1)
    assert d.states() == {"isp_a": "up", "isp_b": "down"}
    d.revive_upstream(1)
    d.kill_upstream(0)
    d.wait_states({"isp_a": "down", "isp_b": "up"}, timeout=10)


@pytest.mark.kernel
def test_tcp_and_arp_checks(dlab: DaemonLab) -> None:  # noqa: F811
    d, r = dlab, dlab.router
    d.start(d.write(config(check_a=f'{{method: tcp, targets: ["203.0.113.1:{d.port}"]}}', check_b="{method: arp}")))
    d.wait(lambda seen: all(u.rtt is not None and u.loss == 0 for u in seen.uplinks.values()), "answered probes")
    d.kill_upstream(0)
    d.kill_upstream(1)
    d.wait_states({"isp_a": "down"})
    time.sleep(1)
    assert d.states()["isp_b"] == "up", "ARP checks the gateway itself, which still answers"
    d.set_link(r.isps[1], "down0", up=False)
    d.wait_states({"isp_b": "down"}, timeout=5)


def test_run_refuses_a_bad_config_and_a_bad_metrics_address(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("uplinks:\n  isp_a: {interface: eth0, gateway: 192.0.2.256}\n")
    result = subprocess.run([sys.executable, "-m", "markroute", "run", "-c", str(bad)],
                            capture_output=True, text=True, env=python_env(), timeout=60, check=False)
    assert result.returncode == 1 and "192.0.2.256" in result.stderr and "Traceback" not in result.stderr
    result = subprocess.run([sys.executable, "-m", "markroute", "run", "-c", str(bad), "--metrics", "9586"],
                            capture_output=True, text=True, env=python_env(), timeout=60, check=False)
    assert result.returncode == 2 and "HOST:PORT" in result.stderr


@pytest.mark.kernel
def test_follows_a_new_address_and_an_interface_that_vanishes_and_returns(dlab: DaemonLab) -> None:  # noqa: F811
    d, r = dlab, dlab.router
    d.start(d.write(config()))
    d.wait(lambda seen: all(u.rtt is not None for u in seen.uplinks.values()), "answered probes")
    # DHCP gave isp_b another address: the source rule and isp_b's probes follow it.
    r.lab.ip(r.rtr, "addr", "del", "10.0.1.2/24", "dev", "wan1")
    r.lab.ip(r.rtr, "addr", "add", "10.0.1.3/24", "dev", "wan1")
    wait_no_drift(d)
    rules = r.lab.run(r.rtr, ["ip", "rule"]).stdout
    assert f"from 10.0.1.3 lookup {101 + BOUND_TABLE_OFFSET}" in rules and "10.0.1.2" not in rules  # isp_b's bound table
    time.sleep(1)
    assert d.states()["isp_b"] == "up"
    assert d.isp_of(set(r.lab.probe(r.lan, "udp", r.server_alt, d.port, count=3)["seen"])) == {1}

    # wan0 disappears (and its peer with it), then comes back as a new interface.
    r.lab.ip(r.rtr, "link", "del", "wan0")
    d.wait_states({"isp_a": "down"}, timeout=5)
    r.lab.veth(r.rtr, "wan0", r.isps[0], "down0")
    r.lab.addr(r.rtr, "wan0", "10.0.0.2/24")
    r.lab.addr(r.isps[0], "down0", "10.0.0.1/24")
    d.wait_states({"isp_a": "up"}, timeout=10)
    wait_no_drift(d)
    assert d.isp_of(set(r.lab.probe(r.lan, "udp", r.server, d.port, count=3)["seen"])) == {0}
    assert "link wan0 is gone" in d.log()


def wait_no_drift(d: DaemonLab, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while status(d)[0] != 0 and time.monotonic() < deadline:
        time.sleep(0.2)
    code, report = status(d)
    assert code == 0, report["drift"]


@pytest.mark.kernel
def test_icmpv6_probes(tmp_path: Path) -> None:
    with daemon_lab(tmp_path, ipv6=True) as d:
        r = d.router
        d.start(d.write(f"""
uplinks:
  isp_a: {{interface: wan0, gateway: 10.0.0.1, gateway6: "{r.isp_gw_v6[0]}", nat: masquerade,
          check: {{targets: ["{r.server6}"]}}}}
  isp_b: {{interface: wan1, gateway: 10.0.1.1, gateway6: "{r.isp_gw_v6[1]}", nat: masquerade}}
policies:
  - {{name: v6, to: "2001:db8:100::/48", via: isp_a}}
"""))
        seen = d.wait(lambda s: all(u.rtt is not None and u.loss == 0 for u in s.uplinks.values()), "answers")
        assert seen.uplinks["isp_a"].state == "up"
        d.kill_upstream(0)
        d.wait_states({"isp_a": "down", "isp_b": "up"})
        d.revive_upstream(0)
        d.wait_states({"isp_a": "up"}, timeout=10)
