"""End to end: weighted balancing over three uplinks (weights 1:2:3), as in seed 004."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from markroute.lab import Lab, router_lab

pytestmark = pytest.mark.kernel
PORT = 7000
WEIGHTS = {0: 1, 1: 2, 2: 3}

#: New connections balanced 1:2:3, each sticky to its uplink (after the uplinks section).
BALANCED = """
groups:
  weighted:
    balance: {{{weights}}}
policies:
  - name: balance
    via: weighted
"""


def test_three_uplinks_weighted_1_2_3(
    lab: Lab, markroute_cli: Any, weighted_split: Callable[..., None]
) -> None:
    r = router_lab(lab, isps=3)
    lab.serve_echo(r.net, PORT)
    weights = ", ".join(f"isp{i}: {w}" for i, w in WEIGHTS.items())
    config = r.uplinks_yaml([f"isp{i}" for i in WEIGHTS]) + BALANCED.format(weights=weights)
    markroute_cli.apply(r.rtr, config)

    flows = lab.probe(r.lan, "tcp", r.server, PORT, count=1200, packets=4)
    assert flows["ok"] == 1200 and flows["inconsistent"] == 0, flows
    weighted_split(r.isp_counts(flows["seen"]), WEIGHTS)
    connections = {u["name"]: u["connections"] for u in markroute_cli.status(r.rtr)["uplinks"]}
    assert all(connections[f"isp{i}"] > 0 for i in WEIGHTS), connections

    markroute_cli.down(r.rtr)
