"""markroute beside a real router's firewall: the warning names the rule that breaks a path.

Each neighbour is installed for real in the router namespace: Docker's chains written
by `iptables-nft` itself as dockerd issues them, ufw's chain layout through
iptables-nft, an nftables.conf-style `inet filter` table and firewalld's own table
shape loaded with nft. markroute sends the LAN out wan1 (isp1) while each firewall
only lets the LAN out wan0, so real connections die. Every test asserts three things
with real packets and markroute's own output:

* the warning of `check --live` (before the apply) and of `apply`, and the problem of
  `status` (exit 5) name the foreign table and chain, and `status --json` gives the
  rule and a fix;
* a real TCP connection from the LAN through markroute's uplink fails, as warned;
* after the fix the warning gives is applied (the command in its hint, run as is),
  the same connection works and `status` exits 0 with no neighbour problem.
"""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest
from kernelhelp import markroute, write_config
from test_trace_xt_differential import FIREWALLD

from markroute.lab import Lab, RouterLab, router_lab

pytestmark = pytest.mark.kernel

PORT = 7100
CONFIG = """
uplinks:
  isp0: {interface: wan0, gateway: 10.0.0.1, nat: masquerade}
  isp1: {interface: wan1, gateway: 10.0.1.1, nat: masquerade}
policies:
  - name: lan-via-isp1
    from: 192.168.1.0/24
    via: isp1
"""

# dockerd's FORWARD chain for docker0, plus what an admin adds so the LAN may leave:
# new connections from lan0 are accepted, their replies are not (no RELATED,ESTABLISHED).
DOCKER = """
-P FORWARD DROP
-N DOCKER
-N DOCKER-ISOLATION-STAGE-1
-N DOCKER-USER
-A FORWARD -j DOCKER-USER
-A FORWARD -j DOCKER-ISOLATION-STAGE-1
-A FORWARD -o docker0 -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
-A FORWARD -o docker0 -j DOCKER
-A FORWARD -i docker0 ! -o docker0 -j ACCEPT
-A DOCKER-ISOLATION-STAGE-1 -j RETURN
-A DOCKER-USER -i lan0 -j ACCEPT
-A DOCKER-USER -j RETURN
"""

# ufw's forward chains (ufw-before-forward accepts established traffic) with
# `ufw route allow in on lan0 out on wan0`, written through iptables-nft.
UFW = """
-P FORWARD DROP
-N ufw-before-forward
-N ufw-user-forward
-N ufw-reject-forward
-A FORWARD -j ufw-before-forward
-A FORWARD -j ufw-user-forward
-A FORWARD -j ufw-reject-forward
-A ufw-before-forward -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
-A ufw-before-forward -p icmp -m icmp --icmp-type 8 -j ACCEPT
-A ufw-user-forward -i lan0 -o wan0 -j ACCEPT
"""

# /etc/nftables.conf of a Debian router: forward policy drop, the LAN may leave by wan0.
INET_FILTER = """
table inet filter {
    chain input { type filter hook input priority filter; policy accept; }
    chain forward {
        type filter hook forward priority filter; policy drop;
        ct state established,related accept
        iifname "lan0" oifname "wan0" accept
    }
    chain output { type filter hook output priority filter; policy accept; }
}
"""


def _iptables(lab: Lab, ns: str, lines: str) -> None:
    for line in lines.strip().splitlines():
        lab.run(ns, ["iptables-nft", *shlex.split(line)])


def _connects(r: RouterLab) -> bool:
    return r.lab.probe(r.lan, "tcp", r.server, PORT, timeout=1.5)["ok"] == 1


def _status(r: RouterLab) -> tuple[int, dict[str, object]]:
    done = markroute("status", "--netns", r.rtr, "--json")
    return done.returncode, json.loads(done.stdout)


def _fix(r: RouterLab, hint: str) -> None:
    """Run the command a hint gives (between backticks) in the router, as an admin would.

    ufw itself cannot run here (it keeps its rules in /etc/ufw, a host file): its
    `ufw route allow in on A out on B` is replaced by the rule ufw writes for it.
    """
    command = re.search(r"`([^`]+)`", hint)
    assert command is not None, hint
    argv = shlex.split(command.group(1))
    ufw = re.fullmatch(r"ufw route allow in on (\S+) out on (\S+)", command.group(1))
    if ufw is not None:
        argv = ["iptables-nft", "-A", "ufw-user-forward", "-i", ufw.group(1), "-o", ufw.group(2), "-j", "ACCEPT"]
    r.lab.run(r.rtr, argv)


def _scenario(lab: Lab, tmp_path: Path, install: str, kind: str, table: str, chain: str) -> None:
    r = router_lab(lab)
    r.lab.serve_echo(r.net, PORT)
    if kind == "nft":
        lab.nft(r.rtr, install)
    else:
        _iptables(lab, r.rtr, install)
    config = write_config(tmp_path, CONFIG)
    checked = markroute("check", "--live", "-c", config, "--netns", r.rtr)  # before anything is applied
    assert checked.returncode == 0 and f"table {table}" in checked.stderr and chain in checked.stderr, checked.stderr
    applied = markroute("apply", "-c", config, "--netns", r.rtr)
    assert applied.returncode == 0, applied.stderr  # a warning never blocks apply
    assert f"table {table}" in applied.stderr and chain in applied.stderr, applied.stderr
    assert not _connects(r), "the warned path should really be broken"

    code, report = _status(r)
    assert code == 5, report
    problems = report["neighbours"]
    assert isinstance(problems, list) and problems
    mine = [p for p in problems if p["table"] == table and p["chain"] == chain]
    assert mine, problems
    for problem in mine:
        _fix(r, problem["hint"])

    assert _connects(r), "the fix the warning gave should make the path work"
    code, report = _status(r)
    assert code == 0 and report["neighbours"] == [], report


def test_docker_forward_drop_is_named_and_its_fix_works(lab: Lab, tmp_path: Path) -> None:
    _scenario(lab, tmp_path, DOCKER, "iptables", "ip filter", "FORWARD")


def test_ufw_forward_policy_is_named_and_its_fix_works(lab: Lab, tmp_path: Path) -> None:
    _scenario(lab, tmp_path, UFW, "iptables", "ip filter", "FORWARD")


def test_nftables_conf_inet_filter_is_named_and_its_fix_works(lab: Lab, tmp_path: Path) -> None:
    _scenario(lab, tmp_path, INET_FILTER, "nft", "inet filter", "forward")


def test_firewalld_reject_is_named(lab: Lab, tmp_path: Path) -> None:
    """firewalld lets the internal zone forward out wan0 only and rejects the rest."""
    r = router_lab(lab)
    r.lab.serve_echo(r.net, PORT)
    lab.nft(r.rtr, FIREWALLD)
    applied = markroute("apply", "-c", write_config(tmp_path, CONFIG), "--netns", r.rtr)
    assert applied.returncode == 0, applied.stderr
    assert not _connects(r)
    code, report = _status(r)
    assert code == 5, report
    problems = [p for p in report["neighbours"] if p["table"] == "inet firewalld"]  # type: ignore[union-attr]
    assert problems and problems[0]["kind"] == "reject" and problems[0]["chain"] == "filter_FORWARD", problems
    assert "firewall-cmd" in problems[0]["hint"]


def test_no_warning_when_the_firewall_allows_markroutes_paths(lab: Lab, tmp_path: Path) -> None:
    """The same firewall letting the LAN out both WANs: no warning, status exit 0, traffic flows."""
    r = router_lab(lab)
    r.lab.serve_echo(r.net, PORT)
    lab.nft(r.rtr, INET_FILTER.replace('oifname "wan0"', 'oifname { "wan0", "wan1" }'))
    applied = markroute("apply", "-c", write_config(tmp_path, CONFIG), "--netns", r.rtr)
    assert applied.returncode == 0 and "table inet filter" not in applied.stderr, applied.stderr
    assert _connects(r)
    code, report = _status(r)
    assert code == 0 and report["neighbours"] == [], report
