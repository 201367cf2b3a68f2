"""Who sends it, on the router: `user:`/`group:` policies and `markroute exec`, with real processes.

The lab's main table sends everything through ISP 0 (isp_a); what the far server sees
as the source tells which ISP carried a connection.
"""

from __future__ import annotations

import pwd
import sys
from pathlib import Path
from typing import Any

import pytest
from kernelhelp import REPO, markroute

from markroute.lab import Lab, router_lab

pytestmark = pytest.mark.kernel
PORT = 7000
NOBODY = pwd.getpwnam("nobody")


def probe_argv(proto: str, host: str, count: int = 5) -> list[str]:
    return [sys.executable, "-m", "markroute.lab.probe", proto, host, str(PORT), "--count", str(count)]


def seen(r: Any, out: str) -> dict[int | None, int]:
    import json

    counts: dict[int | None, int] = r.isp_counts(json.loads(out)["seen"])
    return counts


def env() -> dict[str, str]:
    import os

    return dict(os.environ, PYTHONPATH=str(REPO))


def test_user_and_group_policies_steer_the_processes_they_name(lab: Lab, markroute_cli: Any) -> None:
    r = router_lab(lab, isps=3)
    lab.serve_echo(r.net, PORT)
    config = r.uplinks_yaml(["isp_a", "isp_b", "isp_c"]) + """
policies:
  - {name: nobody-via-b, user: nobody, via: isp_b}
  - {name: group-via-c, group: 4242, via: isp_c}
"""
    markroute_cli.apply(r.rtr, config)
    as_nobody = ["setpriv", f"--reuid={NOBODY.pw_uid}", f"--regid={NOBODY.pw_gid}", "--clear-groups"]
    as_group = ["setpriv", "--regid=4242", "--clear-groups"]
    for proto in ("tcp", "udp"):
        assert seen(r, lab.run(r.rtr, as_nobody + probe_argv(proto, r.server), env=env()).stdout) == {1: 5}
        assert seen(r, lab.run(r.rtr, as_group + probe_argv(proto, r.server), env=env()).stdout) == {2: 5}
        assert seen(r, lab.run(r.rtr, probe_argv(proto, r.server), env=env()).stdout) == {0: 5}, "root: main"
    counters = markroute_cli.policy_packets(r.rtr)
    assert counters["nobody-via-b"] >= 10 and counters["group-via-c"] >= 10
    lan = r.isp_counts(lab.probe(r.lan, "tcp", r.server, PORT, count=5)["seen"])
    assert lan == {0: 5}, "forwarded traffic has no local socket: the policies never take it"
    markroute_cli.down(r.rtr)


def test_exec_sends_every_connection_of_a_command_through_its_target(lab: Lab, markroute_cli: Any,
                                                                     tmp_path: Path) -> None:
    r = router_lab(lab, isps=2)
    lab.serve_echo(r.net, PORT)
    config = r.uplinks_yaml(["isp_a", "isp_b"]) + """
groups:
  both: {balance: {isp_a: 1, isp_b: 1}}
policies:
  - {name: rest, via: isp_a}
settings: {exec: true}
"""
    markroute_cli.apply(r.rtr, config)
    path = tmp_path / "markroute.yaml"
    path.write_text(config)
    for target, isp in (("isp_a", 0), ("isp_b", 1)):
        for proto in ("tcp", "udp"):
            # A UDP socket given an ephemeral port an earlier run used would meet that run's
            # connection (30 s of UDP timeout) and keep its uplink: 20 ports against 20 of 28,232, ~1 run in 70.
            lab.run(r.rtr, ["conntrack", "-F"])
            proc = markroute("exec", "-c", str(path), "--netns", r.rtr, target, "--",
                             *probe_argv(proto, r.server, count=20))
            assert proc.returncode == 0, proc.stderr
            assert seen(r, proc.stdout) == {isp: 20}, (target, proto, proc.stdout)
    both = markroute("exec", "-c", str(path), "--netns", r.rtr, "both", "--", *probe_argv("tcp", r.server, 60))
    split = seen(r, both.stdout)
    assert set(split) == {0, 1} and min(split.values()) >= 10, split
    plain = seen(r, lab.run(r.rtr, probe_argv("tcp", r.server, 20), env=env()).stdout)
    assert plain == {0: 20}, "other processes follow the policies"

    for args, message in ((["nosuch", "--", "true"], "no uplink or group 'nosuch'"),
                          (["isp_b"], "Missing argument")):
        proc = markroute("exec", "-c", str(path), "--netns", r.rtr, *args)
        assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    without = tmp_path / "without.yaml"
    without.write_text(config.replace("settings: {exec: true}\n", ""))
    proc = markroute("exec", "-c", str(without), "--netns", r.rtr, "isp_b", "--", "true")
    assert proc.returncode == 1 and "exec: true" in proc.stderr
    markroute_cli.down(r.rtr)
