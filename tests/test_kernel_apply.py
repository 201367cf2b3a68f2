"""apply, down and status on a real kernel: routing, idempotence, convergence, rollback, drift.

Every test builds a router namespace with two ISPs (`markroute.lab.router_lab`); the
main table sends everything through ISP 0, so traffic that reaches the server through
ISP 1 proves the marked table carried it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from kernelhelp import (  # noqa: F401
    KERNEL,
    REPO,
    TWO_UPLINKS,
    markroute,
    own_routes,
    own_rules,
    router,
    view,
    write_config,
)

from markroute.compile import compile_plan
from markroute.config import load_model
from markroute.kernel import KernelError, nft, state
from markroute.kernel.apply import ApplyFailed, apply
from markroute.kernel.netns import inside
from markroute.kernel.rpdb import Rpdb
from markroute.kernel.snapshot import snapshot
from markroute.lab import Lab, RouterLab, router_lab
from markroute.plan import Plan

pytestmark = KERNEL
PORT = 7100

SERVER_VIA_ISP0 = TWO_UPLINKS.replace("server-via-isp1", "server-via-isp0").replace("via: isp1", "via: isp0")
ONLY_ISP0 = """
uplinks:
  isp0:
    interface: wan0
    gateway: 10.0.0.1
    nat: masquerade
policies:
  - name: server-via-isp0
    to: {server}
    via: isp0
"""


def plan_of(config: str) -> Plan:
    model, diagnostics = load_model(config)
    assert model is not None, diagnostics
    return compile_plan(model)


def uplink(plan: Plan, name: str) -> Any:
    return next(u for u in plan.uplinks if u.name == name)


def status(ns: str, *args: str) -> tuple[int, dict[str, Any]]:
    result = markroute("status", "--netns", ns, "--json", *args)
    return result.returncode, json.loads(result.stdout)


def comparable(snapshot_view: dict[str, Any]) -> dict[str, Any]:
    """A view in which a re-created nftables table equals the original (handles are new)."""
    return {**snapshot_view, "nftables": nft.normalise(snapshot_view["nftables"])}


def test_marked_traffic_uses_the_uplink_table(router: RouterLab, tmp_path: Path) -> None:  # noqa: F811
    r = router
    config = write_config(tmp_path, TWO_UPLINKS.format(server=r.server))
    isp1 = uplink(plan_of(config), "isp1")
    r.lab.serve_echo(r.net, PORT)
    assert r.which_isp(next(iter(r.lab.probe(r.lan, "udp", r.server, PORT)["seen"]))) == 0

    result = markroute("apply", "-c", config, "--netns", r.rtr)
    assert result.returncode == 0, result.stderr

    decision = r.lab.ip(r.rtr, "route", "get", r.server, "from", r.client_v4, "iif", r.rtr_lan_if, "mark", hex(isp1.mark))
    assert f"dev {r.rtr_wan_ifs[1]}" in decision.stdout
    tcp = r.lab.probe(r.lan, "tcp", r.server, PORT, count=5, packets=3)
    assert tcp["ok"] == 5 and [r.which_isp(s) for s in tcp["seen"]] == [1]
    other = r.lab.probe(r.lan, "tcp", r.server_alt, PORT, count=3)
    assert other["ok"] == 3 and [r.which_isp(s) for s in other["seen"]] == [0]
    r.lab.run(r.lan, ["ping", "-c", "2", "-W", "2", r.server])

    code, report = status(r.rtr)
    assert code == 0 and report["drift"] == []
    counters = {p["name"]: p["packets"] for p in report["policies"]}
    assert counters["server-via-isp1"] >= 5 + 1  # one first packet per TCP connection and the ping
    by_name = {u["name"]: u for u in report["uplinks"]}
    assert by_name["isp1"]["up"] and by_name["isp1"]["connections"] >= 1
    assert by_name["isp1"]["default_routes"] == [r.isp_gw_v4[1]]


def test_second_apply_changes_nothing(router: RouterLab, tmp_path: Path) -> None:  # noqa: F811
    r = router
    config = write_config(tmp_path, TWO_UPLINKS.format(server=r.server))
    first = markroute("apply", "-c", config, "--netns", r.rtr)
    assert first.returncode == 0 and "already up to date" not in first.stdout
    before = view(r.lab, r.rtr)
    recorded = (state.directory(r.rtr) / "state.json").read_bytes()

    second = markroute("apply", "-c", config, "--netns", r.rtr)
    assert second.returncode == 0, second.stderr
    assert "already up to date" in second.stdout
    assert view(r.lab, r.rtr) == before  # same handles: the table was not even swapped
    assert (state.directory(r.rtr) / "state.json").read_bytes() == recorded


def test_changed_config_converges_and_keeps_connections(router: RouterLab, tmp_path: Path) -> None:  # noqa: F811
    r = router
    first = write_config(tmp_path, TWO_UPLINKS.format(server=r.server), "first.yaml")
    second = write_config(tmp_path, SERVER_VIA_ISP0.format(server=r.server), "second.yaml")
    r.lab.serve_echo(r.net, PORT)
    assert markroute("apply", "-c", first, "--netns", r.rtr).returncode == 0
    flow = r.lab.probe(r.lan, "udp", r.server, PORT, sport=40001)
    assert [r.which_isp(s) for s in flow["seen"]] == [1]

    result = markroute("apply", "-c", second, "--netns", r.rtr)
    assert result.returncode == 0, result.stderr
    assert "nftables chains of inet markroute rewritten" in result.stdout  # same sets: chains only
    same_flow = r.lab.probe(r.lan, "udp", r.server, PORT, sport=40001)
    assert [r.which_isp(s) for s in same_flow["seen"]] == [1], "an existing connection kept its uplink"
    new_flow = r.lab.probe(r.lan, "udp", r.server, PORT, sport=40002)
    assert [r.which_isp(s) for s in new_flow["seen"]] == [0], "a new connection follows the new policy"
    assert status(r.rtr, "-c", second)[0] == 0

    third = write_config(tmp_path, ONLY_ISP0.format(server=r.server), "third.yaml")
    isp1_table = str(uplink(plan_of(first), "isp1").table)
    result = markroute("apply", "-c", third, "--netns", r.rtr)
    assert result.returncode == 0, result.stderr
    assert [x for x in own_routes(r.lab, r.rtr) if x.get("table") == isp1_table] == []
    assert [x for x in own_rules(r.lab, r.rtr) if x.get("table") == isp1_table] == []
    sysctls = view(r.lab, r.rtr)["sysctls"]
    assert sysctls["net.ipv4.conf.wan1.src_valid_mark"] == "0", "a sysctl no longer wanted went back"
    code, report = status(r.rtr, "-c", third)
    assert code == 0 and [u["name"] for u in report["uplinks"]] == ["isp0"]


def test_failed_apply_puts_everything_back(router: RouterLab, tmp_path: Path) -> None:  # noqa: F811
    r = router
    good = write_config(tmp_path, TWO_UPLINKS.format(server=r.server), "good.yaml")
    bad = write_config(tmp_path, TWO_UPLINKS.format(server=r.server_alt).replace("10.0.1.1", "10.99.0.1"), "bad.yaml")
    fresh = view(r.lab, r.rtr)
    result = markroute("apply", "-c", bad, "--netns", r.rtr)
    assert result.returncode == 1
    assert "apply failed" in result.stderr and "10.99.0.1" in result.stderr and "put back" in result.stderr
    assert "Traceback" not in result.stderr
    assert view(r.lab, r.rtr) == fresh
    assert not state.directory(r.rtr).exists()

    assert markroute("apply", "-c", good, "--netns", r.rtr).returncode == 0
    applied = view(r.lab, r.rtr)
    recorded = (state.directory(r.rtr) / "state.json").read_bytes()
    result = markroute("apply", "-c", bad, "--netns", r.rtr)
    assert result.returncode == 1
    assert comparable(view(r.lab, r.rtr)) == comparable(applied)
    assert (state.directory(r.rtr) / "state.json").read_bytes() == recorded


def test_failure_in_the_last_step_is_rolled_back(
    router: RouterLab, tmp_path: Path, monkeypatch: pytest.MonkeyPatch  # noqa: F811
) -> None:
    r = router
    first = plan_of(write_config(tmp_path, TWO_UPLINKS.format(server=r.server), "first.yaml"))
    second = plan_of(write_config(tmp_path, ONLY_ISP0.format(server=r.server), "second.yaml"))
    with inside(r.rtr):
        assert apply(first, r.rtr).changed
    applied = view(r.lab, r.rtr)
    recorded = (state.directory(r.rtr) / "state.json").read_bytes()

    def refuse(self: Rpdb, route: object) -> None:
        raise KernelError("injected failure while deleting a stale route")

    monkeypatch.setattr(Rpdb, "delete_route", refuse)
    with inside(r.rtr), pytest.raises(ApplyFailed) as failure:
        apply(second, r.rtr)
    assert "injected failure" in str(failure.value) and failure.value.undo_problems == []
    assert comparable(view(r.lab, r.rtr)) == comparable(applied)
    assert (state.directory(r.rtr) / "state.json").read_bytes() == recorded


@pytest.mark.parametrize("stage", ["elements", "chains"])
@pytest.mark.parametrize("first", [True, False], ids=["first-apply", "table-deleted-by-hand"])
def test_failure_while_building_a_new_table_leaves_nothing(
    router: RouterLab, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, stage: str, first: bool  # noqa: F811
) -> None:
    """A new table goes in as empty sets, then their elements, then chains: a failure in
    either later step must take the table (and the rules and routes before it) away.
    On a first apply the sets fill in a background thread; when a recorded table was
    deleted by hand they fill in line."""
    r = router
    (tmp_path / "servers.txt").write_text(f"{r.server}\n192.0.2.0/24\n")
    config = write_config(tmp_path, TWO_UPLINKS.format(server="'@servers'") + "sets:\n  servers: {file: servers.txt}\n")
    if not first:
        assert markroute("apply", "-c", config, "--netns", r.rtr).returncode == 0
        r.lab.run(r.rtr, ["nft", "delete", "table", "inet", "markroute"])
        recorded = (state.directory(r.rtr) / "state.json").read_bytes()
    fresh = view(r.lab, r.rtr)

    def refuse(*args: object) -> None:
        raise KernelError(f"injected failure loading the {stage}")

    if stage == "elements":
        monkeypatch.setattr("markroute.kernel.nftnetlink.update", refuse)
    else:
        real = nft.run_batch

        def refuse_chains(commands: Any, *args: Any, **kwargs: Any) -> None:
            commands = list(commands)
            if any("chain" in command.get("add", {}) for command in commands):
                refuse()
            real(commands, *args, **kwargs)

        monkeypatch.setattr(nft, "run_batch", refuse_chains)
    with inside(r.rtr), pytest.raises(ApplyFailed) as failure:
        apply(plan_of(config), r.rtr)
    assert f"injected failure loading the {stage}" in str(failure.value) and failure.value.undo_problems == []
    assert view(r.lab, r.rtr) == fresh
    if first:
        assert not state.directory(r.rtr).exists()
    else:
        assert (state.directory(r.rtr) / "state.json").read_bytes() == recorded


def test_no_routing_socket_means_no_table_left_filling(
    router: RouterLab, tmp_path: Path, monkeypatch: pytest.MonkeyPatch  # noqa: F811
) -> None:
    """The first apply starts filling the new table's sets before it opens its routing socket;
    if that socket cannot be had, the half-made table goes again."""
    r = router
    (tmp_path / "servers.txt").write_text(f"{r.server}\n")
    config = write_config(tmp_path, TWO_UPLINKS.format(server="'@servers'") + "sets:\n  servers: {file: servers.txt}\n")
    fresh = view(r.lab, r.rtr)

    def no_socket(self: Rpdb) -> None:
        raise KernelError("injected: no netlink socket")

    monkeypatch.setattr(Rpdb, "__init__", no_socket)
    with inside(r.rtr), pytest.raises(KernelError, match="injected: no netlink socket"):
        apply(plan_of(config), r.rtr)
    assert view(r.lab, r.rtr) == fresh


def test_status_reports_drift(router: RouterLab, tmp_path: Path) -> None:  # noqa: F811
    r = router
    config = write_config(tmp_path, TWO_UPLINKS.format(server=r.server))
    plan = plan_of(config)
    isp1 = uplink(plan, "isp1")
    assert markroute("apply", "-c", config, "--netns", r.rtr).returncode == 0
    code, report = status(r.rtr)
    assert code == 0 and report["drift"] == []

    r.lab.ip(r.rtr, "rule", "del", "fwmark", f"{isp1.mark:#x}/{plan.mask:#x}", "table", str(isp1.table))
    code, report = status(r.rtr)
    assert code == 3
    assert any("ip rule missing" in d and f"lookup {isp1.table}" in d for d in report["drift"])

    r.lab.run(r.rtr, ["nft", "delete", "table", "inet", "markroute"])
    code, report = status(r.rtr)
    assert code == 3 and any("table inet markroute is missing" in d for d in report["drift"])
    text = markroute("status", "--netns", r.rtr)
    assert text.returncode == 3 and "drift:" in text.stdout and "is missing" in text.stdout

    assert markroute("apply", "-c", config, "--netns", r.rtr).returncode == 0
    assert status(r.rtr)[0] == 0


def test_uplink_with_missing_interface_is_skipped(router: RouterLab, tmp_path: Path) -> None:  # noqa: F811
    r = router
    config = write_config(tmp_path, TWO_UPLINKS.format(server=r.server).replace("wan1", "wan9"))
    missing = uplink(plan_of(config), "isp1")
    result = markroute("apply", "-c", config, "--netns", r.rtr)
    assert result.returncode == 0, result.stderr
    assert "wan9 does not exist" in result.stderr
    tables = {x.get("table") for x in own_routes(r.lab, r.rtr)}
    assert str(missing.table) not in tables and str(uplink(plan_of(config), "isp0").table) in tables
    r.lab.serve_echo(r.net, PORT)
    flow = r.lab.probe(r.lan, "tcp", r.server, PORT)
    assert flow["ok"] == 1 and [r.which_isp(s) for s in flow["seen"]] == [0], "falls through to main"
    assert markroute("down", "--netns", r.rtr).returncode == 0


def test_snapshot_is_what_ip_and_nft_print(router: RouterLab, tmp_path: Path) -> None:  # noqa: F811
    r = router
    config = write_config(tmp_path, TWO_UPLINKS.format(server=r.server))
    assert markroute("apply", "-c", config, "--netns", r.rtr).returncode == 0
    r.lab.ip(r.rtr, "rule", "add", "not", "fwmark", "0xca6c", "table", "51820", "priority", "32764")
    r.lab.ip(r.rtr, "route", "add", "198.18.0.0/15", "nexthop", "via", "10.0.0.1", "nexthop", "via", "10.0.1.1")
    with inside(r.rtr):
        picture = snapshot()
    run = r.lab.run
    assert picture["nftables"] == json.loads(run(r.rtr, ["nft", "-j", "list", "ruleset"]).stdout)
    rules = json.loads(run(r.rtr, ["ip", "-j", "rule"]).stdout) + json.loads(run(r.rtr, ["ip", "-6", "-j", "rule"]).stdout)
    assert [{k: v for k, v in x.items() if k != "family"} for x in picture["rules"]] == rules
    assert {x["family"] for x in picture["rules"]} == {"inet", "inet6"}
    routes = json.loads(run(r.rtr, ["ip", "-j", "route", "show", "table", "all"]).stdout)
    assert [{k: v for k, v in x.items() if k != "family"} for x in picture["routes"]] == routes
    assert f"{r.rtr_wan_v4[0]}/24" in picture["links"]["wan0"]["addresses"]
    assert picture["links"]["wan0"]["up"] is True


DUAL_STACK = """
uplinks:
  isp0:
    interface: wan0
    gateway: 10.0.0.1
    gateway6: 2001:db8:0::1
  isp1:
    interface: wan1
    gateway: 10.0.1.1
    gateway6: 2001:db8:1::1
policies:
  - name: server6-via-isp1
    to: {server6}
    via: isp1
"""


def test_ipv6_policy_uses_the_uplink_table(tmp_path: Path) -> None:
    with Lab() as lab:
        r = router_lab(lab, isps=2, ipv6=True)
        assert r.server6 is not None
        try:
            config = write_config(tmp_path, DUAL_STACK.format(server6=r.server6))
            result = markroute("apply", "-c", config, "--netns", r.rtr)
            assert result.returncode == 0, result.stderr
            assert any(x.get("dst") == "default" and x.get("gateway") == r.isp_gw_v6[1] for x in own_routes(lab, r.rtr))
            lab.serve_echo(r.net, PORT)
            v6 = lab.probe(r.lan, "tcp", r.server6, PORT, count=3)
            assert v6["ok"] == 3 and [r.which_isp(s) for s in v6["seen"]] == [1]
            v4 = lab.probe(r.lan, "tcp", r.server, PORT, count=3)
            assert v4["ok"] == 3 and [r.which_isp(s) for s in v4["seen"]] == [0]
            assert markroute("apply", "-c", config, "--netns", r.rtr).stdout.startswith("already up to date")
            assert markroute("down", "--netns", r.rtr).returncode == 0
            assert own_routes(lab, r.rtr) == [] and own_rules(lab, r.rtr) == []
        finally:
            shutil.rmtree(state.directory(r.rtr), ignore_errors=True)


def test_gateway_change_replaces_the_default_route(router: RouterLab, tmp_path: Path) -> None:  # noqa: F811
    r = router
    second_gateway = "10.0.1.3"
    r.lab.addr(r.isps[1], "down0", f"{second_gateway}/24")
    first = write_config(tmp_path, TWO_UPLINKS.format(server=r.server), "first.yaml")
    second = write_config(tmp_path, TWO_UPLINKS.format(server=r.server).replace(r.isp_gw_v4[1], second_gateway), "second.yaml")
    table = str(uplink(plan_of(first), "isp1").table)
    assert markroute("apply", "-c", first, "--netns", r.rtr).returncode == 0

    result = markroute("apply", "-c", second, "--netns", r.rtr)
    assert result.returncode == 0, result.stderr
    defaults = [x for x in own_routes(r.lab, r.rtr) if x.get("table") == table and x["dst"] == "default"]
    assert [x["gateway"] for x in defaults] == [second_gateway]
    r.lab.serve_echo(r.net, PORT)
    flow = r.lab.probe(r.lan, "tcp", r.server, PORT)
    assert flow["ok"] == 1 and [r.which_isp(s) for s in flow["seen"]] == [1]


def test_commands_inside_ip_netns_exec_find_the_state(router: RouterLab, tmp_path: Path) -> None:  # noqa: F811
    r = router
    config = write_config(tmp_path, TWO_UPLINKS.format(server=r.server))
    assert markroute("apply", "-c", config, "--netns", r.rtr).returncode == 0
    env = dict(os.environ, PYTHONPATH=str(REPO))
    inside_status = r.lab.run(r.rtr, [sys.executable, "-m", "markroute", "status", "--json"], env=env)
    report = json.loads(inside_status.stdout)
    assert report["applied"] and report["namespace"] == r.rtr and report["drift"] == []
    r.lab.run(r.rtr, [sys.executable, "-m", "markroute", "down"], env=env)
    assert own_rules(r.lab, r.rtr) == [] and not state.directory(r.rtr).exists()


def test_down_forgets_the_record_of_a_deleted_namespace(tmp_path: Path) -> None:
    """A namespace deleted without `down` leaves its record under /run/markroute; `down --netns`
    then forgets it (nothing else is left: the namespace took table, rules and routes with it)."""
    config = write_config(tmp_path, "uplinks:\n  a: {interface: wan0, gateway: 192.0.2.1}\npolicies:\n  - {name: all, via: a}\n")
    with Lab() as lab:
        ns = lab.add_ns("gone")
        assert markroute("apply", "-c", config, "--netns", ns).returncode == 0
        assert (state.directory(ns) / state.STATE_RECORD).exists()
        subprocess.run(["ip", "netns", "del", ns], check=True)
        result = markroute("down", "--netns", ns)
        assert result.returncode == 0 and "is gone: forgot what markroute had recorded" in result.stdout, result.stderr
        assert not state.directory(ns).exists()
        again = markroute("down", "--netns", ns)
        assert again.returncode == 4 and "does not exist" in again.stderr
