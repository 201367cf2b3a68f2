"""The records under /run/markroute: one writer per file, readers see them combined.

apply writes state.json, the daemon amends it in table.json and keeps its view of the
uplinks in daemon.json; `state.load` must give the table as the daemon left it, and
forget the amendment as soon as apply writes state.json again.
"""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from markroute.kernel import KernelError, rundir, state, sysctl
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
    monkeypatch.setattr(rundir, "RUN_DIR", tmp_path / "run")
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


# -- issue #12: damaged and hostile records -----------------------------------------------

def test_records_are_private_whatever_the_umask(run_dir: Path) -> None:
    old = os.umask(0)
    try:
        state.save("lab", applied())
    finally:
        os.umask(old)
    for level in (run_dir, run_dir / "netns", run_dir / "netns" / "lab"):
        assert stat.S_IMODE(level.stat().st_mode) == 0o700, level
    assert stat.S_IMODE((run_dir / "netns" / "lab" / state.STATE_RECORD).stat().st_mode) == 0o600


def test_a_directory_left_wide_open_is_closed_again(run_dir: Path) -> None:
    run_dir.mkdir()
    run_dir.chmod(0o777)
    state.save(None, applied())
    assert stat.S_IMODE(run_dir.stat().st_mode) == 0o700


def test_records_are_never_followed_through_symlinks(run_dir: Path, tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text("do not touch")
    run_dir.mkdir(mode=0o700)
    (run_dir / state.STATE_RECORD).symlink_to(secret)
    with pytest.raises(state.DamagedState, match="cannot read"):
        state.load(None)
    state.save(None, applied())
    assert secret.read_text() == "do not touch", "the link is replaced, its target not written"
    assert not (run_dir / state.STATE_RECORD).is_symlink()


def test_a_symlinked_state_directory_is_refused(run_dir: Path, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    run_dir.symlink_to(elsewhere)
    with pytest.raises(KernelError, match="cannot record state"):
        state.save(None, applied())
    assert not any(elsewhere.iterdir())


def wrong_typed() -> Iterator[tuple[str, dict[str, Any]]]:
    """state.json with one field at a time of the wrong type, or missing, or out of bounds."""
    good = applied().to_json()
    for name, value in good.items():
        if name == "format":
            continue
        for bad in (None, "text", 7, [1], {"a": 1}, True):
            if type(bad) is not type(value) and not (name == "nft_generation" and bad in (7, None)) \
                    and not (name == "warnings" and bad == []):
                yield name, {**good, name: bad}
        yield name, {k: v for k, v in good.items() if k != name}
    yield "sysctls_original", {**good, "sysctls_original": {"../../../etc/passwd": "x"}}
    yield "sysctls_original", {**good, "sysctls_original": {"/etc/shadow": "x"}}
    yield "sysctls_applied", {**good, "sysctls_applied": {"net/ipv4/ip_forward": "1\nroot"}}
    yield "rules", {**good, "rules": [{"version": 4, "priority": "high"}]}
    yield "uplinks", {**good, "uplinks": [{"name": 5}]}
    yield "mask", {**good, "mask": -1}
    yield "table_name", {**good, "table_name": "x; flush ruleset"}
    yield "nft_listing", {**good, "nft_listing": [[]]}
    yield "cgroups", {**good, "cgroups": ["../../etc"]}


@pytest.mark.parametrize(("field", "data"), list(wrong_typed()))
def test_a_damaged_field_is_named_never_a_traceback(field: str, data: dict[str, Any]) -> None:
    state.write(None, state.STATE_RECORD, data)
    if field in ("warnings", "nft_generation", "nft_elements", "groups", "cgroups", "connection_records") \
            and field not in data:  # a record an older markroute wrote lacks the newer fields
        assert state.load(None) is not None, "a field with a default may be missing"
        return
    with pytest.raises(state.DamagedState, match=field):
        state.load(None)


@pytest.mark.parametrize("text", ["", "null", "[]", "1", '"x"', "{", "\x00\xff", "[" * 100_000])
def test_a_state_file_that_is_no_record_is_damaged(run_dir: Path, text: str) -> None:
    run_dir.mkdir(mode=0o700)
    (run_dir / state.STATE_RECORD).write_text(text)
    with pytest.raises(state.DamagedState, match="down --force"):
        state.load(None)


@pytest.mark.parametrize("text", ["", "null", "[]", "1", "{", '{"format": 1, "pid": "me"}',
                                  '{"format": 1, "pid": 1, "started": 0, "uplinks": []}'])
def test_a_damaged_daemon_record_is_ignored_with_a_warning(run_dir: Path, text: str) -> None:
    run_dir.mkdir(mode=0o700)
    (run_dir / state.DAEMON_RECORD).write_text(text)
    heard: list[str] = []
    assert state.load_daemon_record(None, heard.append) is None
    assert heard and state.DAEMON_RECORD in heard[0] and "ignored" in heard[0]


@pytest.mark.parametrize("text", ["null", "[]", '{"format": 2, "amends": "x", "plan_digest": 1}',
                                  '{"format": 2, "amends": [1, 2], "plan_digest": "d", "table": []}'])
def test_a_damaged_amendment_is_ignored_with_a_warning(run_dir: Path, text: str) -> None:
    state.save(None, applied())
    (run_dir / state.TABLE_AMENDMENT).write_text(text)
    heard: list[str] = []
    assert state.load(None, heard.append) == applied()
    assert heard and state.TABLE_AMENDMENT in heard[0]


@pytest.mark.parametrize("path", ["../../etc/passwd", "/etc/passwd", "net/../../etc/passwd", "kernel/core_pattern",
                                  "net//ipv4", "net/ipv4/conf/eth0/../../../../etc/x", "net/ipv4/x\x00y"])
def test_sysctl_paths_outside_proc_sys_net_are_refused(path: str) -> None:
    assert not sysctl.valid_path(path)
    with pytest.raises(KernelError, match="refusing sysctl path"):
        sysctl.write(path, "1")


def test_networking_sysctl_paths_are_valid() -> None:
    assert sysctl.valid_path("net/ipv4/conf/eth0.100/rp_filter")
    assert sysctl.valid_path("net/ipv6/conf/all/forwarding")


def test_down_force_salvages_only_intact_sysctl_fields() -> None:
    good = {**applied().to_json(), "sysctls_original": {"net/ipv4/ip_forward": "0"},
            "sysctls_applied": {"net/ipv4/ip_forward": "1"}}
    state.write(None, state.STATE_RECORD, {**good, "uplinks": 3})
    assert state.salvage(None) == state.Salvage({"net/ipv4/ip_forward": "0"}, {"net/ipv4/ip_forward": "1"})
    state.write(None, state.STATE_RECORD, {**good, "sysctls_original": {"../../etc/shadow": "x"}})
    assert state.salvage(None) is None
    state.write(None, state.STATE_RECORD, {**good, "sysctls_applied": []})
    assert state.salvage(None) is None


@pytest.mark.parametrize("netns", ["../..", "..", "a/../../etc"])
def test_a_namespace_name_never_leads_out_of_the_state_directory(run_dir: Path, netns: str) -> None:
    with pytest.raises(KernelError, match="cannot record state"):
        state.save(netns, applied())
    with pytest.raises(KernelError, match="cannot name a directory"):
        state.load(netns)
