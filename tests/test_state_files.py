"""The records under /run/markroute: one writer per file, readers see them combined.

apply writes state.json, the daemon amends it in table.json and keeps its view of the
uplinks in daemon.json; `state.load` must give the table as the daemon left it, and
forget the amendment as soon as apply writes state.json again.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from markroute.kernel import state
from markroute.kernel.state import DaemonRecord, State, TableRewrite, UplinkRecord

LISTING = [{"table": {"family": "inet", "name": "markroute"}}]
REWRITTEN = [*LISTING, {"chain": {"family": "inet", "table": "markroute", "name": "via_isp"}}]


def applied(digest: str = "applied") -> State:
    return State(
        plan_digest=digest, nft_digest="n1", table_name="markroute", mask=0xFF00, rule_priority=1000,
        nft_listing=list(LISTING), rules=[], routes=[], sysctls_original={}, sysctls_applied={}, uplinks=[],
        policies=[], applied_at="then", nft_generation=3,
    )


@pytest.fixture(autouse=True)
def run_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setattr(state, "RUN_DIR", tmp_path / "run")
    return tmp_path / "run"


def test_the_daemon_amends_without_writing_state_json(run_dir: Path) -> None:
    state.save(None, applied())
    before = (run_dir / state.STATE_RECORD).read_bytes()
    assert state.amend(None, "nominal", TableRewrite("n2", list(REWRITTEN), 9))
    assert (run_dir / state.STATE_RECORD).read_bytes() == before, "state.json has one writer: apply"
    seen = state.load(None)
    assert seen is not None
    assert (seen.plan_digest, seen.nft_digest, seen.nft_listing, seen.nft_generation) == ("nominal", "n2", REWRITTEN, 9)
    assert state.load_applied(None) == applied()


def test_a_digest_only_amendment_keeps_the_recorded_rewrite() -> None:
    state.save(None, applied())
    state.amend(None, "nominal", TableRewrite("n2", list(REWRITTEN), 9))
    state.amend(None, "other")
    seen = state.load(None)
    assert seen is not None and (seen.plan_digest, seen.nft_listing) == ("other", REWRITTEN)


def test_an_apply_after_the_amendment_makes_it_stale() -> None:
    state.save(None, applied())
    state.amend(None, "nominal", TableRewrite("n2", list(REWRITTEN), 9))
    state.save(None, applied("again"))
    assert state.load(None) == applied("again")


def test_nothing_to_amend_when_nothing_is_applied(run_dir: Path) -> None:
    assert not state.amend(None, "nominal")
    assert not (run_dir / state.TABLE_AMENDMENT).exists()


def test_remove_forgets_every_record(run_dir: Path) -> None:
    state.save(None, applied())
    state.amend(None, "nominal")
    state.save_daemon_record(None, DaemonRecord(1, 0.0, 2, {"isp": UplinkRecord("down", 5.0)}))
    state.remove(None)
    assert not any(run_dir.glob("*.json"))


def test_daemon_record_round_trip_and_unusable_records() -> None:
    record = DaemonRecord(1, 2.0, 3, {"isp": UplinkRecord("degraded", 5.0, 0.01, 0.1, 4, True, False)})
    state.save_daemon_record(None, record)
    assert state.load_daemon_record(None) == record
    data = record.to_json()
    data["format"] = 99
    state.write(None, state.DAEMON_RECORD, data)
    assert state.load_daemon_record(None) is None
    data = json.loads(json.dumps(record.to_json()))
    data["uplinks"]["isp"]["state"] = "sideways"
    state.write(None, state.DAEMON_RECORD, data)
    loaded = state.load_daemon_record(None)
    assert loaded is not None and loaded.uplinks == {}, "an uplink in an unknown state is forgotten"
