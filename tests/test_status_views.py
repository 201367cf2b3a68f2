"""`markroute status` as an operator reads it: groups with their active member and effective
weights, policy targets, problems with exit codes, and `--json` valid against docs/status.schema.json,
before and after a real failover."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
from daemon_helpers import (  # noqa: F401 (dlab: a fixture)
    DaemonLab,
    dlab,
)
from kernelhelp import KERNEL

from tests.conftest import markroute

pytestmark = KERNEL
SCHEMA = json.loads((Path(__file__).resolve().parents[1] / "docs" / "status.schema.json").read_text())

CONFIG = """
uplinks:
  isp_a: {interface: wan0, gateway: 10.0.0.1, nat: masquerade}
  isp_b: {interface: wan1, gateway: 10.0.1.1, nat: masquerade}
groups:
  primary: {failover: [isp_a, isp_b]}
  spread: {balance: {isp_a: 1, isp_b: 3}}
policies:
  - {name: rest, to: 203.0.113.0/24, via: primary}
  - {name: spread-it, to: 198.18.0.0/15, via: spread}
"""


def status(d: DaemonLab) -> tuple[int, dict[str, Any], str]:
    data = markroute("status", "--netns", d.rtr, "--json")
    text = markroute("status", "--netns", d.rtr)
    report: dict[str, Any] = json.loads(data.stdout)
    jsonschema.validate(report, SCHEMA)
    assert data.returncode == text.returncode
    return data.returncode, report, text.stdout


def test_status_shows_who_carries_each_group_before_and_after_failover(dlab: DaemonLab) -> None:  # noqa: F811
    d, r = dlab, dlab.router
    d.start(d.write(CONFIG))
    d.wait_states({"isp_a": "up", "isp_b": "up"})

    code, report, text = status(d)
    assert code == 0 and report["version"] == 1
    groups = {g["name"]: g for g in report["groups"]}
    assert groups["primary"]["active"] == "isp_a"
    assert {m["name"]: m["effective"] for m in groups["spread"]["members"]} == {"isp_a": 1, "isp_b": 3}
    assert {p["name"]: p["target"] for p in report["policies"]} == {"rest": "primary", "spread-it": "spread"}
    assert all(u["mark"].startswith("0x") for u in report["uplinks"])
    assert report["problems"] == []
    assert "primary      failover  active isp_a" in text and "problems: none" in text

    d.set_link(r.isps[0], "down0", up=False)
    d.wait_states({"isp_a": "down", "isp_b": "up"}, timeout=10)

    code, report, text = status(d)
    groups = {g["name"]: g for g in report["groups"]}
    assert groups["primary"]["active"] == "isp_b", groups["primary"]
    assert groups["primary"]["why"] == "isp_a down" and groups["primary"]["changed"] is not None
    assert {m["name"]: m["effective"] for m in groups["spread"]["members"]} == {"isp_a": 0, "isp_b": 1}
    kinds = {(p["kind"], p["exit_code"]) for p in report["problems"]}
    assert ("uplink", 0) in kinds and code == 0, report["problems"]
    assert "link down" in text and "health down" in text and "active isp_b" in text
