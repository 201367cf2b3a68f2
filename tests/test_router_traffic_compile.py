"""Compiling the router's own traffic: bound-socket pinning, `markroute exec`, and what `resolve` leaves out."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from markroute.compile import compile_plan
from markroute.compile.execs import EXEC_GID_BASE, GROUP_OFFSET
from markroute.config import load_model
from markroute.model import Model
from markroute.plan import SOURCE_RULE_OFFSET, LinkState, resolve
from markroute.values import BOUND_TABLE_OFFSET

UPLINKS = """
uplinks:
  isp_a: {interface: wan0, gateway: 10.0.0.1, nat: masquerade}
  isp_b: {interface: wan1, gateway: 10.0.1.1, nat: masquerade}
groups:
  both: {balance: {isp_a: 1, isp_b: 1}}
"""
LINKS = LinkState(addresses={"wan0": ((4, "10.0.0.2"),), "wan1": ((4, "10.0.1.2"),)}, connected=(),
                  main_defaults=frozenset({(4, "wan0")}))


def model(tmp_path: Path, text: str, warnings: int = 0) -> Model:
    path = tmp_path / "markroute.yaml"
    path.write_text(UPLINKS + text)
    loaded, diagnostics = load_model(str(path))
    assert loaded is not None, [d.render() for d in diagnostics]
    assert len(diagnostics) == warnings, [d.render() for d in diagnostics]
    return loaded


def rules(plan: Any, chain: str) -> list[dict[str, Any]]:
    return [o["rule"] for o in plan.nft if "rule" in o and o["rule"]["chain"] == chain]


def sources(plan: Any) -> set[str]:
    found, _ = resolve(plan, LINKS)
    return {r.src for r in found if r.priority == plan.rule_priority + SOURCE_RULE_OFFSET and r.src}


def test_local_policies_pin_bound_sockets_and_drop_mains_source_rule(tmp_path: Path) -> None:
    plan = compile_plan(model(tmp_path, """
policies:
  - {name: from-b, from: 10.0.1.2, via: isp_a}
  - {name: rest, via: both}
"""))
    comments = [r.get("comment") for r in rules(plan, "policies_local")]
    assert comments == ["policy from-b", "bound to isp_a", "bound to isp_b", "policy rest"], comments
    # the realm only in the bound tables: a realm where forwarded traffic looks costs every reply a route
    assert {(r.table, r.realm) for r in plan.routes if r.dst == "default"} == {
        (100, None), (101, None), (100 + BOUND_TABLE_OFFSET, 100), (101 + BOUND_TABLE_OFFSET, 101)}
    assert plan.pin_bound and sources(plan) == {"10.0.1.2"}, "main's default source gets no from rule"
    found, routes = resolve(plan, LINKS)
    assert {r.table for r in found if r.src} == {101 + BOUND_TABLE_OFFSET}, "bound sockets look up the bound table"
    for uplink in plan.uplinks:  # the bound table repeats the uplink's routes: a bound socket reaches the LAN too
        assert ({(r.dst, r.dev) for r in routes if r.table == uplink.bound_table}
                == {(r.dst, r.dev) for r in routes if r.table == uplink.table and r.version == 4})


def test_without_local_policies_nothing_is_pinned_and_every_address_keeps_its_rule(tmp_path: Path) -> None:
    plan = compile_plan(model(tmp_path, """
policies:
  - {name: lan, local: false, via: both}
"""))
    assert not plan.pin_bound and not any("bound to" in str(r.get("comment")) for r in rules(plan, "output"))
    assert not any(r.realm for r in plan.routes) and all(u.bound_table is None for u in plan.uplinks)
    assert sources(plan) == {"10.0.0.2", "10.0.1.2"}


def test_exec_maps_a_group_id_per_uplink_and_group_only_when_enabled(tmp_path: Path) -> None:
    text = "policies:\n  - {name: rest, via: isp_a}\n"
    without = compile_plan(model(tmp_path, text, warnings=1))  # group 'both' unused
    assert not any(r.get("comment") == "markroute exec" for r in rules(without, "output"))
    plan = compile_plan(model(tmp_path, text + "settings: {exec: true}\n"))  # no "group unused" warning either
    [rule] = [r for r in rules(plan, "output") if r.get("comment") == "markroute exec"]
    vmap = rule["expr"][0]["vmap"]
    assert vmap["key"] == {"meta": {"key": "skgid"}}
    assert {k: v["goto"]["target"] for k, v in vmap["data"]["set"]} == {
        EXEC_GID_BASE + 100: "mark_isp_a", EXEC_GID_BASE + 101: "mark_isp_b", EXEC_GID_BASE + GROUP_OFFSET: "group_both"}
