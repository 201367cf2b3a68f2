"""The neighbour check after `apply` puts the plan in place of markroute's table: the live
listing it reads must leave that table's set elements out (a million of them cost nft a
minute and a gigabyte) and keep every other table's, which the simulator needs."""

from __future__ import annotations

import pytest

from markroute.kernel import netns, nft
from markroute.kernel.snapshot import snapshot
from markroute.lab import Lab

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


def test_planned_table_is_listed_without_its_elements_and_others_whole(lab: Lab) -> None:
    ns = lab.add_ns("snap")
    lab.nft(ns, RULESET)
    with netns.inside(ns):
        whole = nft.list_ruleset()
        trimmed = snapshot(planned="markroute")["nftables"]
        plain = snapshot()["nftables"]
    assert sets_of(trimmed) == {("markroute", "s"): None, ("fw", "f"): ["198.51.100.1"]}
    assert sets_of(plain) == sets_of(whole)
    assert sets_of(whole)[("markroute", "s")]  # the elements are there to leave out
    kinds = lambda doc: sorted((k, str(v.get("table", v.get("name")))) for o in doc["nftables"] for k, v in o.items()
                               if k != "metainfo")
    assert kinds(trimmed) == kinds(whole)  # nothing else is missing or doubled
