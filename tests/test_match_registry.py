"""Every match key is complete: one registry entry per `Match` field, handled by every stage.

`SAMPLES` holds, per YAML key, a value for a policy, three more for a merged run, a bad
value, and flow options that satisfy and that miss it. A key added to the registry
without a sample fails `test_every_key_has_a_sample`; each later test then runs the key
through one stage (config, compile, policy maps, warnings, simulator, `trace` CLI) and
fails, naming the key, when that stage ignores it.

Configs are written as JSON (which is YAML) so that scripts/plan-fingerprints, which
collects config-looking string literals from the tests, keeps its list unchanged.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from markroute import match as match_keys
from markroute import sim
from markroute.compile import compile_plan
from markroute.compile.namedsets import NamedSets
from markroute.config import load_model
from markroute.config.warnings import model_warnings
from markroute.diagnostics import Diagnostic
from markroute.match import KEYS, MapField, MatchKey, Unmerged
from markroute.model import Match, Model
from markroute.plan import Plan
from markroute.sim.packet import Flow, make_flow


@dataclass(frozen=True)
class Sample:
    value: Any
    more: tuple[Any, ...]  # three other values, for a run of four mergeable policies
    bad: Any
    hit: dict[str, Any]  # make_flow options of a packet the value matches
    miss: dict[str, Any] = field(default_factory=dict)


LOCAL_FLOW = {"local": True, "iif": None, "mac": None, "src": "10.0.0.2"}  # sent by the router itself
SAMPLES = {
    "from": Sample("10.1.0.0/16", ("10.2.0.0/16", "10.3.0.0/16", "10.4.0.0/16"), "10.1.0.300",
                   {"src": "10.1.2.3"}, {"src": "10.9.0.1"}),
    "to": Sample("192.0.2.0/24", ("10.20.0.0/16", "10.30.0.0/16", "10.40.0.0/16"), "example.com",
                 {"dst": "192.0.2.7"}, {"dst": "198.51.100.7"}),
    "proto": Sample("udp", ("sctp", 47, 50), "tcpp", {"proto": "udp"}, {"proto": "tcp"}),
    "sport": Sample(5000, (6000, 7000, 8000), 70000, {"sport": 5000}, {"sport": 5001}),
    "dport": Sample(443, (8443, 9443, 10443), "https", {"dport": 443}, {"dport": 80}),
    "iif": Sample("lan1", ("lan2", "lan3", "lan4"), "a b", {"iif": "lan1"}, {"iif": "lan0"}),
    "mac": Sample("02:00:00:00:00:02", ("02:00:00:00:00:03", "02:00:00:00:00:04", "02:00:00:00:00:05"),
                  "02:00:00:00:00", {"mac": "02:00:00:00:00:02"}, {"mac": "02:00:00:00:00:01"}),
    "dscp": Sample("ef", ("af11", "af21", "cs1"), 99, {"dscp": "ef"}, {"dscp": "cs0"}),
    "local": Sample(True, (), "maybe", {"local": True, "iif": None, "mac": None, "src": "10.0.0.2"}, {"local": False}),
    "user": Sample("root", (1, 2, 3), "no-such-user-here", {**LOCAL_FLOW, "uid": 0}, {**LOCAL_FLOW, "uid": 1}),
    "group": Sample(0, (1, 2, 3), "no-such-group-here", {**LOCAL_FLOW, "gid": 0}, {**LOCAL_FLOW, "gid": 1}),
    "cgroup": Sample("system.slice/a.service", ("system.slice/b.service", "user.slice/c", "x/y"), "../etc",
                     {**LOCAL_FLOW, "cgroup": "system.slice/a.service/sub"}, {**LOCAL_FLOW, "cgroup": "system.slice/b.service"}),
}
FLOW = {"src": "10.1.2.3", "dst": "192.0.2.7", "proto": "tcp", "sport": 40000, "dport": 80, "iif": "lan0",
        "mac": "02:00:00:00:00:01", "dscp": None, "local": False}
UPLINKS = {"wan": {"interface": "wan0", "gateway": "10.0.0.1", "nat": "masquerade"}}
ADDRESSES = ["lan0=172.16.0.1/24", "lan1=172.16.1.1/24", "wan0=10.0.0.2/24"]
ROUTES = ["default via 10.0.0.1 dev wan0"]

by_name = pytest.mark.parametrize("key", KEYS, ids=[k.key for k in KEYS])


def load(tmp_path: Path, policies: list[dict[str, Any]]) -> tuple[Model | None, list[Diagnostic]]:
    path = tmp_path / "markroute.json"
    path.write_text(json.dumps({"uplinks": UPLINKS, "policies": policies}))
    return load_model(str(path))


def model(tmp_path: Path, policies: list[dict[str, Any]]) -> Model:
    loaded, diagnostics = load(tmp_path, policies)
    assert loaded is not None, [d.render() for d in diagnostics]
    return loaded


def policy(key: MatchKey, value: Any, name: str = "p") -> dict[str, Any]:
    return {"name": name, "via": "wan", key.key: value}


def rules(plan: Plan, chain: str) -> list[dict[str, Any]]:
    return [o["rule"] for o in plan.nft if "rule" in o and o["rule"]["chain"] == chain]


def test_every_match_field_has_exactly_one_key() -> None:
    fields = [f.name for f in dataclasses.fields(Match) if f.name != "negated"]
    assert sorted(k.field for k in KEYS) == sorted(fields)
    assert len({k.key for k in KEYS}) == len(KEYS)
    assert match_keys.YAML_KEYS == tuple(k.key for k in KEYS) + (match_keys.NOT,)


@by_name
def test_every_key_has_every_part(key: MatchKey) -> None:
    assert key.read in ("addresses", "many", "one")
    for part in ("parse", "collect", "applies", "compared", "covers", "conditions"):
        assert callable(getattr(key, part)), f"{key.key}: {part}"
    assert isinstance(key.map_field, (MapField, Unmerged)), key.key
    assert key.trace_option.startswith("--"), key.key


def test_every_key_has_a_sample() -> None:
    assert set(SAMPLES) == {k.key for k in KEYS}


@by_name
def test_config_reads_every_key_and_reports_its_bad_values(tmp_path: Path, key: MatchKey) -> None:
    sample = SAMPLES[key.key]
    read = model(tmp_path, [policy(key, sample.value)]).policies[0].match
    assert key.value(read) is not None and key.value(read) == key.value(Match(**{key.field: key.value(read)}))
    assert read == Match(**{key.field: key.value(read)}), "only this key's field is set"
    loaded, diagnostics = load(tmp_path, [policy(key, sample.bad)])
    assert loaded is None
    assert any(d.severity == "error" and d.message.startswith(f"'{key.key}'") for d in diagnostics), \
        [d.render() for d in diagnostics]


@by_name
def test_compile_emits_every_key(tmp_path: Path, key: MatchKey) -> None:
    plan = compile_plan(model(tmp_path, [policy(key, SAMPLES[key.key].value)]))
    forwarded = [r for r in rules(plan, "policies_fwd") if r.get("comment") == "policy p"]
    local = [r for r in rules(plan, "policies_local") if r.get("comment") == "policy p"]
    if key.map_field is Unmerged.CHAIN:
        assert (len(forwarded), len(local)) == (0, 1), "the key picks the chain"
        return
    if not key.applies(key.value(model(tmp_path, [policy(key, SAMPLES[key.key].value)]).policies[0].match), False):
        assert not forwarded, f"{key.key}: forwarded packets have no local socket"
        forwarded = local
    assert forwarded
    for rule in forwarded:
        tests = [e["match"] for e in rule["expr"] if "match" in e and e["match"]["left"] != {"meta": {"key": "nfproto"}}]
        assert tests, f"{key.key}: the rule tests nothing"


MERGEABLE = [k for k in KEYS if isinstance(k.map_field, MapField)]


@pytest.mark.parametrize("key", MERGEABLE, ids=[k.key for k in MERGEABLE])
def test_policy_maps_merge_every_mergeable_key(tmp_path: Path, key: MatchKey) -> None:
    assert isinstance(key.map_field, MapField)
    sample = SAMPLES[key.key]
    values = (sample.value, *sample.more)
    plan = compile_plan(model(tmp_path, [policy(key, v, f"p{i}") for i, v in enumerate(values)]))
    keys = [e["vmap"]["key"] for r in rules(plan, "policies_fwd") for e in r["expr"] if "vmap" in e]
    assert len(keys) == 1, keys
    parts = keys[0]["concat"] if "concat" in keys[0] else [keys[0]]  # ports come with their protocols
    assert key.map_field.expression(4 if key.family_specific else None) in parts, parts
    assert {f"pol_{n}" for n in range(1, 5)} <= {o["chain"]["name"] for o in plan.nft if "chain" in o}


@by_name
def test_shadowing_warning_compares_every_key(tmp_path: Path, key: MatchKey) -> None:
    sample = SAMPLES[key.key]
    other = sample.more[0] if sample.more else (not sample.value)
    same = model(tmp_path, [policy(key, sample.value, "a"), policy(key, sample.value, "b")])
    differ = model(tmp_path, [policy(key, sample.value, "a"), policy(key, other, "b")])
    shadowed = [m for _, m, _ in model_warnings(same) if "can never match" in m]
    assert shadowed == ["policy 'b' can never match: 'a' (line 1) matches all its traffic first"]
    assert not [m for _, m, _ in model_warnings(differ) if "can never match" in m], key.key


@by_name
def test_simulator_follows_every_key(tmp_path: Path, key: MatchKey) -> None:
    sample = SAMPLES[key.key]
    simulator = sim.offline(compile_plan(model(tmp_path, [policy(key, sample.value)])), ADDRESSES, ROUTES)
    for options, expected in ((sample.hit, "p"), (sample.miss, None)):
        flow = make_flow(**{**FLOW, **options})
        found = simulator.paths(flow)
        assert [p.outcome.policy for p in found] == [expected], (key.key, options, [p.outcome.label() for p in found])


@by_name
def test_trace_names_every_key(key: MatchKey) -> None:
    from markroute.commands.trace import command

    options = {option for param in command.params for option in param.opts}
    assert key.trace_option in options
    assert key.flow_field in {f.name for f in dataclasses.fields(Flow)}
    assert key.key in make_flow(**FLOW).to_json()


def test_ports_without_proto_mean_tcp_and_udp_everywhere(tmp_path: Path) -> None:
    """The one rule (match/proto.py) seen by compile, policy maps and warnings alike."""
    ports = model(tmp_path, [{"name": "a", "via": "wan", "dport": 53},
                             {"name": "b", "via": "wan", "dport": 53, "proto": ["tcp", "udp"]}])
    a, b = (p.match for p in ports.policies)
    assert match_keys.covers(a, b) and match_keys.covers(b, a)
    assert match_keys.conditions(a, None, NamedSets("t")) == match_keys.conditions(b, None, NamedSets("t"))
    plan = compile_plan(ports)
    tested = [e["match"]["right"] for r in rules(plan, "policies_fwd") for e in r["expr"]
              if "match" in e and e["match"]["left"] == {"meta": {"key": "l4proto"}}]
    assert tested == [{"set": ["tcp", "udp"]}] * 2
