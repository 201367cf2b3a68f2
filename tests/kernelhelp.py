"""Shared pieces of the kernel tests of apply/down/status: the CLI, and views of a namespace.

A "view" is what a user would compare by hand: `nft -j list ruleset`, `ip -j rule`
(both families), `ip -j route show table all` and every net.* sysctl, all read with the
system's own tools, so the tests never trust markroute to report on itself.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from markroute.kernel.state import directory
from markroute.lab import Lab, RouterLab, router_lab

REPO = Path(__file__).resolve().parents[1]
NO_NAMESPACES = os.geteuid() != 0 and os.environ.get("CI") != "true"
KERNEL = pytest.mark.kernel  # skipped without root outside CI by conftest's collection hook
VOLATILE_SYSCTLS = ("net.netfilter.nf_conntrack_count", "net.ipv4.tcp_fastopen_key")  # the key: set by the kernel for the first TCP listener
OWN_PROTOCOL = "77"

TWO_UPLINKS = """
uplinks:
  isp0:
    interface: wan0
    gateway: 10.0.0.1
    nat: masquerade
  isp1:
    interface: wan1
    gateway: 10.0.1.1
    nat: masquerade
policies:
  - name: server-via-isp1
    to: {server}
    via: isp1
"""


def markroute(*args: str) -> subprocess.CompletedProcess[str]:
    """Run the CLI as a user would, in a separate process (it enters the namespace itself)."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, (str(REPO), os.environ.get("PYTHONPATH")))))
    return subprocess.run(
        [sys.executable, "-m", "markroute", *args], capture_output=True, text=True, env=env, timeout=120, check=False
    )


def write_config(directory_: Path, text: str, name: str = "markroute.yaml") -> str:
    path = directory_ / name
    path.write_text(text)
    return str(path)


def _json(lab: Lab, ns: str, *argv: str) -> Any:
    return json.loads(lab.run(ns, list(argv)).stdout or "[]")


def view(lab: Lab, ns: str, foreign_only: bool = False) -> dict[str, Any]:
    """The namespace's ruleset, rules, routes and net sysctls; without markroute's with FOREIGN_ONLY."""
    nft = [item for item in _json(lab, ns, "nft", "-j", "list", "ruleset")["nftables"] if "metainfo" not in item]
    rules = _json(lab, ns, "ip", "-j", "rule") + _json(lab, ns, "ip", "-6", "-j", "rule")
    routes = _json(lab, ns, "ip", "-j", "route", "show", "table", "all")
    sysctls = dict(
        line.split(" = ", 1)
        for line in lab.run(ns, ["sysctl", "-a", "--pattern", r"^net\."], check=False).stdout.splitlines()
        if " = " in line and not line.startswith(VOLATILE_SYSCTLS)
    )
    if foreign_only:
        nft = [item for item in nft if not _markroute_object(item)]
        rules = [rule for rule in rules if rule.get("protocol") != OWN_PROTOCOL]
        routes = [route for route in routes if route.get("protocol") != OWN_PROTOCOL]
    return {"nftables": nft, "rules": rules, "routes": routes, "sysctls": sysctls}


def _markroute_object(item: dict[str, Any]) -> bool:
    body = next(iter(item.values()))
    name = body.get("name") if "table" in item else body.get("table")
    return bool(body.get("family") == "inet" and name == "markroute")


def own_rules(lab: Lab, ns: str) -> list[dict[str, Any]]:
    rules = _json(lab, ns, "ip", "-j", "rule") + _json(lab, ns, "ip", "-6", "-j", "rule")
    return [rule for rule in rules if rule.get("protocol") == OWN_PROTOCOL]


def own_routes(lab: Lab, ns: str) -> list[dict[str, Any]]:
    return [r for r in _json(lab, ns, "ip", "-j", "route", "show", "table", "all") if r.get("protocol") == OWN_PROTOCOL]


@pytest.fixture
def router() -> Iterator[RouterLab]:
    """A LAN router with two ISPs; its markroute state directory is removed afterwards too."""
    with Lab() as lab:
        r = router_lab(lab, isps=2)
        try:
            yield r
        finally:
            shutil.rmtree(directory(r.rtr), ignore_errors=True)
