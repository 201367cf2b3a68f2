"""`log:` read from the config and compiled into a rule of its own; prefixes decoded back."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_compile import objects

from markroute.compile import compile_plan
from markroute.config import load_model
from markroute.model import PacketLog
from markroute.plan import packetlog

UPLINKS = """
uplinks:
  a: {interface: eth0, gateway: 192.0.2.1, inbound: {policy: drop, log: {prefix: edge, rate: 3}}}
  b: {interface: eth1, gateway: 198.51.100.1}
"""


def load(tmp_path: Path, text: str) -> tuple[object, list[str]]:
    path = tmp_path / "markroute.yaml"
    path.write_text(text)
    model, diagnostics = load_model(path)
    return model, [d.render() for d in diagnostics]


def test_log_true_and_a_mapping_are_read_and_compiled_before_the_decision(tmp_path: Path) -> None:
    model, _ = load(tmp_path, UPLINKS + "policies:\n  - {name: web, dport: 443, proto: tcp, via: b, log: true}\n")
    assert model is not None
    assert model.policies[0].log == PacketLog() and model.uplinks["a"].inbound.log == PacketLog("edge", 3)
    rules = objects(compile_plan(model), "rule")
    pol = [r for r in rules if r["chain"] == "pol_1"]
    assert pol[0]["expr"] == packetlog.statements(None, 10, "policy", "web"), "the log line comes first"
    assert pol[0]["expr"][0] == {"limit": {"rate": 10, "per": "second"}}
    assert any(e.get("goto", {}).get("target") == "via_b" for e in pol[1]["expr"]), "then the decision"
    inbound = [r for r in rules if r["chain"] == "in_a"]
    assert inbound[-2]["expr"][-1] == {"log": {"prefix": "edge mr:drop:a", "group": packetlog.GROUP}}
    assert inbound[-1]["expr"][-1] == {"drop": None}


@pytest.mark.parametrize("log, message", [
    ("{prefix: 'has \"quote'}", "printable characters"),
    ("{rate: -1}", "out of range"),
    ("{level: warn}", "level"),
    ("maybe", "expected true or false"),
])
def test_bad_log_settings_are_reported_where_written(tmp_path: Path, log: str, message: str) -> None:
    model, diagnostics = load(tmp_path, UPLINKS + f"policies:\n  - name: web\n    via: b\n    log: {log}\n")
    assert model is None and any(message in d and ":8:" in d for d in diagnostics), diagnostics


def test_logging_an_inbound_accept_is_a_warning(tmp_path: Path) -> None:
    text = "uplinks:\n  a: {interface: eth0, gateway: 192.0.2.1, inbound: {log: true}}\n"
    model, diagnostics = load(tmp_path, text)
    assert model is not None and any("set policy: drop" in d for d in diagnostics), diagnostics


@pytest.mark.parametrize("prefix, kind, name, user", [
    ("mr:policy:web", "policy", "web", None),
    ("edge mr:drop:isp_a", "drop", "isp_a", "edge"),
])
def test_prefixes_decode_back(prefix: str, kind: str, name: str, user: str | None) -> None:
    found = packetlog.decode(prefix)
    assert found is not None and (found.kind, found.name, found.prefix) == (kind, name, user)


def test_foreign_prefixes_are_not_ours() -> None:
    assert packetlog.decode("ufw BLOCK") is None and packetlog.decode("mr:other:x") is None
