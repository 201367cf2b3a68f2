"""Dynamic and domain sets in the config and the plan: what is accepted, refused, and compiled."""

from __future__ import annotations

from pathlib import Path

import pytest
from kernelhelp import markroute

from markroute.compile import compile_plan
from markroute.config import load_model
from markroute.plan.nftjson import is_dynamic
from markroute.values import parse_duration

UPLINKS = """
uplinks:
  isp_a: {interface: eth0, gateway: 10.0.0.1, gateway6: "2001:db8::1", nat: masquerade}
  isp_b: {interface: eth1, gateway: 10.0.1.1, nat: masquerade}
"""


def load(tmp_path: Path, text: str) -> tuple[object, list[str]]:
    path = tmp_path / "markroute.yaml"
    path.write_text(UPLINKS + text)
    model, diagnostics = load_model(str(path))
    return model, [d.render() for d in diagnostics]


def test_dynamic_and_domain_sets_compile_to_empty_timeout_sets_with_stable_names(tmp_path: Path) -> None:
    model, messages = load(tmp_path, """
sets:
  streaming: {domains: [Netflix.com., nflxvideo.net, bücher.example]}
  vpn: {dynamic: true, timeout: 90m}
  scripts: {dynamic: true}
policies:
  - {name: streaming, to: "@streaming", via: isp_a}
  - {name: vpn, from: "@vpn", via: isp_b}
  - {name: scripts, to: "@scripts", via: isp_a}
""")
    assert model is not None and messages == [], messages
    assert model.dynamic_sets["streaming"].domains == ("netflix.com", "nflxvideo.net", "xn--bcher-kva.example")
    assert model.dynamic_sets["streaming"].timeout == 6 * 3600
    assert model.dynamic_sets["vpn"].timeout == 5400 and model.dynamic_sets["scripts"].timeout is None
    plan = compile_plan(model)
    sets = {o["set"]["name"]: o["set"] for o in plan.nft if "set" in o}
    for name in ("streaming", "vpn", "scripts"):
        for version in (4, 6):
            body = sets[f"{name}_v{version}"]
            assert is_dynamic(body) and "elem" not in body
    assert sets["vpn_v4"]["timeout"] == 5400 and "timeout" not in sets["scripts_v4"]
    rules = [o["rule"] for o in plan.nft if "rule" in o and o["rule"].get("comment") == "policy streaming"]
    assert {str(r["expr"]) for r in rules} and all("@streaming_v" in str(r["expr"]) for r in rules), rules
    assert any("@streaming_v6" in str(r["expr"]) for r in rules), "isp_a has IPv6: both halves are used"


@pytest.mark.parametrize("text, message", [
    ("vpn: {dynamic: false}", "with 'dynamic: false' has no elements"),
    ("vpn: {timeout: 1h}", "with 'timeout' alone is not dynamic"),
    ("vpn: {dynamic: true, timeout: 1y}", "is not a duration"),
    ("vpn: {dynamic: true, timeout: 0}", "out of range"),
    ("vpn: {domains: [netflix]}", "is not a domain name"),
    ("vpn: {domains: [-bad-.com]}", "is not a domain name"),
    ("vpn: {dynamic: true, file: x.txt}", "unknown key 'file'"),
])
def test_bad_dynamic_sets_are_errors_at_their_key(tmp_path: Path, text: str, message: str) -> None:
    model, messages = load(tmp_path, f"sets:\n  {text}\npolicies:\n  - {{name: p, to: '@vpn', via: isp_a}}\n")
    assert model is None and any(message in m for m in messages), messages


def test_a_dynamic_set_cannot_be_mixed_into_an_address_list(tmp_path: Path) -> None:
    model, messages = load(tmp_path, """
sets:
  vpn: {dynamic: true}
policies:
  - {name: p, to: ["@vpn", 192.0.2.1], via: isp_a}
""")
    assert model is None and any("a dynamic set must be used alone" in m for m in messages), messages


def test_check_does_not_call_a_dynamic_policy_unreachable(tmp_path: Path) -> None:
    path = tmp_path / "markroute.yaml"
    path.write_text(UPLINKS + """
sets:
  vpn: {dynamic: true}
policies:
  - {name: vpn, to: "@vpn", via: isp_b}
  - {name: rest, to: 192.0.2.0/24, via: isp_a}
""")
    proc = markroute("check", "-c", str(path))
    assert proc.returncode == 0 and "warning" not in proc.stderr, proc.stderr


@pytest.mark.parametrize("text, seconds", [(3600, 3600), ("90s", 90), ("30m", 1800), ("6h", 21600), ("1d", 86400)])
def test_durations(text: object, seconds: int) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("extra", ["iif: lan0", "mac: '02:00:00:00:00:01'", "local: false"])
def test_user_and_group_refuse_what_selects_forwarded_traffic(tmp_path: Path, extra: str) -> None:
    for key in ("user: root", "group: 0"):
        model, messages = load(tmp_path, f"policies:\n  - {{name: p, {key}, {extra}, via: isp_a}}\n")
        assert model is None and any("no packet has both" in m for m in messages), messages


def test_check_has_no_false_warnings_for_user_and_group_policies(tmp_path: Path) -> None:
    """The reachability search gives local witnesses socket owners, and an uplink without
    NAT is not said to forward private traffic for a policy only the router's own sockets meet."""
    path = tmp_path / "markroute.yaml"
    path.write_text("""
uplinks:
  isp_a: {interface: eth0, gateway: 10.0.0.1}
  isp_b: {interface: eth1, gateway: 10.0.1.1}
policies:
  - {name: backups, user: root, via: isp_b}
  - {name: daemons, group: [0, 65534], to: 192.0.2.0/24, via: isp_a}
  - {name: shadowed, user: 0, to: 198.51.100.0/24, via: isp_a}
""")
    proc = markroute("check", "-c", str(path))
    warnings = [line for line in proc.stderr.splitlines() if "warning" in line]
    assert proc.returncode == 0, proc.stderr
    # the one true warning: uid 0 is root, so 'backups' takes all of 'shadowed' first
    assert len(warnings) == 1 and "'shadowed' can never match: 'backups'" in warnings[0], warnings


def test_a_forwarded_policy_beside_user_policies_still_warns_about_nat(tmp_path: Path) -> None:
    path = tmp_path / "markroute.yaml"
    path.write_text("""
uplinks:
  isp_a: {interface: eth0, gateway: 10.0.0.1}
policies:
  - {name: backups, user: root, via: isp_a}
  - {name: lan, from: 192.168.1.0/24, via: isp_a}
""")
    proc = markroute("check", "-c", str(path))
    assert "forwards traffic from private addresses (policy 'lan') without NAT" in proc.stderr, proc.stderr
    assert "can never match" not in proc.stderr, proc.stderr
