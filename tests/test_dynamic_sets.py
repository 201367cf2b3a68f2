"""Dynamic sets: elements others add are kept by apply, run, SIGHUP and restarts, and are not drift.

The lab's main table sends everything through ISP 0 (isp_a); a policy sends the
addresses of dynamic set `vpn` through isp_b. Whether an address is in the set is
seen the way it matters: the server sees isp_b's public address.
"""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path
from typing import Any

import pytest
from daemon_helpers import DaemonLab, dlab  # noqa: F401 (dlab: a fixture)
from kernelhelp import markroute

from markroute.lab import Lab, router_lab

pytestmark = pytest.mark.kernel
PORT = 7000

POLICIES = """
sets:
  vpn: {{dynamic: true, timeout: {timeout}}}
  unused: {{dynamic: true}}
policies:
  - name: vpn-via-b
    to: "@vpn"
    via: isp_b
"""


def config(r: Any, timeout: str = "1h") -> str:
    return str(r.uplinks_yaml(["isp_a", "isp_b"])) + POLICIES.format(timeout=timeout)


def listed(ns: str, name: str = "vpn") -> dict[str, int | None]:
    proc = markroute("set", "list", name, "--netns", ns, "--json")
    assert proc.returncode == 0, proc.stderr
    return {row["element"]: row["expires"] for row in json.loads(proc.stdout)}


def ok(*args: str) -> str:
    proc = markroute(*args)
    assert proc.returncode == 0, (args, proc.stdout, proc.stderr)
    return proc.stdout


def trace(*args: str) -> dict[str, Any]:
    proc = markroute("trace", *args, "--iif", "lan0", "--proto", "tcp", "--dport", str(PORT), "--json")
    assert proc.returncode in (0, 3), proc.stderr
    found: dict[str, Any] = json.loads(proc.stdout)
    return found


def isps(r: Any, lab: Lab, address: str, port: int = PORT) -> dict[int | None, int]:
    counts: dict[int | None, int] = r.isp_counts(lab.probe(r.lan, "tcp", address, port, count=4)["seen"])
    return counts


def test_elements_survive_apply_and_are_not_drift(lab: Lab, markroute_cli: Any) -> None:
    r = router_lab(lab, isps=2)
    lab.serve_echo(r.net, PORT)
    markroute_cli.apply(r.rtr, config(r))
    assert isps(r, lab, r.server) == {0: 4}, "an empty dynamic set is valid and matches nothing"

    ok("set", "add", "vpn", r.server, "--netns", r.rtr)
    ok("set", "add", "vpn", "198.18.0.0/24", "--timeout", "2h", "--netns", r.rtr)
    assert isps(r, lab, r.server) == {1: 4}
    assert isps(r, lab, "198.18.0.10") == {1: 4}
    for address, policy, oif in ((r.server, "vpn-via-b", "wan1"), ("198.18.1.10", None, "wan0")):
        live = trace("--live", "--netns", r.rtr, "--from", r.client_v4, "--to", address)
        assert (live["verdict"], live["policy"], live["oif"]) == ("forward", policy, oif), live
    offline = trace("-c", markroute_cli.write(config(r)), "--from", r.client_v4, "--to", r.server,
                    "--addr", f"lan0={r.rtr_lan_v4}/24", "--addr", f"wan0={r.rtr_wan_v4[0]}/24")
    assert offline["verdict"] == "indeterminate" and "dynamic set vpn_v4" in offline["reason"], offline
    report = markroute_cli.status(r.rtr)  # fails the test on drift
    assert report["drift"] == [] and report["dynamic_sets"] == {"vpn_v4": 2, "vpn_v6": 0, "unused_v4": 0,
                                                                 "unused_v6": 0}

    assert "already up to date" in markroute_cli.apply(r.rtr, config(r))
    assert set(listed(r.rtr)) == {r.server, "198.18.0.0/24"}

    # A changed set definition replaces the whole table: the elements go along, lifetimes kept.
    before = listed(r.rtr)
    assert "replaced" in markroute_cli.apply(r.rtr, config(r, "3h"))
    after = listed(r.rtr)
    assert set(after) == set(before)
    assert after["198.18.0.0/24"] is not None and 7000 < after["198.18.0.0/24"] <= 7200, after
    assert isps(r, lab, r.server) == {1: 4} and markroute_cli.status(r.rtr)["drift"] == []

    # Someone else (dnsmasq, a script) adds with nft directly, with a short lifetime: it expires.
    lab.run(r.rtr, ["nft", "add", "element", "inet", "markroute", "vpn_v4", "{ 198.18.1.10 timeout 2s }"])
    assert isps(r, lab, "198.18.1.10") == {1: 4}
    time.sleep(3)
    assert "198.18.1.10" not in listed(r.rtr)
    assert isps(r, lab, "198.18.1.10") == {0: 4}

    ok("set", "del", "vpn", r.server, "--netns", r.rtr)
    assert isps(r, lab, r.server) == {0: 4}
    markroute_cli.down(r.rtr)


def test_set_add_refuses_what_is_not_a_dynamic_set(lab: Lab, markroute_cli: Any) -> None:
    r = router_lab(lab, isps=2)
    static = config(r).replace("sets:\n", "sets:\n  fixed: {file: fixed.txt}\n") + (
        "  - {name: fixed-via-b, to: '@fixed', via: isp_b}\n")
    markroute_cli.apply(r.rtr, static, {"fixed.txt": "192.0.2.0/24\n"})
    for args, message in (
        (["set", "add", "nosuch", "192.0.2.1"], "is not in the applied config"),
        (["set", "add", "fixed", "192.0.2.1"], "comes from the config"),
        (["set", "add", "vpn", "not-an-address"], "not-an-address"),
        (["set", "add", "vpn", "192.0.2.1", "--timeout", "forever"], "not a duration"),
    ):
        proc = markroute(*args, "--netns", r.rtr)
        assert proc.returncode != 0 and message in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    assert listed(r.rtr) == {}
    markroute_cli.down(r.rtr)


def test_run_sighup_and_restart_keep_the_elements(dlab: DaemonLab, tmp_path: Path) -> None:  # noqa: F811
    d, r = dlab, dlab.router
    path = d.write(config(r))
    daemon = d.start(path)
    d.wait_states({"isp_a": "up", "isp_b": "up"})
    ok("set", "add", "vpn", r.server, "--netns", d.rtr)
    assert isps(r, r.lab, r.server, d.port) == {1: 4}
    flow = d.flow("tcp", r.server, duration=12, interval=0.05)  # one connection across reload and restart
    time.sleep(1)

    path.write_text(config(r, "2h"))  # a set definition changed: the reload replaces the table
    daemon.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 15
    while "timeout 2h" not in r.lab.run(d.rtr, ["nft", "list", "set", "inet", "markroute", "vpn_v4"]).stdout:
        assert time.monotonic() < deadline, d.log()
        time.sleep(0.2)
    assert set(listed(d.rtr)) == {r.server}
    assert isps(r, r.lab, r.server, d.port) == {1: 4}

    daemon.send_signal(signal.SIGTERM)
    assert daemon.wait(timeout=15) == 0, d.log()
    d.start(path)
    d.wait_states({"isp_a": "up", "isp_b": "up"})
    assert set(listed(d.rtr)) == {r.server}
    assert isps(r, r.lab, r.server, d.port) == {1: 4}
    seen = flow.result()
    assert d.isp_of(seen.sources()) == {1} and not seen.errors, seen.errors
    assert seen.gap() < 3, "the connection kept flowing through isp_b across SIGHUP and the restart"
    proc = markroute("status", "--netns", d.rtr, "--json", "-c", str(path))
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_a_rolled_back_table_replacement_keeps_the_elements(lab: Lab, markroute_cli: Any,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    from markroute.compile import compile_plan
    from markroute.config import load_model
    from markroute.kernel import KernelError
    from markroute.kernel.apply import ApplyFailed, _Apply, apply
    from markroute.kernel.netns import inside

    r = router_lab(lab, isps=2)
    markroute_cli.apply(r.rtr, config(r))
    ok("set", "add", "vpn", r.server, "--netns", r.rtr)
    changed, _ = load_model(markroute_cli.write(config(r, "2h")))
    assert changed is not None

    def refuse(self: object, *args: object) -> None:
        raise KernelError("injected failure after the table was replaced")

    monkeypatch.setattr(_Apply, "restore_unwanted_sysctls", refuse)
    with inside(r.rtr), pytest.raises(ApplyFailed) as failure:
        apply(compile_plan(changed), r.rtr)
    assert "injected failure" in str(failure.value) and failure.value.undo_problems == []
    assert "timeout 1h" in lab.run(r.rtr, ["nft", "list", "set", "inet", "markroute", "vpn_v4"]).stdout
    assert set(listed(r.rtr)) == {r.server}, "the rollback put the table back with the element"
    assert markroute_cli.status(r.rtr)["drift"] == []
    markroute_cli.down(r.rtr)


NEIGHBOURLY = """
settings: {exec: true}
sets:
  vpn: {dynamic: true}
policies:
  - name: vpn-via-b
    to: "@vpn"
    via: isp_b
  - name: root-via-a
    user: 0
    via: isp_a
"""


def test_live_neighbour_check_reads_dynamic_sets_empty_or_filled(lab: Lab, markroute_cli: Any) -> None:
    """`check --live` and `status` simulate the live table: a dynamic set (empty, then filled), a
    `meta skuid` policy and the exec map must neither break them nor be called a neighbour's doing."""
    r = router_lab(lab, isps=2)
    path = markroute_cli.write(str(r.uplinks_yaml(["isp_a", "isp_b"])) + NEIGHBOURLY)
    before = markroute("check", "--live", "-c", path, "--netns", r.rtr)
    assert before.returncode == 0 and "Traceback" not in before.stderr, before.stderr
    assert markroute("apply", "-c", path, "--netns", r.rtr).returncode == 0
    for step in ("empty", "filled"):
        checked = markroute("check", "--live", "-c", path, "--netns", r.rtr)
        assert checked.returncode == 0 and "Traceback" not in checked.stderr, (step, checked.stderr)
        status = markroute("status", "--netns", r.rtr, "--json")
        assert status.returncode == 0, (step, status.stdout, status.stderr)
        report = json.loads(status.stdout)
        assert report["neighbours"] == [], (step, report["neighbours"])
        assert report["dynamic_sets"] == {"vpn_v4": 0 if step == "empty" else 1, "vpn_v6": 0}, report
        if step == "empty":
            ok("set", "add", "vpn", "198.18.0.0/24", "--netns", r.rtr)
    assert "dynamic sets (filled by others):" in ok("status", "--netns", r.rtr)
