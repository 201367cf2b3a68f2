"""The compiler, judged by what its output does, not by how it is spelled.

Configs are written in the user's YAML and loaded with `load_model`, so the tests cover
what an admin writes. Instead of comparing with golden text, the helpers below follow
the generated verdicts the way a packet would (`goto` chains down to the chain that
sets a mark), so the tests survive any renaming or re-layout of chains that keeps the
behaviour. The real `nft` loads these rulesets in `test_nft_load.py`.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from markroute import marks
from markroute.compile import compile_plan
from markroute.compile.namedsets import INLINE_LIMIT
from markroute.config import load_model
from markroute.model import Model
from markroute.plan import Plan, nfttext
from markroute.plan.render import plan_text
from markroute.values import BOUND_TABLE_OFFSET

Obj = dict[str, Any]

DUAL = """
uplinks:
  a: {interface: eth0, gateway: 192.0.2.1, nat: masquerade}
  b: {interface: eth1, gateway: 198.51.100.1, gateway6: "2001:db8:1::1", nat: masquerade}
"""


def model_of(tmp_path: Path, text: str, files: dict[str, str] | None = None) -> Model:
    for name, content in (files or {}).items():
        (tmp_path / name).write_text(content)
    path = tmp_path / "markroute.yaml"
    path.write_text(text)
    model, diagnostics = load_model(str(path))
    assert model is not None, [d.render() for d in diagnostics]
    return model


def plan_of(tmp_path: Path, text: str, files: dict[str, str] | None = None) -> Plan:
    return compile_plan(model_of(tmp_path, text, files))


def objects(plan: Plan, kind: str) -> list[Obj]:
    return [obj[kind] for obj in plan.nft if kind in obj]


def rules(plan: Plan, chain: str) -> list[Obj]:
    return [rule for rule in objects(plan, "rule") if rule["chain"] == chain]


def policy_rules(plan: Plan, name: str) -> list[Obj]:
    """The rules that carry a policy's counter and comment, wherever the compiler put them."""
    return [rule for rule in objects(plan, "rule") if rule.get("comment") == f"policy {name}"]


def matches(rule: Obj) -> list[Obj]:
    return [e["match"] for e in rule["expr"] if "match" in e]


def verdict(rule: Obj) -> Obj:
    return rule["expr"][-1]


def nfproto(rule: Obj) -> str | None:
    found = [m["right"] for m in matches(rule) if m["left"] == {"meta": {"key": "nfproto"}}]
    return found[0] if found else None


def destination(plan: Plan, target: Obj, family: int) -> str:
    """Where a verdict takes a new connection of IP `family`: an uplink name, 'main',
    'unreachable' or 'blackhole'. Follows gotos and family guards like the kernel would."""
    if "accept" in target:
        return "main"
    chain = (target.get("goto") or target.get("jump"))["target"]
    for rule in rules(plan, chain):
        proto = nfproto(rule)
        if proto is not None and proto != {4: "ipv4", 6: "ipv6"}[family]:
            continue
        for expr in rule["expr"]:
            if "mangle" in expr and expr["mangle"]["key"] == {"meta": {"key": "mark"}}:
                return mark_owner(plan, expr["mangle"]["value"]["|"][1])
        if all("match" not in e or e["match"]["left"] == {"meta": {"key": "nfproto"}} for e in rule["expr"]):
            return destination(plan, verdict(rule), family)
    raise AssertionError(f"chain {chain} decides nothing for IPv{family}")


def mark_owner(plan: Plan, mark: int) -> str:
    owners = {u.mark: u.name for u in plan.uplinks}
    owners[marks.unreachable_mark(plan.mask)] = "unreachable"
    owners[marks.blackhole_mark(plan.mask)] = "blackhole"
    return owners[mark]


# -- marks and tables -----------------------------------------------------------------


def test_marks_are_allocated_in_order_inside_the_mask_avoiding_foreign_values(tmp_path: Path) -> None:
    text = "uplinks:\n" + "".join(f"  u{i}: {{interface: eth{i}, gateway: 192.0.2.{i + 1}}}\n" for i in range(4))
    plan = plan_of(tmp_path, text)

    allocated = [u.mark for u in plan.uplinks]
    foreign = set(marks.foreign_values(0xFF00))
    assert foreign == {0x100, 0xCA00}  # Docker swarm's 0x105 and wg-quick's 0xca6c under 0xff00
    assert allocated == [0x200, 0x300, 0x400, 0x500]
    assert not set(allocated) & (foreign | {marks.unreachable_mark(0xFF00), marks.blackhole_mark(0xFF00)})
    assert [u.table for u in plan.uplinks] == [100, 101, 102, 103]
    fwmark = {(r.fwmark, r.table) for r in plan.rules if r.fwmark is not None and r.action == "lookup"}
    assert fwmark == {(u.mark, u.table) for u in plan.uplinks}
    assert all(r.fwmask == 0xFF00 for r in plan.rules if r.fwmark is not None)


def test_pinned_marks_and_tables_are_kept_and_the_others_fill_around_them(tmp_path: Path) -> None:
    text = """
uplinks:
  a: {interface: eth0, gateway: 192.0.2.1}
  b: {interface: eth1, gateway: 192.0.2.2, mark: 0x200, table: 252}
  c: {interface: eth2, gateway: 192.0.2.3}
  d: {interface: eth3, gateway: 192.0.2.4}
settings: {table_base: 251}
"""
    plan = plan_of(tmp_path, text)

    assert {u.name: u.mark for u in plan.uplinks} == {"a": 0x300, "b": 0x200, "c": 0x400, "d": 0x500}
    # 252 is pinned by b, 253-255 are the kernel's
    assert {u.name: u.table for u in plan.uplinks} == {"a": 251, "b": 252, "c": 256, "d": 257}


def test_a_table_that_is_another_uplinks_bound_table_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "markroute.yaml"
    path.write_text(f"""
uplinks:
  a: {{interface: eth0, gateway: 192.0.2.1, table: 101}}
  b: {{interface: eth1, gateway: 192.0.2.2, table: {101 + BOUND_TABLE_OFFSET}}}
""")
    model, diagnostics = load_model(str(path))
    assert model is None
    [error] = [d.render() for d in diagnostics if d.severity == "error"]
    assert f"table {101 + BOUND_TABLE_OFFSET} of 'b' is where 'a' keeps its bound table" in error, error
    assert ":4:" in error, "the message points at b"


def test_a_shifted_mask_moves_every_mark_and_every_masked_write(tmp_path: Path) -> None:
    plan = plan_of(tmp_path, DUAL + "settings: {mark_mask: 0x3f0000}\npolicies:\n  - {via: a}\n")

    mask = 0x3F0000
    assert plan.mask == mask
    assert [u.mark for u in plan.uplinks] == [0x10000, 0x20000]
    writes = [e["mangle"]["value"] for r in objects(plan, "rule") for e in r["expr"]
              if "mangle" in e and e["mangle"]["key"] != {"ct": {"key": "label"}}]
    assert writes, "mark chains write marks"
    for value in writes:
        kept_bits, written = value["|"][0]["&"][1], value["|"][1]
        assert kept_bits == ~mask & 0xFFFFFFFF, "only the mask's bits change"
        assert written & ~mask == 0
    restore = [e["vmap"] for r in rules(plan, "prerouting") for e in r["expr"] if "vmap" in e]
    assert restore[0]["key"] == {"&": [{"ct": {"key": "mark"}}, mask]}
    assert {k for k, _ in restore[0]["data"]["set"]} == {0x10000, 0x20000}
    fwmark_rules = [r for r in plan.rules if r.fwmark is not None]
    assert fwmark_rules and all(r.fwmask == mask for r in fwmark_rules)


def test_restore_map_sends_every_known_connection_back_to_its_uplink(tmp_path: Path) -> None:
    plan = plan_of(tmp_path, DUAL)

    for chain in ("prerouting", "output"):
        vmaps = [e["vmap"] for r in rules(plan, chain) for e in r["expr"] if "vmap" in e]
        entries = {key: destination(plan, target, 4) for key, target in vmaps[0]["data"]["set"]}
        assert entries == {u.mark: u.name for u in plan.uplinks}


# -- families -------------------------------------------------------------------------


def test_policy_without_addresses_to_a_v4_only_uplink_matches_only_ipv4(tmp_path: Path) -> None:
    plan = plan_of(tmp_path, DUAL + "policies:\n  - {name: web, proto: tcp, dport: 443, via: a}\n"
                                    "  - {name: rest, via: b}\n")

    web = policy_rules(plan, "web")
    assert {r["chain"] for r in web} == {"policies_fwd", "policies_local"}
    assert all(nfproto(r) == "ipv4" for r in web)
    rest = policy_rules(plan, "rest")
    assert rest and all(nfproto(r) is None for r in rest), "a dual-stack uplink takes both families in one rule"
    assert {destination(plan, verdict(r), 6) for r in rest} == {"b"}


def test_family_follows_the_addresses(tmp_path: Path) -> None:
    plan = plan_of(tmp_path, DUAL + "policies:\n  - {name: docs6, to: '2001:db8:100::/48', via: b}\n"
                                    "  - {name: both, to: [203.0.113.0/24, '2001:db8:200::/48'], via: b}\n")

    docs6 = policy_rules(plan, "docs6")
    assert docs6 and all(matches(r)[0]["left"] == {"payload": {"protocol": "ip6", "field": "daddr"}} for r in docs6)
    both = [r for r in policy_rules(plan, "both") if r["chain"] == "policies_fwd"]
    assert sorted(m["left"]["payload"]["protocol"] for r in both for m in matches(r) if "payload" in m["left"]) == [
        "ip", "ip6"]


# -- groups ---------------------------------------------------------------------------


@pytest.mark.parametrize("weights", [(1, 1), (4, 6), (1, 3, 6), (7, 1, 1, 2), (1000, 1)])
def test_balance_weights_become_numgen_ranges_covering_each_value_once(
    tmp_path: Path, weights: tuple[int, ...],
) -> None:
    names = [f"u{i}" for i in range(len(weights))]
    text = "uplinks:\n" + "".join(f"  {n}: {{interface: eth{i}, gateway: 192.0.2.{i + 1}, nat: masquerade}}\n"
                                  for i, n in enumerate(names))
    text += "groups:\n  spread: {balance: {" + ", ".join(f"{n}: {w}" for n, w in zip(names, weights)) + "}}\n"
    text += "policies:\n  - {name: all, via: spread}\n"
    plan = plan_of(tmp_path, text)

    group = destination_chain(plan, "all")
    vmaps = [e["vmap"] for r in rules(plan, group) for e in r["expr"] if "vmap" in e]
    assert len(vmaps) == 1
    total = sum(weights)
    assert vmaps[0]["key"]["numgen"]["mod"] == total
    hits: Counter[str] = Counter()
    covered: list[int] = []
    for key, target in vmaps[0]["data"]["set"]:
        first, last = key["range"] if isinstance(key, dict) else (key, key)
        covered += range(first, last + 1)
        hits[destination(plan, target, 4)] += last - first + 1
    assert sorted(covered) == list(range(total)), "every numgen value exactly once"
    assert hits == dict(zip(names, weights))


def destination_chain(plan: Plan, policy: str) -> str:
    target = verdict(policy_rules(plan, policy)[0])
    return (target.get("goto") or target.get("jump"))["target"]


def test_failover_takes_the_first_member_that_carries_the_family(tmp_path: Path) -> None:
    plan = plan_of(tmp_path, DUAL + "groups:\n  primary: {failover: [a, b]}\n"
                             "policies:\n  - {name: all, via: primary}\n")

    target = verdict(policy_rules(plan, "all")[0])
    assert destination(plan, target, 4) == "a"
    assert destination(plan, target, 6) == "b", "a has no IPv6 gateway"


def test_nested_groups_reach_the_uplinks(tmp_path: Path) -> None:
    text = DUAL + "groups:\n  both: {balance: {a: 1, b: 1}}\n  primary: {failover: [both, a]}\n" \
                  "policies:\n  - {name: all, via: primary}\n"
    plan = plan_of(tmp_path, text)

    target = verdict(policy_rules(plan, "all")[0])
    assert destination(plan, target, 6) == "b"
    both = [e["vmap"] for r in rules(plan, "group_both") for e in r["expr"] if "vmap" in e]
    assert {destination(plan, t, 4) for _, t in both[0]["data"]["set"]} == {"a", "b"}


def test_special_targets(tmp_path: Path) -> None:
    text = DUAL + "policies:\n  - {name: lan, to: 10.0.0.0/8, via: main}\n" \
                  "  - {name: bad, to: 203.0.113.0/24, via: blackhole}\n" \
                  "  - {name: gone, to: 198.18.0.0/15, via: unreachable}\n"
    plan = plan_of(tmp_path, text)

    assert {destination(plan, verdict(r), 4) for r in policy_rules(plan, "lan")} == {"main"}
    assert {destination(plan, verdict(r), 4) for r in policy_rules(plan, "bad")} == {"blackhole"}
    assert {destination(plan, verdict(r), 4) for r in policy_rules(plan, "gone")} == {"unreachable"}
    actions = {(r.action, r.fwmark) for r in plan.rules if r.action != "lookup"}
    assert actions == {("unreachable", marks.unreachable_mark(0xFF00)), ("blackhole", marks.blackhole_mark(0xFF00))}


def test_no_reserved_rules_when_nothing_can_reach_them(tmp_path: Path) -> None:
    plan = plan_of(tmp_path, DUAL + "policies:\n  - {name: rest, via: main}\n")

    assert plan.rules and all(r.action == "lookup" for r in plan.rules)


# -- matches --------------------------------------------------------------------------


def test_not_of_one_condition_is_inline(tmp_path: Path) -> None:
    plan = plan_of(tmp_path, DUAL + "policies:\n  - {name: away, not: {from: 192.168.10.0/24}, via: a}\n")

    away = [r for r in policy_rules(plan, "away") if r["chain"] == "policies_fwd"]
    assert len(away) == 1
    assert {"op": "!=", "left": {"payload": {"protocol": "ip", "field": "saddr"}},
            "right": {"prefix": {"addr": "192.168.10.0", "len": 24}}} in matches(away[0])
    assert not any(c["name"].startswith("unless") for c in objects(plan, "chain"))


def test_not_of_several_conditions_is_a_chain_that_returns(tmp_path: Path) -> None:
    plan = plan_of(tmp_path, DUAL + "policies:\n"
                             "  - {name: no-dns, from: 192.168.1.0/24, not: {proto: udp, dport: 53}, via: a}\n")

    jumps = [r for r in rules(plan, "policies_fwd") if "jump" in verdict(r)]
    assert len(jumps) == 1
    assert matches(jumps[0])[0]["left"] == {"payload": {"protocol": "ip", "field": "saddr"}}
    sub = rules(plan, verdict(jumps[0])["jump"]["target"])
    assert "return" in verdict(sub[0])
    assert {m["left"].get("meta", {}).get("key") or m["left"]["payload"]["field"] for m in matches(sub[0])} == {
        "l4proto", "dport"}
    assert sub[1].get("comment") == "policy no-dns"
    assert any("counter" in e for e in sub[1]["expr"])
    assert destination(plan, verdict(sub[1]), 4) == "a"


def test_named_sets_for_set_references_and_long_lists(tmp_path: Path) -> None:
    many = [f"203.0.113.{2 * i}" for i in range(INLINE_LIMIT + 4)]
    few = [f"198.51.100.{2 * i}" for i in range(3)]
    text = DUAL + "sets:\n  cdn: [192.0.2.128/25, '2001:db8:cd::/48']\npolicies:\n" \
        "  - {name: cdn, to: '@cdn', via: b}\n" \
        f"  - {{name: many, to: [{', '.join(many)}], via: a}}\n" \
        f"  - {{name: few, to: [{', '.join(few)}], via: a}}\n"
    plan = plan_of(tmp_path, text)

    sets = {s["name"]: s for s in objects(plan, "set")}
    cdn_refs = {m["right"] for r in policy_rules(plan, "cdn") for m in matches(r) if isinstance(m["right"], str)}
    assert {sets[ref[1:]]["type"] for ref in cdn_refs} == {"ipv4_addr", "ipv6_addr"}
    assert all("interval" in sets[ref[1:]]["flags"] for ref in cdn_refs)
    many_refs = {m["right"] for r in policy_rules(plan, "many") for m in matches(r) if isinstance(m["right"], str)}
    assert len(many_refs) == 1 and len(sets[next(iter(many_refs))[1:]]["elem"]) == len(many)
    few_values = [m["right"] for r in policy_rules(plan, "few") for m in matches(r) if "payload" in m["left"]]
    assert [len(v["set"]) for v in few_values] == [3, 3], "short lists stay anonymous sets in the rule"
    assert len(sets) == 3


def test_user_set_names_do_not_collide_with_generated_ones(tmp_path: Path) -> None:
    many = ", ".join(f"203.0.113.{2 * i}" for i in range(INLINE_LIMIT + 1))
    text = DUAL + f"sets:\n  list1: [198.51.100.0/24]\npolicies:\n  - {{name: many, to: [{many}], via: a}}\n" \
                  "  - {name: mine, to: '@list1', via: b}\n"
    plan = plan_of(tmp_path, text)

    refs = [m["right"] for name in ("many", "mine") for r in policy_rules(plan, name) for m in matches(r)
            if isinstance(m["right"], str)]
    assert len(set(refs)) == 2
    sizes = sorted(len(s["elem"]) for s in objects(plan, "set"))
    assert sizes == [1, INLINE_LIMIT + 1]


def test_a_100000_prefix_set_file_is_one_interval_set_not_100000_rules(tmp_path: Path) -> None:
    prefixes = [f"10.{n >> 8 & 255}.{n & 255}.{(n >> 16) * 64}/27" for n in range(100_000)]
    plan = plan_of(tmp_path, DUAL + "sets:\n  big: {file: big.txt}\npolicies:\n  - {name: big, to: '@big', via: b}\n",
                   {"big.txt": "# generated\n" + "\n".join(prefixes) + "\n"})

    sets = objects(plan, "set")
    assert len(sets) == 1
    assert sets[0]["type"] == "ipv4_addr" and "interval" in sets[0]["flags"]
    assert len(sets[0]["elem"]) == 100_000  # none adjacent, so none merged
    big = policy_rules(plan, "big")
    assert [m["right"] for r in big for m in matches(r) if "payload" in m["left"]] == [f"@{sets[0]['name']}"] * 2
    assert len(objects(plan, "rule")) < 40
    assert [r for r in plan.rules if r.src is not None or r.fwmark is None] == [], "no ip rule per prefix"


def test_every_policy_rule_counts_and_names_its_policy(tmp_path: Path) -> None:
    text = DUAL + "groups:\n  both: {balance: {a: 1, b: 2}}\npolicies:\n" + "".join(
        f"  - {{name: p{i}, proto: tcp, dport: {1000 + i}, via: {'a' if i % 2 else 'both'}}}\n" for i in range(6)
    ) + "  - {name: last, via: main}\n"
    plan = plan_of(tmp_path, text)

    for name in [f"p{i}" for i in range(6)] + ["last"]:
        found = policy_rules(plan, name)
        assert found, name
        assert all(any("counter" in e for e in r["expr"]) for r in found)


def test_known_connections_restore_only_the_packet_mark_and_first_packets_mark_both_in_one_rule(
        tmp_path: Path) -> None:
    """The connection already holds its mark: a later packet writes only its own (one statement);
    the first packet's mark chain writes both, as one rule."""
    plan = plan_of(tmp_path, DUAL + "policies:\n  - {name: all, via: a}\n")
    mask = plan.mask
    for chain in ("prerouting", "output"):
        restore = [e["vmap"] for e in rules(plan, chain)[0]["expr"] if "vmap" in e][0]
        for mark, target in restore["data"]["set"]:
            body = rules(plan, target["goto"]["target"])
            assert len(body) == 1 and body[0]["expr"][-1] == {"accept": None}
            writes = [e["mangle"] for e in body[0]["expr"] if "mangle" in e]
            assert writes == [{"key": {"meta": {"key": "mark"}},
                               "value": {"|": [{"&": [{"meta": {"key": "mark"}}, ~mask & 0xFFFFFFFF]}, mark]}}]
    for uplink in plan.uplinks:
        body = rules(plan, f"mark_{uplink.name}")
        assert len(body) == 1 and body[0]["expr"][-1] == {"accept": None}
        written = {next(iter(e["mangle"]["key"].values()))["key"]: e["mangle"]["value"]["|"][1]
                   for e in body[0]["expr"] if "mangle" in e}
        assert written == {"mark": uplink.mark}
        assert [e["mangle"]["key"] for e in body[0]["expr"] if "mangle" in e] == [
            {"meta": {"key": "mark"}}, {"ct": {"key": "mark"}}]


def test_ingress_is_one_interface_lookup_that_jumps_and_stays_inline_for_one_interface(tmp_path: Path) -> None:
    """Several interfaces: one `iifname vmap` jumping (a connection no ingress rule takes goes on
    to the policies) to a chain per interface, its uplinks in order; one interface: rules inline."""
    text = """
uplinks:
  plain: {interface: eth0, gateway: 192.168.10.1}
  byMac: {interface: eth0, gateway: 192.168.10.2, ingress: {mac: "52:54:00:c2:a5:43"}}
  wan: {interface: eth1, gateway: 198.51.100.1}
policies:
  - {name: all, via: wan}
"""
    plan = plan_of(tmp_path, text)
    prerouting = rules(plan, "prerouting")
    lookups = [r for r in prerouting if any("vmap" in e and e["vmap"]["key"] == {"meta": {"key": "iifname"}}
                                            for e in r["expr"])]
    assert len(lookups) == 1
    assert not [r for r in prerouting if any(m["left"] == {"meta": {"key": "iifname"}} for m in matches(r))]
    targets = {name: jump["jump"]["target"] for name, jump in lookups[0]["expr"][-1]["vmap"]["data"]["set"]}
    assert set(targets) == {"eth0", "eth1"}
    assert [r["comment"] for r in rules(plan, targets["eth0"])] == ["ingress byMac", "ingress plain"]
    assert [r["comment"] for r in rules(plan, targets["eth1"])] == ["ingress wan"]
    assert prerouting.index(lookups[0]) < next(i for i, r in enumerate(prerouting) if r.get("comment") == "to this host")

    single = plan_of(tmp_path, "uplinks:\n  a: {interface: eth0, gateway: 192.0.2.1}\npolicies:\n  - {via: a}\n")
    inline = [r for r in rules(single, "prerouting") if r.get("comment") == "ingress a"]
    assert inline and matches(inline[0])[0] == {"op": "==", "left": {"meta": {"key": "iifname"}}, "right": "eth0"}
    assert not any("vmap" in e and e["vmap"]["key"] == {"meta": {"key": "iifname"}}
                   for r in rules(single, "prerouting") for e in r["expr"])


def test_ingress_inbound_and_nat(tmp_path: Path) -> None:
    text = """
uplinks:
  router1: {interface: eth0, gateway: 192.168.10.1, nat: masquerade}
  router2:
    interface: eth0
    gateway: 192.168.10.2
    nat: masquerade
    ingress: {mac: "52:54:00:c2:a5:43"}
  wan:
    interface: eth1
    gateway: 198.51.100.1
    nat: {snat: 198.51.100.2}
    inbound: {policy: drop, allow: [{proto: tcp, dport: 22}]}
"""
    plan = plan_of(tmp_path, text)

    ingress = [r for r in ingress_rules(plan) if str(r.get("comment", "")).startswith("ingress")]
    assert [r["comment"] for r in ingress][:1] == ["ingress router2"], "specific ingress before the plain one"
    assert destination(plan, verdict(ingress[0]), 4) == "router2"
    wan = [r for r in ingress if r["comment"] == "ingress wan"][0]
    inbound = rules(plan, verdict(wan)["goto"]["target"])
    assert "drop" in verdict(inbound[-1]) and any("counter" in e for e in inbound[-1]["expr"])
    assert destination(plan, verdict(inbound[0]), 4) == "wan"
    nat = {r["comment"]: r for r in rules(plan, "postrouting")}
    shared = [m for m in matches(nat["nat router2"]) if m["left"] == {"&": [{"meta": {"key": "mark"}}, 0xFF00]}]
    assert shared and shared[0]["right"] == next(u.mark for u in plan.uplinks if u.name == "router2")
    assert {"snat": {"family": "ip", "addr": "198.51.100.2"}} in nat["nat wan"]["expr"]


def ingress_rules(plan: Plan) -> list[dict[str, Any]]:
    """The rules a new connection's arriving interface leads to: inline in prerouting, or in
    the chains its `iifname vmap` jumps to, in the vmap's order."""
    found: list[dict[str, Any]] = []
    for rule in rules(plan, "prerouting"):
        last = rule["expr"][-1]
        if "vmap" in last and last["vmap"]["key"] == {"meta": {"key": "iifname"}}:
            for _, jump in last["vmap"]["data"]["set"]:
                found += rules(plan, jump["jump"]["target"])
        else:
            found.append(rule)
    return found


def test_nat_chain_only_when_an_uplink_nats(tmp_path: Path) -> None:
    """Even an empty nat chain puts every forwarded packet through conntrack's NAT hooks."""
    routed = DUAL.replace(", nat: masquerade", "") + "policies:\n  - {name: all, via: a}\n"
    nat_chains = [c for c in objects(plan_of(tmp_path, routed), "chain") if c.get("type") == "nat"]
    assert nat_chains == []
    nat_chains = [c for c in objects(plan_of(tmp_path, DUAL + "policies:\n  - {name: all, via: a}\n"), "chain")
                  if c.get("type") == "nat"]
    assert [c["name"] for c in nat_chains] == ["postrouting"]


# -- routing --------------------------------------------------------------------------


def test_ip_rules_stay_in_the_band(tmp_path: Path) -> None:
    text = DUAL + "  c: {interface: eth2, gateway: 203.0.113.1, nat: {snat: 203.0.113.9}}\n" \
                  "policies:\n  - {name: bad, to: 192.0.2.0/24, via: blackhole}\n  - {name: rest, via: a}\n" \
                  "settings: {rule_priority: 20000}\n"
    plan = plan_of(tmp_path, text)

    assert plan.rules and all(20000 <= r.priority <= 20002 for r in plan.rules)
    per_uplink = {(r.version, r.table) for r in plan.rules if r.fwmark is not None and r.action == "lookup"}
    assert per_uplink == {(4, 100), (4, 101), (6, 101), (4, 102)}
    # local policies pin bound sockets: the SNAT address's rule looks up c's bound table (`compile.bound`)
    assert [(r.src, r.table) for r in plan.rules if r.src] == [("203.0.113.9", 102 + BOUND_TABLE_OFFSET)]
    assert {r.action for r in plan.rules} == {"lookup", "blackhole"}
    assert sorted((r.version, r.table, r.dst, r.dev, r.gateway, r.realm) for r in plan.routes) == [
        (4, 100, "default", "eth0", "192.0.2.1", None), (4, 101, "default", "eth1", "198.51.100.1", None),
        (4, 102, "default", "eth2", "203.0.113.1", None),
        (4, 100 + BOUND_TABLE_OFFSET, "default", "eth0", "192.0.2.1", 100),
        (4, 101 + BOUND_TABLE_OFFSET, "default", "eth1", "198.51.100.1", 101),
        (4, 102 + BOUND_TABLE_OFFSET, "default", "eth2", "203.0.113.1", 102),
        (6, 101, "default", "eth1", "2001:db8:1::1", None)]


def test_sysctls_per_interface(tmp_path: Path) -> None:
    text = """
uplinks:
  r1: {interface: eth0, gateway: 192.168.10.1, nat: masquerade}
  r2: {interface: eth0, gateway: 192.168.10.2, nat: masquerade, ingress: {mac: "52:54:00:c2:a5:43"}}
  wan: {interface: eth1.7, gateway: 198.51.100.1, gateway6: "2001:db8::1", nat: masquerade}
policies:
  - {via: wan}
settings: {rp_filter: strict}
"""
    sysctls = [(s.path, s.value) for s in compile_plan(model_of(tmp_path, text)).sysctls]

    assert sorted(sysctls) == sorted([
        ("net/ipv4/ip_forward", "1"),
        ("net/ipv6/conf/all/forwarding", "1"),
        ("net/ipv4/conf/eth0/rp_filter", "1"),
        ("net/ipv4/conf/eth0/src_valid_mark", "1"),
        ("net/ipv4/conf/eth1.7/rp_filter", "1"),
        ("net/ipv4/conf/eth1.7/src_valid_mark", "1"),
        ("net/netfilter/nf_conntrack_acct", "1"),
        ("net/netfilter/nf_conntrack_timestamp", "1"),
    ])


def test_without_connection_records_no_rule_writes_labels_and_conntrack_sysctls_stay(tmp_path: Path) -> None:
    text = """
uplinks:
  a: {interface: eth0, gateway: 192.0.2.1}
  b: {interface: eth1, gateway: 198.51.100.1, ingress: {mac: "52:54:00:c2:a5:43"}}
policies:
  - {name: web, proto: tcp, dport: 443, via: b}
  - {from: 10.0.0.0/8, via: a}
  - {name: many, dport: [1, 2, 3, 4, 5, 6], via: b}
settings: {connection_records: false}
"""
    off = compile_plan(model_of(tmp_path, text))
    on = compile_plan(model_of(tmp_path, text.replace("connection_records: false", "connection_records: true")))

    def label_statements(plan: Any) -> int:
        return json.dumps(plan.to_json()["nftables"]).count('"label"')

    assert label_statements(on) > 0 and label_statements(off) == 0
    assert on.connection_records and not off.connection_records
    conntrack = {"net/netfilter/nf_conntrack_acct", "net/netfilter/nf_conntrack_timestamp"}
    assert conntrack <= {s.path for s in on.sysctls}
    assert not conntrack & {s.path for s in off.sysctls}
    assert [s for s in on.sysctls if s.path not in conntrack] == list(off.sysctls)


def test_a_host_without_forwarded_policies_does_not_turn_on_forwarding(tmp_path: Path) -> None:
    text = "uplinks:\n  mgmt: {interface: eth0, gateway: 10.10.0.1}\n  ftp: {interface: eth1, gateway: 10.20.0.1}\n"
    sysctls = {s.path: s.value for s in compile_plan(model_of(tmp_path, text)).sysctls}

    assert "net/ipv4/ip_forward" not in sysctls
    assert sysctls["net/ipv4/conf/eth1/rp_filter"] == "2", "loose by default"


# -- determinism ----------------------------------------------------------------------

EVERY_FEATURE = DUAL + """
  c:
    interface: eth2
    gateway: 203.0.113.1
    nat: {snat: 203.0.113.9}
    inbound: {policy: drop, allow: [{proto: tcp, dport: 22}]}
  r2: {interface: eth0, gateway: 192.0.2.2, ingress: {mac: "52:54:00:c2:a5:43", not: {from: 192.168.10.0/24}}}
sets:
  cdn: [192.0.2.128/25, "2001:db8:cd::/48"]
groups:
  both: {balance: {a: 4, b: 6}}
  primary: {failover: [both, c]}
policies:
  - {name: voip, dscp: ef, proto: udp, via: primary}
  - {name: cdn, to: "@cdn", via: b}
  - {name: mail, proto: tcp, dport: [25, 465, 587], via: c}
  - {name: own, local: true, via: a}
  - {name: no-dns, from: 192.168.1.0/24, not: {proto: udp, dport: 53}, via: both}
  - {name: rest, via: both}
"""


def test_two_compiles_are_byte_identical(tmp_path: Path) -> None:
    first = compile_plan(model_of(tmp_path, EVERY_FEATURE))
    second = compile_plan(model_of(tmp_path, EVERY_FEATURE))

    assert json.dumps(first.to_json()) == json.dumps(second.to_json())
    assert nfttext.render(first.nft_document()) == nfttext.render(second.nft_document())
    assert plan_text(first) == plan_text(second)
    assert first == second


def test_table_allocation_skips_tables_other_software_fills(tmp_path: Path) -> None:
    plan = plan_of(tmp_path, "uplinks:\n  a: {interface: eth0}\n  b: {interface: eth1}\nsettings: {table_base: 51}\n")

    assert [u.table for u in plan.uplinks] == [51, 53], "52 is Tailscale's"
