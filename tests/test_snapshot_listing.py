"""The neighbour check after `apply` puts the plan in place of markroute's table: the live
listing it reads must leave that table out (a million set elements cost nft a minute and
a gigabyte, 10,000 policies 0.6 s) and keep every other table whole, which the simulator
needs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from markroute.commands.apply import neighbour_warnings
from markroute.compile import compile_plan
from markroute.config import load_model
from markroute.kernel import netns, nft
from markroute.kernel.snapshot import snapshot
from markroute.lab import Lab
from markroute.sim.neighbours import in_table

pytestmark = pytest.mark.kernel

RULESET = """
table inet markroute {
  set s {
    type ipv4_addr; flags interval
    elements = { 10.0.0.0/8, 192.0.2.0/24 }
  }
  chain c {
    type filter hook output priority 0;
    ip daddr @s accept
  }
}
table ip fw {
  set f {
    type ipv4_addr
    elements = { 198.51.100.1 }
  }
  chain x {
    type filter hook input priority 0;
    ip saddr @f drop
  }
}
table inet plain {
  chain y {
    type filter hook input priority 0;
  }
}
"""


def sets_of(document: dict) -> dict[tuple[str, str], object]:
    return {(o["set"]["table"], o["set"]["name"]): o["set"].get("elem") for o in document["nftables"] if "set" in o}


def test_planned_table_is_not_listed_and_others_are_whole(lab: Lab) -> None:
    ns = lab.add_ns("snap")
    lab.nft(ns, RULESET)
    with netns.inside(ns):
        whole = nft.list_ruleset()
        trimmed = snapshot(planned="markroute")["nftables"]
        plain = snapshot()["nftables"]
    assert sets_of(trimmed) == {("fw", "f"): ["198.51.100.1"]}
    assert sets_of(plain) == sets_of(whole)
    assert sets_of(whole)[("markroute", "s")]  # the table is there to leave out
    others = lambda doc: sorted(json.dumps(o, sort_keys=True) for o in doc["nftables"]
                                if "metainfo" not in o and not in_table(o, "markroute"))
    assert others(trimmed) == others(whole)  # nothing else is missing, changed or doubled
    assert any(in_table(o, "markroute") for o in whole["nftables"])


def test_apply_neighbour_check_never_lists_its_own_elements(lab: Lab, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """`apply`'s neighbour check puts the plan in place of markroute's table, so it must ask
    for the listing without that table: a whole listing of a million elements took nft a
    minute and a gigabyte after every apply."""
    ns, peer = lab.add_ns("nbr"), lab.add_ns("peer")
    for k in (0, 1):
        lab.veth(ns, f"wan{k}", peer, f"up{k}")
        lab.addr(ns, f"wan{k}", f"10.0.{k}.2/24")
    lab.nft(ns, RULESET)
    (tmp_path / "big.txt").write_text("11.0.0.0/24\n11.0.2.0/24\n")
    (tmp_path / "markroute.yaml").write_text(
        "uplinks:\n  a: {interface: wan0, gateway: 10.0.0.1}\n  b: {interface: wan1, gateway: 10.0.1.1}\n"
        "sets:\n  big: {file: big.txt}\npolicies:\n  - {name: p, to: \"@big\", via: b}\n")
    model, _ = load_model(str(tmp_path / "markroute.yaml"))
    assert model is not None
    plan = compile_plan(model)
    asked: list[str] = []

    def trimmed(name: str) -> dict:
        asked.append(name)
        return listing(name)

    def whole() -> dict:
        raise AssertionError("the whole ruleset was listed, markroute's elements with it")

    listing = nft.list_ruleset_but
    monkeypatch.setattr(nft, "list_ruleset_but", trimmed)
    monkeypatch.setattr(nft, "list_ruleset", whole)
    with netns.inside(ns):
        warnings = neighbour_warnings(plan)
    assert asked == [plan.table_name]
    assert not any("could not be simulated" in w for w in warnings), warnings
