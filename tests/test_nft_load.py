"""Every generated ruleset is loaded by the real `nft`, in both of its forms.

For each config (every `examples/*.yaml`, and configs written here that use every match
key, both families, groups, inbound drops, ingress matches and SNAT), the plan's
libnftables JSON is loaded with `nft -j -f -` and its rendered text with `nft -f -`,
each into an empty ruleset of a throw-away namespace, and the two `nft -j list ruleset`
results must be equal (handles aside). That proves the JSON valid, the text valid, and
the renderer faithful to the JSON.
"""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path
from typing import Any

import pytest
from helpers_nft import NftNamespace, nft_namespace
from kernelhelp import KERNEL, REPO

from markroute.compile import compile_plan
from markroute.config import load_model
from markroute.plan import nfttext
from markroute.plan.nftjson import json_default

pytestmark = KERNEL

EXAMPLES = sorted((REPO / "examples").glob("**/*.yaml"))  # examples/ha/ too: its hold sets are empty

LONG_LIST = ", ".join(f"203.0.113.{2 * i}" for i in range(24))

EVERY_MATCH = f"""
uplinks:
  isp_a:
    interface: wan0
    gateway: 192.0.2.1
    gateway6: "2001:db8:a::1"
    nat: masquerade
    inbound:
      policy: drop
      allow: [{{proto: tcp, dport: [22, 8000-8080]}}, {{from: 198.51.100.0/24}}, {{proto: icmpv6}}]
  isp_b: {{interface: wan1, gateway: 198.51.100.1, nat: {{snat: 198.51.100.2}}, mark: 0x7700, table: 4242}}
  router2:
    interface: lan0
    gateway: 192.168.10.2
    ingress: {{mac: "52:54:00:c2:a5:43", proto: tcp, dport: 80, not: {{from: 192.168.10.0/24}}}}
  router3:
    interface: lan0
    gateway: 192.168.10.3
    ingress: {{mac: "52:54:00:c2:a5:44", not: {{proto: udp, sport: 53}}}}
  router1: {{interface: lan0, gateway: 192.168.10.1}}
  v6only: {{interface: wan2, gateway6: "2001:db8:c::1", nat: {{snat: "2001:db8:c::2"}}}}
  ppp: {{interface: ppp0, nat: masquerade}}
sets:
  cdn: [203.0.113.0/24, "2001:db8:cd::/48"]
  dense: {{file: dense.txt}}
groups:
  both: {{balance: {{isp_a: 4, isp_b: 6}}}}
  primary: {{failover: [v6only, both]}}
  everything: {{balance: {{primary: 1, ppp: 2}}}}
policies:
  - {{name: voip, dscp: [ef, af41, 8], proto: udp, sport: 5060-5061, via: primary}}
  - {{name: cdn, to: "@cdn", via: both}}
  - {{name: dense, from: 192.168.1.0/24, to: "@dense", via: isp_a}}
  - {{name: macs, mac: ["52:54:00:00:00:01", "52:54:00:00:00:02"], iif: [lan0, lan1], via: ppp}}
  - {{name: icmp, proto: [icmp, icmpv6], via: isp_a}}
  - {{name: gre, proto: 47, via: isp_a}}
  - {{name: sctp, proto: sctp, dport: 9899, via: isp_a}}
  - {{name: range, to: 198.18.0.0-198.19.255.255, sport: [1024-2047, 4000], via: both}}
  - {{name: own, local: true, to: "2001:db8:100::/48", via: primary}}
  - {{name: forwarded-only, local: false, from: "fd00::/8", via: v6only}}
  - {{name: no-dns, from: 192.168.1.0/24, not: {{proto: udp, dport: 53}}, via: both}}
  - {{name: not-private, not: {{to: [10.0.0.0/8, 172.16.0.0/12]}}, dport: 443, via: everything}}
  - {{name: long-list, to: [{LONG_LIST}], via: isp_a}}
  - {{name: blocked, to: 192.0.2.128/25, via: blackhole}}
  - {{name: gone, to: "2001:db8:dead::/48", via: unreachable}}
  - {{name: rest, via: everything}}
settings: {{last_resort: unreachable, rp_filter: strict}}
"""

# Runs of four or more same-shape policies become one verdict-map lookup each.
MERGED_RUNS = """
uplinks:
  a: {interface: wan0, gateway: 192.0.2.1, gateway6: "2001:db8:a::1", nat: masquerade}
  b: {interface: wan1, gateway: 198.51.100.1, gateway6: "2001:db8:b::1", nat: masquerade}
policies:
""" + "".join(f"  - {{name: src{i}, from: 10.{i}.0.0/16, via: {'ab'[i % 2]}}}\n" for i in range(6)) \
    + "".join(f"  - {{name: port{i}, proto: tcp, dport: {2000 + 10 * i}-{2005 + 10 * i}, via: {'ab'[i % 2]}}}\n"
              for i in range(5)) \
    + "".join(f"  - {{name: both{i}, from: 172.16.{i}.0/24, dport: [{3000 + i}, {4000 + i}], via: a}}\n"
              for i in range(4)) \
    + "".join(f"  - {{name: iif{i}, iif: lan{i}, via: b}}\n" for i in range(4)) \
    + "".join(f"  - {{name: mac{i}, mac: '52:54:00:00:01:0{i}', via: a}}\n" for i in range(4)) \
    + "".join(f"  - {{name: six{i}, to: '2001:db8:{i}::/48', via: b}}\n" for i in range(4)) \
    + "".join(f"  - {{name: dscp{i}, dscp: {8 * i}, via: a}}\n" for i in range(4))

SHIFTED_MASK = """
uplinks:
  a: {interface: wan0, gateway: 192.0.2.1, nat: masquerade, inbound: {policy: drop}}
  b: {interface: wan1, gateway: 198.51.100.1, nat: masquerade}
groups:
  g: {balance: {a: 3, b: 1}}
policies:
  - {name: rest, via: g}
settings: {mark_mask: 0x3f0000, reply_via_ingress: false}
"""

INLINE = {"every-match": EVERY_MATCH, "merged-runs": MERGED_RUNS, "shifted-mask": SHIFTED_MASK}
DENSE = "\n".join(f"100.{64 + (n >> 8)}.{n & 255}.0/25" for n in range(5000)) + "\n"


def config_path(case: str, tmp_path: Path) -> Path:
    if case.startswith("example:"):
        return REPO / "examples" / case.removeprefix("example:")
    (tmp_path / "dense.txt").write_text(DENSE)
    path = tmp_path / f"{case}.yaml"
    path.write_text(INLINE[case])
    return path


CASES = [f"example:{p.relative_to(REPO / 'examples')}" for p in EXAMPLES] + sorted(INLINE)


@pytest.fixture(scope="module")
def namespace() -> Any:
    with nft_namespace() as ns:
        yield ns


@pytest.mark.parametrize("case", CASES)
def test_json_and_text_load_into_the_same_ruleset(case: str, tmp_path: Path, namespace: NftNamespace) -> None:
    model, diagnostics = load_model(str(config_path(case, tmp_path)))
    assert model is not None, [d.render() for d in diagnostics]
    plan = compile_plan(model)
    document = plan.nft_document()

    from_json = namespace.load_json(document)
    from_text = namespace.load_text(nfttext.render(document))

    assert from_json == from_text
    kinds = [next(iter(item)) for item in from_json]
    planned = [next(iter(item)) for item in plan.nft]
    assert sorted(kinds) == sorted(planned), "every table, set, chain and rule of the plan is in the kernel"
    listed_comments = sorted(item["rule"].get("comment", "") for item in from_json if "rule" in item)
    assert listed_comments == sorted(item["rule"].get("comment", "") for item in plan.nft if "rule" in item)


def test_inline_configs_use_every_feature(tmp_path: Path) -> None:
    """The configs above really contain what the module docstring claims they test."""
    model, _ = load_model(str(config_path("every-match", tmp_path)))
    assert model is not None
    used = {f.name for p in model.policies for f in fields(p.match) if getattr(p.match, f.name) is not None}
    assert used == {"src", "dst", "protocols", "sports", "dports", "iifs", "macs", "dscps", "local", "negated"}
    assert {u.nat.kind for u in model.uplinks.values()} == {"masquerade", "snat", "none"}
    assert any(u.ingress for u in model.uplinks.values()) and any(u.inbound for u in model.uplinks.values())
    assert {g.kind for g in model.groups.values()} == {"balance", "failover"}
    assert {v for u in model.uplinks.values() for v in u.versions} == {4, 6}
    plan = compile_plan(model)
    assert any("vmap" in str(r) and "concat" in str(r) for r in compile_plan(
        load_model(str(config_path("merged-runs", tmp_path)))[0]).nft)  # type: ignore[arg-type]
    assert {s["set"]["name"] for s in plan.nft if "set" in s} >= {"cdn_v4", "cdn_v6", "dense_v4"}
    assert len(model.sets["dense"]) == 5000


def test_mutated_configs_load_the_same_both_ways(tmp_path: Path, namespace: NftNamespace) -> None:
    """Valid variations of the every-match config (keys dropped, values of other types that
    still validate), a sample of them each loaded both ways. Run over every variation, this
    found interface names starting with '@', which nftables' JSON reads as set references."""
    import itertools
    import json

    from ruamel.yaml import YAML
    from test_check import mutants

    (tmp_path / "dense.txt").write_text("\n".join(DENSE.splitlines()[:20]))  # few prefixes: quick mutants
    path = tmp_path / "mutant.yaml"
    seen: set[str] = set()
    for mutant in itertools.islice(mutants(YAML(typ="safe", pure=True).load(EVERY_MATCH), replacements=2), 0, None, 3):
        path.write_text(json.dumps(mutant))
        model, _ = load_model(str(path))
        if model is None:
            continue
        document = compile_plan(model).nft_document()
        key = json.dumps(document, sort_keys=True, default=json_default)
        if key in seen or len(seen) % 4:
            seen.add(key)
            continue
        seen.add(key)
        assert namespace.load_json(document) == namespace.load_text(nfttext.render(document)), path.read_text()
    assert len(seen) > 40


FOREIGN = """\
table inet other {
	map by_source {
		type ipv4_addr : verdict
		flags interval
		elements = { 10.1.0.0/16 : accept, 10.2.0.0/16 : drop }
	}

	chain pre {
		type filter hook prerouting priority -150; policy accept;
		ip saddr vmap @by_source
		meta mark and 0xff0000 == 0x40000 counter return
		iifname { "eth0", "eth1" } ct state new meta mark set meta mark and 0xff00ffff or 0x80000
	}
}
"""


def test_listings_of_hand_written_rulesets_render_back_to_the_same_ruleset(namespace: NftNamespace) -> None:
    """`trace --live` shows foreign rules through the renderer: named maps included."""
    listing = namespace.load_text(FOREIGN)
    again = namespace.load_text(nfttext.render({"nftables": listing}))
    assert again == listing
    assert "vmap @by_source" in nfttext.render({"nftables": listing})
