"""`markroute status` as an operator reads it: groups with their active member and effective
weights, policy targets, problems with exit codes, and `--json` valid against docs/status.schema.json,
before and after a real failover."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

import jsonschema
from daemon_helpers import (  # noqa: F401 (dlab: a fixture)
    DaemonLab,
    dlab,
)
from kernelhelp import KERNEL

from markroute.lab import Lab
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


METRICS = "127.0.0.1:9586"
DASHBOARD = Path(__file__).resolve().parents[1] / "contrib" / "grafana-markroute.json"


def scrape(d: DaemonLab) -> str:
    """GET /metrics from inside the router namespace, where the daemon listens."""
    fetch = f"import urllib.request; print(urllib.request.urlopen('http://{METRICS}/metrics').read().decode())"
    return str(d.router.lab.run(d.rtr, [sys.executable, "-c", fetch]).stdout)


def test_group_metrics_and_every_metric_the_dashboard_charts_exist(dlab: DaemonLab) -> None:  # noqa: F811
    d, r = dlab, dlab.router
    d.start(d.write(CONFIG), "--metrics", METRICS)
    d.wait_states({"isp_a": "up", "isp_b": "up"})
    d.wait(lambda seen: seen is not None and all(u.rtt is not None and u.loss is not None
                                                  for u in seen.uplinks.values()), "RTT and loss measured")
    metrics = scrape(d)
    assert 'markroute_group_member_active{group="primary",member="isp_a"} 1' in metrics
    assert 'markroute_group_member_active{group="primary",member="isp_b"} 0' in metrics
    assert 'markroute_group_member_weight{group="spread",member="isp_b"} 3' in metrics

    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    charted = {name for e in exprs for name in re.findall(r"\bmarkroute_[a-z_]+", e)}
    exposed = {line.split("{")[0].split(" ")[0] for line in metrics.splitlines() if line.startswith("markroute_")}
    assert len(charted) >= 10 and charted <= exposed, charted - exposed

    d.set_link(r.isps[0], "down0", up=False)
    d.wait_states({"isp_a": "down"}, timeout=10)
    metrics = scrape(d)
    assert 'markroute_group_member_active{group="primary",member="isp_b"} 1' in metrics
    assert 'markroute_group_member_weight{group="spread",member="isp_a"} 0' in metrics


def test_a_namespace_without_markroute_still_reports_by_the_schema(lab: Lab) -> None:
    ns = lab.add_ns("rtr")
    data = markroute("status", "--netns", ns, "--json")
    assert data.returncode == 0
    report = json.loads(data.stdout)
    jsonschema.validate(report, SCHEMA)
    assert report["applied"] is False and report["groups"] == [] and report["problems"] == []
    flows = markroute("flows", "--netns", ns)
    assert flows.returncode == 1 and "not applied" in flows.stderr and "Traceback" not in flows.stderr
