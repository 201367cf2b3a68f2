"""Merged policy maps route exactly like one rule per policy.

Random configs (runs of policies of one shape, overlapping keys, negations, catch-alls,
both IP families, uplinks of one family) are compiled twice: with maps
(`merge_min=2`, so even short runs merge) and with one rule per policy. The simulator
then runs the same random packets through both plans; every outcome (verdict,
interface, mark, the policy that decided) must agree. `test_merge_kernel.py` checks
the same on a real kernel.
"""

from __future__ import annotations

import ipaddress
import random
from pathlib import Path
from typing import Any

import pytest

from markroute.compile import compile_plan
from markroute.config import load_model
from markroute.model import Model
from markroute.plan import Plan
from markroute.sim import offline
from markroute.sim.packet import make_flow

HEADER = """\
uplinks:
  isp_a: {interface: wan0, gateway: 10.0.0.1, gateway6: "2001:db8::1", nat: masquerade}
  isp_b: {interface: wan1, gateway: 10.0.1.1, nat: masquerade}
groups:
  both:
    balance: {isp_a: 1, isp_b: 2}
policies:
"""
SHAPES = (
    ("from",), ("to",), ("dport",), ("proto", "dport"), ("proto",), ("iif",), ("mac",), ("dscp",),
    ("from", "dport"), ("iif", "from"), ("from", "to"), ("sport",), ("proto", "sport", "dport"), ("mac", "iif"),
)
TARGETS = ("isp_a", "isp_b", "both", "main", "unreachable", "blackhole")
IIFS = ("lan0", "lan1", "lan2", "lan3")
MACS = ("52:54:00:00:00:01", "52:54:00:00:00:02", "52:54:00:00:00:03")
DSCPS = ("ef", "af11", "cs1", "cs0", 10)
PORTS = (22, 25, 53, 80, 443, "20-30", "1000-2000", 1500)
SRC_NETS = {4: ipaddress.ip_network("10.9.0.0/16"), 6: ipaddress.ip_network("fd00:9::/112")}
DST_NETS = {4: ipaddress.ip_network("198.51.100.0/24"), 6: ipaddress.ip_network("2001:db8:f::/120")}
ADDRESSES = [
    "wan0=10.0.0.2/24", "wan0=2001:db8::2/64", "wan1=10.0.1.2/24",
    *(f"{name}=192.168.{n}.1/24" for n, name in enumerate(IIFS)),
    *(f"{name}=fd00:{n}::1/64" for n, name in enumerate(IIFS)),
]
ROUTES = ["default via 10.0.0.1 dev wan0", "default via 2001:db8::1 dev wan0"]


def random_address_value(rng: random.Random, nets: dict[int, Any]) -> str:
    """A prefix, a range or an address inside a small network, so policies overlap often."""
    version = 4 if rng.random() < 0.75 else 6
    net = nets[version]
    bits = net.max_prefixlen
    kind = rng.random()
    if kind < 0.6:
        length = rng.randint(net.prefixlen, bits)
        base = int(net.network_address) + rng.randrange(net.num_addresses)
        base &= ~((1 << (bits - length)) - 1)
        return str(ipaddress.ip_network((base, length)))
    first = int(net.network_address) + rng.randrange(net.num_addresses)
    if kind < 0.8:
        return str(ipaddress.ip_address(first))
    last = min(first + rng.randrange(300), int(net.broadcast_address))
    return f"{ipaddress.ip_address(first)}-{ipaddress.ip_address(last)}"


def many(rng: random.Random, pick: Any) -> str:
    values = [pick() for _ in range(rng.choice((1, 1, 2, 3)))]
    return str(values[0]) if len(values) == 1 else "[" + ", ".join(str(v) for v in values) + "]"


def condition(rng: random.Random, name: str) -> str:
    if name == "from":
        return f"from: {many(rng, lambda: random_address_value(rng, SRC_NETS))}"
    if name == "to":
        return f"to: {many(rng, lambda: random_address_value(rng, DST_NETS))}"
    if name in ("dport", "sport"):
        return f"{name}: {many(rng, lambda: rng.choice(PORTS))}"
    if name == "proto":
        return f"proto: {rng.choice(('tcp', 'udp', '[tcp, udp]', 'icmp'))}"
    if name == "iif":
        return f"iif: {many(rng, lambda: rng.choice(IIFS))}"
    if name == "mac":
        return f'mac: "{rng.choice(MACS)}"'
    return f"dscp: {many(rng, lambda: rng.choice(DSCPS))}"


def random_config(rng: random.Random) -> str:
    """Runs of same-shape policies, now and then a negation, a `local:` or a catch-all."""
    lines: list[str] = []
    count = 0
    while count < rng.randint(6, 30):
        shape = rng.choice(SHAPES)
        for _ in range(rng.randint(1, 7)):
            parts = [condition(rng, name) for name in shape]
            if "proto" in shape and "port" in " ".join(shape):
                parts[shape.index("proto")] = f"proto: {rng.choice(('tcp', 'udp', '[tcp, udp]'))}"
            extra = rng.random()
            if extra < 0.05:
                parts.append(f"not: {{{condition(rng, rng.choice(('from', 'dport')))}}}")
            elif extra < 0.1:
                parts.append(f"local: {rng.choice(('true', 'false'))}")
            if ("iif" in shape or "mac" in shape) and "local: true" in parts:
                parts.remove("local: true")
            count += 1
            lines.append(f"  - {{name: p{count}, {', '.join(parts)}, via: {rng.choice(TARGETS)}}}")
        if rng.random() < 0.05:
            count += 1
            lines.append(f"  - {{name: p{count}, via: {rng.choice(TARGETS)}}}")
    return HEADER + "\n".join(lines) + "\n"


def random_model(tmp_path: Path, rng: random.Random) -> Model:
    """A random config that validates (some draws are rightly refused, e.g. IPv6-only via IPv4-only)."""
    for _ in range(100):
        path = tmp_path / "markroute.yaml"
        path.write_text(random_config(rng))
        model, _ = load_model(str(path))
        if model is not None:
            return model
    raise AssertionError("no valid random config in 100 draws")


def load(tmp_path: Path, text: str) -> Model:
    path = tmp_path / "markroute.yaml"
    path.write_text(text)
    model, diagnostics = load_model(str(path))
    assert model is not None, [str(d) for d in diagnostics]
    return model


def random_flow_args(rng: random.Random, model: Model) -> dict[str, Any]:
    """A packet that often lands inside some policy's addresses, ports, interfaces."""
    version = 4 if rng.random() < 0.75 else 6

    def address(nets: dict[int, Any], side: str) -> str:
        inside = [
            interval
            for p in model.policies
            for a in ([p.match.src] if side == "src" else [p.match.dst])
            if a is not None
            for interval in a.addresses.family(version)
        ]
        if inside and rng.random() < 0.7:
            first, last = rng.choice(inside)
            return str(ipaddress.ip_address(rng.randint(first, last)))
        net = nets[version]
        return str(net.network_address + rng.randrange(net.num_addresses))

    proto = rng.choice(("tcp", "udp", "tcp", "udp", "icmp" if version == 4 else "icmpv6"))
    ports = (22, 25, 53, 80, 443, 20, 30, 25, 1000, 1500, 2000, 2001, 19, 31, 9999)
    local = rng.random() < 0.15
    return {
        "src": address(SRC_NETS, "src"),
        "dst": address(DST_NETS, "dst"),
        "proto": proto,
        "sport": rng.choice(ports) if proto in ("tcp", "udp") else None,
        "dport": rng.choice(ports) if proto in ("tcp", "udp") else None,
        "iif": None if local else rng.choice(IIFS),
        "local": local,
        "mac": None if local else rng.choice(MACS),
        "dscp": rng.choice((0, 46, 10, 8, 12, 10)),
    }


def outcomes(plan: Plan, flows: list[dict[str, Any]]) -> list[list[tuple[Any, ...]]]:
    simulator = offline(plan, ADDRESSES, ROUTES)
    found = []
    for args in flows:
        paths = simulator.paths(make_flow(**args), record=False)
        found.append(sorted((p.outcome.key(), round(p.probability, 9)) for p in paths))
    return found


def chain_rules(plan: Plan, chain: str) -> list[dict[str, Any]]:
    return [obj["rule"] for obj in plan.nft if "rule" in obj and obj["rule"]["chain"] == chain]


def merged_maps(plan: Plan) -> int:
    return sum(1 for obj in plan.nft if "rule" in obj and obj["rule"]["chain"].startswith("policies_")
               and any("vmap" in e for e in obj["rule"]["expr"]))


@pytest.mark.parametrize("seed", range(40))
def test_merged_plan_routes_every_packet_like_one_rule_per_policy(tmp_path: Path, seed: int) -> None:
    rng = random.Random(seed)
    model = random_model(tmp_path, rng)
    merged = compile_plan(model, merge_min=2)
    naive = compile_plan(model, merge_min=None)
    flows = [random_flow_args(rng, model) for _ in range(150)]
    assert outcomes(merged, flows) == outcomes(naive, flows)


def test_random_configs_exercise_merging(tmp_path: Path) -> None:
    """The equivalence above is not vacuous: most random configs do produce maps."""
    with_maps = 0
    for seed in range(40):
        model = random_model(tmp_path, random.Random(seed))
        with_maps += merged_maps(compile_plan(model, merge_min=2)) > 0
        assert merged_maps(compile_plan(model, merge_min=None)) == 0
    assert with_maps >= 30


def test_overlap_goes_to_the_earliest_policy(tmp_path: Path) -> None:
    lines = [
        "  - {name: narrow, from: 10.9.1.0/24, via: isp_a}",
        "  - {name: wide, from: 10.9.0.0/16, via: isp_b}",
        "  - {name: middle, from: 10.9.1.128/25, via: main}",
        "  - {name: other, from: 10.8.0.0/16, via: main}",
    ]
    model = load(tmp_path, HEADER + "\n".join(lines) + "\n")
    plan = compile_plan(model)
    assert [len(rule["expr"]) for rule in chain_rules(plan, "policies_fwd")] == [1]
    simulator = offline(plan, ADDRESSES, ROUTES)
    for source, policy in (("10.9.1.200", "narrow"), ("10.9.2.1", "wide"), ("10.8.0.1", "other")):
        paths = simulator.paths(make_flow(source, "198.51.100.1", "udp", 1, 2, iif="lan0"), record=False)
        assert [p.outcome.policy for p in paths] == [policy] * len(paths)


def test_every_policy_keeps_its_counter_and_comment(tmp_path: Path) -> None:
    model = random_model(tmp_path, random.Random(7))
    plan = compile_plan(model, merge_min=2)
    comments = [obj["rule"].get("comment") for obj in plan.nft if "rule" in obj]
    counted = {c.removeprefix("policy ") for c in comments if c and c.startswith("policy ")}
    assert counted == {p.name for p in model.policies}
    for obj in plan.nft:
        rule = obj.get("rule")
        if rule and str(rule.get("comment", "")).startswith("policy "):
            assert any("counter" in e for e in rule["expr"])


def test_short_runs_and_unmergeable_shapes_stay_rules(tmp_path: Path) -> None:
    lines = [
        "  - {name: a, from: 10.9.1.0/24, via: isp_a}",
        "  - {name: b, from: 10.9.2.0/24, via: isp_b}",
        "  - {name: c, dscp: ef, from: 10.9.3.0/24, via: isp_b}",
        "  - {name: d, dscp: cs1, from: 10.9.4.0/24, via: isp_b}",
        "  - {name: e, from: 10.9.5.0/24, not: {dport: 22}, via: isp_b}",
        "  - {name: f, from: 10.9.6.0/24, not: {dport: 22}, via: isp_b}",
    ]
    model = load(tmp_path, HEADER + "\n".join(lines) + "\n")
    assert merged_maps(compile_plan(model)) == 0
    merged = compile_plan(model, merge_min=2)
    assert len(chain_rules(merged, "policies_fwd")) == 1 + 2 + 2
    assert merged_maps(merged) == 2  # the first run, in policies_fwd and policies_local


@pytest.mark.parametrize("dimensions", [1, 2, 3])
def test_first_match_gives_every_point_its_first_owner_with_disjoint_boxes(dimensions: int) -> None:
    """`first_match` against brute force over a small space: right owner everywhere, no overlaps."""
    from itertools import product

    from markroute.compile.policymaps import first_match

    rng = random.Random(dimensions)
    size = 12 if dimensions < 3 else 7
    for _ in range(30):
        keyed = []
        for owner in range(rng.randint(1, 8)):
            boxes = []
            for _ in range(rng.randint(1, 3)):
                box = []
                for _ in range(dimensions):
                    lo = rng.randrange(size)
                    box.append((lo, rng.randint(lo, size - 1)))
                boxes.append(tuple(box))
            keyed.append((tuple(boxes), owner))
        result = first_match(keyed, join=True)
        for point in product(range(size), repeat=dimensions):
            expected = next((owner for boxes, owner in keyed
                             if any(all(lo <= v <= hi for v, (lo, hi) in zip(point, box)) for box in boxes)), None)
            holders = [owner for box, owner in result if all(lo <= v <= hi for v, (lo, hi) in zip(point, box))]
            assert holders == ([] if expected is None else [expected]), (point, keyed)
