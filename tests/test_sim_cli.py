"""`markroute trace` as a user runs it: options, exit codes, text and JSON, --flows, --live."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from kernelhelp import markroute

from markroute.cli import main
from markroute.lab import Lab

CONFIG = """
uplinks:
  wan1: {interface: eth1, gateway: 192.168.0.1, nat: masquerade}
  wan2: {interface: eth2, gateway: 192.168.29.1, nat: masquerade}
groups:
  wans:
    balance: {wan1: 1, wan2: 3}
policies:
  - {name: mail, proto: tcp, dport: 25, via: wan1}
  - {name: balance, via: wans}
"""
ADDRESSES = ["--addr", "eth0=172.17.0.1/16", "--addr", "eth1=192.168.0.109/24", "--addr", "eth2=192.168.29.2/24"]
FLOW = ["--from", "172.17.0.5", "--to", "203.0.113.9", "--iif", "eth0"]


@pytest.fixture
def config(tmp_path: Path) -> str:
    path = tmp_path / "markroute.yaml"
    path.write_text(CONFIG)
    return str(path)


def run(*args: str) -> Result:
    return CliRunner().invoke(main, ["trace", *args])


def test_json_names_every_path_with_its_probability(config: str) -> None:
    result = run("-c", config, *FLOW, "--proto", "tcp", "--sport", "40000", "--dport", "443", *ADDRESSES, "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["verdict"] == "forward" and data["policy"] == "balance"
    assert {(p["oif"], round(p["probability"], 6)) for p in data["paths"]} == {("eth1", 0.25), ("eth2", 0.75)}
    assert all(p["snat"] in ("192.168.0.109", "192.168.29.2") for p in data["paths"])


def test_text_shows_rules_routing_and_verdict(config: str) -> None:
    result = run("-c", config, *FLOW, "--proto", "tcp", "--sport", "40000", "--dport", "25", *ADDRESSES)
    assert result.exit_code == 0, result.output
    assert "[policy mail]" in result.output
    matched = [line for line in result.output.splitlines() if "fwmark" in line and "-- matched" in line]
    assert len(matched) == 1 and "default via 192.168.0.1 dev eth1" in matched[0]
    assert "verdict: leaves by eth1 via 192.168.0.1" in result.output


def test_flows_prints_expected_and_sampled_split(config: str) -> None:
    result = run("-c", config, *FLOW, "--proto", "udp", "--sport", "5000", "--dport", "53", *ADDRESSES,
                 "--flows", "100000", "--seed", "7", "--json")
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)["sampling"]["split"]
    assert sum(row["sampled"] for row in rows) == 100000
    for row in rows:
        assert abs(row["fraction"] - row["expected"]) < 0.01, row


@pytest.mark.parametrize(("args", "message"), [
    (["--from", "172.17.0.5", "--to", "2001:db8::1", "--iif", "eth0"], "IPv4"),
    (["--from", "not-an-address", "--to", "203.0.113.9", "--iif", "eth0"], "not an IP address"),
    (["--from", "172.17.0.5", "--to", "203.0.113.9"], "--iif"),
    (["--from", "172.17.0.5", "--to", "203.0.113.9", "--iif", "eth0", "--local"], "exclude"),
    (["--from", "172.17.0.5", "--to", "203.0.113.9", "--iif", "eth0", "--sport", "5"], "--proto"),
    (["--from", "172.17.0.5", "--to", "203.0.113.9", "--iif", "eth0", "--proto", "bogus"], "protocol"),
    (["--from", "172.17.0.5", "--to", "203.0.113.9", "--iif", "eth0", "--proto", "tcp", "--dport", "70000"],
     "out of range"),
    (["--from", "172.17.0.5", "--to", "203.0.113.9", "--iif", "eth0", "--mac", "zz"], "MAC"),
    (["--from", "172.17.0.5", "--to", "203.0.113.9", "--iif", "eth0", "--addr", "eth0"], "IF=ADDRESS/PREFIX"),
    (["--from", "172.17.0.5", "--to", "203.0.113.9", "--iif", "eth0", "--route", "default via x dev eth0"],
     "not an address"),
])
def test_bad_input_is_a_usage_error_without_traceback(config: str, args: list[str], message: str) -> None:
    result = run("-c", config, *args)
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output


def test_conflicting_sources_are_usage_errors(config: str) -> None:
    assert run("-c", config, "--live", *FLOW).exit_code == 2
    assert run("-c", config, "--netns", "x", *FLOW).exit_code == 2
    assert run("--live", "--addr", "eth0=10.0.0.1/24", *FLOW).exit_code == 2


def test_an_invalid_config_exits_1_with_its_diagnostics(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("uplinks: {}\n")
    result = run("-c", str(path), *FLOW)
    assert result.exit_code == 1 and "Traceback" not in result.output


@pytest.mark.kernel
def test_live_in_a_namespace_reads_a_foreign_ruleset(lab: Lab) -> None:
    ns = lab.add_ns("live")
    lab.veth(ns, "lan0", lab.add_ns("peer"), "eth0")
    lab.addr(ns, "lan0", "192.168.1.1/24")
    lab.forwarding(ns)
    lab.nft(ns, "table ip mangle {\n chain pre { type filter hook prerouting priority mangle; "
                "ip saddr 192.168.1.0/24 meta mark set 0x1; }\n}\n")
    lab.ip(ns, "rule", "add", "fwmark", "1", "lookup", "100")
    lab.route(ns, "blackhole", "default", "table", "100")
    proc = markroute("trace", "--live", "--netns", ns, "--from", "192.168.1.10", "--to", "203.0.113.5",
                     "--iif", "lan0", "--proto", "udp", "--sport", "1000", "--dport", "53", "--json")
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert (data["verdict"], data["mark"], data["table"]) == ("drop", "0x1", "100")
    assert "blackhole" in data["reason"]
    wrong = markroute("trace", "--live", "--netns", ns, "--from", "192.168.1.10", "--to", "203.0.113.5",
                      "--iif", "nope0")
    assert wrong.returncode == 2 and "no such interface" in wrong.stderr


def test_live_with_a_missing_namespace_is_an_environment_error() -> None:
    proc = markroute("trace", "--live", "--netns", "mr-absent-ns", *FLOW)
    assert proc.returncode == 4 and "does not exist" in proc.stderr and "Traceback" not in proc.stderr



def test_trace_runs_with_the_cycle_collector_paused(config: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Like check, plan and apply: a big config's ruleset is not walked again by every collection (issue 15)."""
    import gc

    from markroute.sim import report

    seen: list[bool] = []
    document = report.document

    def recording(*args: object) -> object:
        seen.append(gc.isenabled())
        return document(*args)

    monkeypatch.setattr(report, "document", recording)
    enabled = gc.isenabled()
    gc.enable()
    try:
        result = run("-c", config, *FLOW, "--proto", "tcp", "--sport", "40000", "--dport", "25", *ADDRESSES)
        assert gc.isenabled(), "the collector is enabled again after the command"
    finally:
        if not enabled:
            gc.disable()
    assert result.exit_code == 0, result.output
    assert seen == [False]
