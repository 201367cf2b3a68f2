"""Address-set elements kept as intervals (`nftjson.AddressElements`).

The compiler's named sets, the state record and the fingerprint use the intervals; nft
and people get the nft JSON list. These tests pin down that both views say the same,
that the packed record form round-trips at the edges of both address spaces, and that a
record written before the packed form (format 1) is still read.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from markroute.compile import compile_plan
from markroute.config import load_model
from markroute.kernel import digest, rundir, state
from markroute.kernel.state import State
from markroute.plan import Plan
from markroute.plan.nftjson import AddressElements, address_element, json_default

V4_MAX = (1 << 32) - 1
V6_MAX = (1 << 128) - 1
EDGES = {
    4: ((0, 0), (1, 255), (256, 511), (0x0A000000, 0x0A0000FF), (0x0A000101, 0x0A000105), (V4_MAX, V4_MAX)),
    6: ((0, 0), (1, (1 << 64) - 1), ((1 << 127), (1 << 127) + 2), (V6_MAX - 255, V6_MAX)),
}


@pytest.mark.parametrize("version", [4, 6])
def test_the_sequence_is_the_nft_listing_of_the_intervals(version: int) -> None:
    elements = AddressElements(version, EDGES[version])
    listed = [address_element(version, interval) for interval in EDGES[version]]
    assert list(elements) == listed and elements == listed and listed == elements
    assert len(elements) == len(listed) and elements[1] == listed[1] and elements[::2] == listed[::2]
    assert elements != listed[:-1] and elements != AddressElements(version, EDGES[version][:-1])
    assert json.loads(json.dumps({"elem": elements}, default=json_default)) == {"elem": listed}


@pytest.mark.parametrize("version", [4, 6])
def test_packed_form_round_trips_at_the_edges(version: int) -> None:
    elements = AddressElements(version, EDGES[version])
    assert len(elements.pack()) == len(EDGES[version]) * (8 if version == 4 else 32)
    again = AddressElements.from_packed_text(version, elements.packed_text())
    assert again == elements and again.intervals == EDGES[version]
    assert AddressElements.from_listing(version, list(elements)).intervals == EDGES[version]


@pytest.mark.parametrize("text", ["AAAA", "not base64!", "AAAAAAAAAAAA"])
def test_damaged_packed_text_is_refused(text: str) -> None:
    with pytest.raises(ValueError):
        AddressElements.from_packed_text(4, text)


CONFIG = """\
uplinks:
  a: {interface: wan0, gateway: 10.0.0.1, gateway6: "fe80::1"}
  b: {interface: wan1, gateway: 10.0.1.1, gateway6: "fe80::1"}
sets:
  big: {file: big.txt}
policies:
  - {name: big, to: "@big", via: b}
  - {name: rest, via: a}
"""


def plan_with(tmp_path: Path, prefixes: list[str]) -> Plan:
    (tmp_path / "markroute.yaml").write_text(CONFIG)
    (tmp_path / "big.txt").write_text("\n".join(prefixes) + "\n")
    model, diagnostics = load_model(str(tmp_path / "markroute.yaml"))
    assert model is not None, [d.render() for d in diagnostics]
    return compile_plan(model)


PREFIXES = [f"10.{i // 256}.{i % 256}.0/24" for i in range(0, 2000, 2)] + ["2001:db8::/48", "2001:db8:2::1"]


def test_plan_json_writes_elements_out_and_sets_keep_intervals(tmp_path: Path) -> None:
    plan = plan_with(tmp_path, PREFIXES)
    sets = {obj["set"]["name"]: obj["set"]["elem"] for obj in plan.nft if "set" in obj}
    assert isinstance(sets["big_v4"], AddressElements) and len(sets["big_v4"]) == 1000
    written = {obj["set"]["name"]: obj["set"]["elem"] for obj in plan.to_json()["nftables"] if "set" in obj}
    assert type(written["big_v4"]) is list and written["big_v4"][0] == {"prefix": {"addr": "10.0.0.0", "len": 24}}
    assert written["big_v6"] == [{"prefix": {"addr": "2001:db8::", "len": 48}}, "2001:db8:2::1"]
    json.dumps(plan.to_json())  # plain JSON: no hook needed


def test_fingerprint_tells_element_changes_from_structure_changes(tmp_path: Path) -> None:
    first = digest.nft_digest(plan_with(tmp_path, PREFIXES))
    assert digest.nft_digest(plan_with(tmp_path, PREFIXES)) == first
    changed = digest.nft_digest(plan_with(tmp_path, PREFIXES[1:]))
    assert changed != first and digest.same_structure(first, changed)


def recorded_state(tmp_path: Path) -> State:
    plan = plan_with(tmp_path, PREFIXES)
    return State(
        plan_digest="p", nft_digest=digest.nft_digest(plan), table_name=plan.table_name, mask=plan.mask,
        rule_priority=plan.rule_priority, nft_listing=[dict(obj) for obj in plan.nft], rules=list(plan.rules),
        routes=list(plan.routes), sysctls_original={}, sysctls_applied={}, uplinks=list(plan.uplinks),
        policies=list(plan.policies), applied_at="now", nft_generation=7,
    )


def test_state_record_keeps_elements_packed_and_reads_them_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(rundir, "RUN_DIR", tmp_path / "run")
    recorded = recorded_state(tmp_path)
    state.save(None, recorded)
    data = json.loads((tmp_path / "run" / state.STATE_RECORD).read_text())
    assert data["format"] == state.FORMAT and set(data["nft_elements"]) == {"big_v4", "big_v6"}
    assert all("elem" not in obj["set"] for obj in data["nft_listing"] if "set" in obj)
    again = state.load(None)
    assert again == recorded
    listed = {obj["set"]["name"]: obj["set"]["elem"] for obj in again.nft_listing if "set" in obj}  # type: ignore[union-attr]
    assert isinstance(listed["big_v4"], AddressElements) and listed["big_v4"].intervals[0] == (0x0A000000, 0x0A0000FF)


def test_a_format_1_record_with_listed_elements_is_still_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(rundir, "RUN_DIR", tmp_path / "run")
    recorded = recorded_state(tmp_path)
    old = recorded.to_json()
    old["format"] = 1
    old["nft_listing"] = [json.loads(json.dumps(obj, default=json_default)) for obj in recorded.nft_listing]
    del old["nft_elements"]
    state.write(None, state.STATE_RECORD, old)
    again = state.load(None)
    assert again == recorded  # listed elements compare equal to the intervals they stand for


def test_a_damaged_packed_record_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(rundir, "RUN_DIR", tmp_path / "run")
    data = recorded_state(tmp_path).to_json()
    data["nft_elements"]["big_v4"] = "AAAA"
    state.write(None, state.STATE_RECORD, data)
    with pytest.raises(state.KernelError, match="is damaged"):
        state.load(None)
