"""`cgroup:` without a kernel: config errors, the compiled sets and rules, the nft text batch,
listings made comparable again (the level nft 1.0.6 drops), and `trace --cgroup`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from markroute import sim
from markroute.compile import compile_plan
from markroute.config import load_model
from markroute.kernel import cgroups, nft
from markroute.match.cgroup import cgroup2_place
from markroute.plan import nftjson as nj
from markroute.plan import nfttext
from markroute.sim.packet import make_flow

UPLINKS = """uplinks:
  wan: {interface: wan0, gateway: 10.0.0.1, nat: masquerade}
  vpn: {interface: wan1, gateway: 10.0.1.1, nat: masquerade}
"""
ADDRESSES = ["wan0=10.0.0.2/24", "wan1=10.0.1.2/24"]
ROUTES = ["default via 10.0.0.1 dev wan0"]


def load(tmp_path: Path, policies: str) -> tuple[Any, list[str]]:
    path = tmp_path / "markroute.yaml"
    path.write_text(UPLINKS + "policies:\n" + policies)
    model, diagnostics = load_model(str(path))
    return model, [d.render() for d in diagnostics if d.severity == "error"]


@pytest.mark.parametrize("value, message", [
    ("/system.slice/x.service", "without the leading '/'"),
    ("system.slice/../x", "no empty, '.' or '..' parts"),
    ("system.slice//x", "no empty, '.' or '..' parts"),
    ('a"b', "is not a cgroup name"),
])
def test_bad_paths_are_errors_at_their_line(tmp_path: Path, value: str, message: str) -> None:
    model, errors = load(tmp_path, f"  - name: p\n    via: vpn\n    cgroup: '{value}'\n")
    assert model is None
    assert any(":7:" in e and message in e for e in errors), errors


def test_forwarded_only_and_mixed_depths_are_errors(tmp_path: Path) -> None:
    _, errors = load(tmp_path, "  - {name: p, via: vpn, local: false, cgroup: a.slice/b}\n")
    assert any(":5:" in e and "only connections this machine originates" in e for e in errors), errors
    _, errors = load(tmp_path, "  - {name: p, via: vpn, cgroup: [a.slice, a.slice/b]}\n")
    assert any("different depths (1, 2)" in e for e in errors), errors


def test_compiled_set_and_rule(tmp_path: Path) -> None:
    model, errors = load(tmp_path, "  - {name: p, via: vpn, cgroup: [a.slice/b.service, a.slice/c.service]}\n"
                                   "  - {name: q, via: vpn, cgroup: x.slice}\n")
    assert not errors
    plan = compile_plan(model)
    sets = {o["set"]["name"]: o["set"] for o in plan.nft if "set" in o and nj.is_cgroup_set(o["set"])}
    assert {name: body["elem"] for name, body in sets.items()} == {
        "_cgroup1_l2": ["a.slice/b.service", "a.slice/c.service"], "_cgroup2_l1": ["x.slice"]}
    local = [o["rule"] for o in plan.nft if "rule" in o and o["rule"]["chain"] == "policies_local"]
    tests = {r["comment"]: [e["match"] for e in r["expr"] if "match" in e and "socket" in e["match"]["left"]]
             for r in local if r.get("comment") in ("policy p", "policy q")}
    assert tests["policy p"] == [{"op": "==", "left": {"socket": {"key": "cgroupv2", "level": 2}}, "right": "@_cgroup1_l2"}]
    assert tests["policy q"][0]["left"]["socket"]["level"] == 1
    assert not any("policy p" == o["rule"].get("comment") for o in plan.nft
                   if "rule" in o and o["rule"]["chain"] == "policies_fwd")


def test_set_name_carries_its_level() -> None:
    assert nj.cgroup_set_level(nj.cgroup_set_name(3, 7)) == 7
    assert nj.cgroup_set_level("_list1_v4") is None and nj.cgroup_set_level("_cgroup1_lx") is None


def test_text_batch_renders_every_command_markroute_sends() -> None:
    ref = {"family": "inet", "table": "t", "name": "s"}
    text = nfttext.batch([
        {"add": {"table": {"family": "inet", "name": "t"}}},
        {"delete": {"table": {"family": "inet", "name": "t"}}},
        {"add": {"set": {**ref, "type": "cgroupsv2", "elem": ["unified/a.slice/b"]}}},
        {"add": {"set": {**ref, "name": "d", "type": "ipv4_addr", "flags": ["interval", "timeout"], "timeout": 60}}},
        {"add": nj.chain("t", "out", hook="output", kind="route", priority="mangle")},
        {"add": nj.rule("t", "out", [nj.match(nj.socket_cgroup(2), "@s"), nj.counter(), nj.verdict("accept")], "policy p")},
        {"flush": {"chain": {"family": "inet", "table": "t", "name": "out"}}},
        {"delete": {"chain": {"family": "inet", "table": "t", "name": "old"}}},
        {"add": {"element": {**ref, "name": "d", "elem": [{"elem": {"val": "192.0.2.1", "timeout": 30}}]}}},
        {"flush": {"set": ref}},
    ])
    assert text.splitlines() == [
        "add table inet t",
        "delete table inet t",
        'add set inet t s { type cgroupsv2; elements = { "unified/a.slice/b" }; }',
        "add set inet t d { type ipv4_addr; flags interval, timeout; timeout 60s; }",
        "add chain inet t out { type route hook output priority mangle; policy accept; }",
        'add rule inet t out socket cgroupv2 level 2 @s counter accept comment "policy p"',
        "flush chain inet t out",
        "delete chain inet t old",
        "add element inet t d { 192.0.2.1 timeout 30s }",
        "flush set inet t s",
    ]


def test_text_batch_refuses_what_it_cannot_write() -> None:
    with pytest.raises(ValueError, match="cannot write"):
        nfttext.batch([{"add": nj.rule("t", "c", [{"osf": {"key": "name"}}])}])
    with pytest.raises(ValueError, match="cannot write 'replace"):
        nfttext.batch([{"replace": {"rule": {}}}])


LISTED_RULE = {"rule": {"family": "inet", "table": "t", "chain": "policies_local", "handle": 9, "comment": "policy p",
                        "expr": [{"match": {"op": "==", "left": {"socket": {"key": "cgroupv2"}}, "right": "@_cgroup1_l2"}},
                                 {"counter": {"packets": 5, "bytes": 300}}]}}


def test_listing_gets_the_level_back_and_loses_the_run_time_elements() -> None:
    where = cgroup2_place() or ""
    listed_set = {"set": {"family": "inet", "table": "t", "name": "_cgroup1_l2", "type": "cgroupsv2", "handle": 3,
                          "elem": ["120", cgroups.kernel_path("a.slice/b", where)]}}
    normal = nft.normalise([listed_set, LISTED_RULE])
    assert normal[0] == {"set": {"family": "inet", "table": "t", "name": "_cgroup1_l2", "type": "cgroupsv2"}}
    assert normal[1]["rule"]["expr"][0]["match"]["left"] == {"socket": {"key": "cgroupv2", "level": 2}}
    loadable = nft.loadable([listed_set, LISTED_RULE])
    assert loadable[0]["set"]["elem"] == ["a.slice/b"], "stale ids dropped, paths as configured"
    assert loadable[1]["rule"]["expr"][0]["match"]["left"]["socket"]["level"] == 2
    assert "cgroupv2 level 2" in nfttext.batch([{"add": loadable[1]}])


def test_trace_follows_the_cgroup_and_its_sub_cgroups(tmp_path: Path) -> None:
    model, _ = load(tmp_path, "  - {name: p, via: vpn, cgroup: a.slice/b.service}\n")
    simulator = sim.offline(compile_plan(model), ADDRESSES, ROUTES)

    def policies(cgroup: str | None) -> list[str | None]:
        flow = make_flow("10.0.0.2", "192.0.2.1", "tcp", None, 443, None, True, cgroup=cgroup)
        return [p.outcome.policy for p in simulator.paths(flow)]

    assert policies("a.slice/b.service") == ["p"]
    assert policies("/a.slice/b.service/worker") == ["p"], "a sub-cgroup's ancestor at level 2 is in the set"
    assert policies("a.slice/c.service") == [None]
    assert policies("a.slice") == [None], "too shallow: no ancestor at level 2"
    unknown = simulator.paths(make_flow("10.0.0.2", "192.0.2.1", "tcp", None, 443, None, True))
    assert [p.outcome.verdict for p in unknown] == ["indeterminate"]
    assert "pass --cgroup" in unknown[0].outcome.label()
    with pytest.raises(ValueError, match="--local"):
        make_flow("10.0.0.2", "192.0.2.1", iif="lan0", cgroup="a.slice")


@pytest.mark.parametrize("line, place", [
    ("30 23 0:26 / /sys/fs/cgroup rw,nosuid shared:4 - cgroup2 cgroup2 rw,nsdelegate", ""),
    ("35 25 0:30 / /sys/fs/cgroup/unified rw,nosuid shared:10 - cgroup2 cgroup2 rw", "unified"),
    ("35 25 0:30 / /mnt/cg2 rw shared:10 - cgroup2 cgroup2 rw", None),
    ("25 23 0:22 / /sys/fs/cgroup rw shared:5 - tmpfs tmpfs rw,mode=755", None),
])
def test_where_cgroup2_is_mounted(tmp_path: Path, line: str, place: str | None) -> None:
    mountinfo = tmp_path / "mountinfo"
    mountinfo.write_text("22 1 8:1 / / rw - ext4 /dev/sda1 rw\n" + line + "\n")
    assert cgroup2_place(str(mountinfo)) == place
    if place is not None:
        assert cgroups.kernel_path("a.slice/b", place) == (f"{place}/a.slice/b" if place else "a.slice/b")
        assert cgroups.configured(cgroups.kernel_path("a.slice/b", place), place) == "a.slice/b"
        assert cgroups.configured("4242", place) is None, "a stale id lists as its number"


def test_no_cgroup2_where_nft_looks_is_a_config_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from markroute.match import cgroup

    monkeypatch.setattr(cgroup, "MOUNTINFO", str(tmp_path / "none"))
    model, errors = load(tmp_path, "  - {name: p, via: vpn, cgroup: a.slice/b}\n")
    assert model is None
    assert any(":5:" in e and "cgroup v2 is not mounted under /sys/fs/cgroup" in e for e in errors), errors


def test_resolved_batches_hold_only_the_cgroups_that_exist(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cgroups, "cgroup2_place", lambda: "unified")
    monkeypatch.setattr(cgroups, "exists", lambda path, where: path == "a.slice/here")
    body = nj.cgroup_set("t", nj.cgroup_set_name(1, 2), ["a.slice/here", "a.slice/gone"])["set"]
    rule = nj.rule("t", "c", [nj.match(nj.socket_cgroup(2), "@_cgroup1_l2")])
    batch = cgroups.resolved([{"add": {"set": body}}, {"add": rule}])
    assert batch[0]["add"]["set"]["elem"] == ["unified/a.slice/here"]
    assert batch[1] == {"add": rule}
    assert cgroups.involved([{"add": rule}]) and cgroups.involved([{"add": {"set": body}}])
    assert not cgroups.involved([{"add": nj.rule("t", "c", [nj.match(nj.meta("skuid"), 0)])}])
    monkeypatch.setattr(cgroups, "exists", lambda path, where: False)
    assert "elem" not in cgroups.resolved([{"add": {"set": body}}])[0]["add"]["set"], "nft refuses an empty list"
