"""The daemon's failover path: its record of the table composed without listing it, no fsync,
the nft transaction through libnftables in the process, flows deleted over netlink directly.

The unit tests drive `TableRecorder` with plans the real compiler made and a stand-in for
nft's listing (it writes rules with a comment in a form of its own, as nft does with some
expressions), with every way of starting a program or syncing a file made to fail. The kernel
tests check what a user sees: after failovers of every kind (a failover member, balance
weights, every uplink down and the last resort) `status` finds the recorded table equal to
the live one, and the daemon logs its reaction time.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from daemon_helpers import DaemonLab, conntrack_entries, dlab  # noqa: F401 (dlab: a fixture)
from kernelhelp import markroute

from markroute.compile import UplinkAvailability, compile_plan
from markroute.config import load_model
from markroute.daemon.failover import TableRecorder, chain_batch, changed_chains
from markroute.daemon.reactor import Reactor
from markroute.kernel import KernelError, conntrack, libnft, nft, rundir, state
from markroute.kernel.netns import inside
from markroute.kernel.state import State
from markroute.lab import Lab
from markroute.plan import Plan
from markroute.plan.nftjson import json_default

CONFIG = """
uplinks:
  isp_a: {{interface: wan0, gateway: 10.0.0.1, nat: masquerade{check}}}
  isp_b: {{interface: wan1, gateway: 10.0.1.1, nat: masquerade{check}}}
groups:
  primary: {{failover: [isp_a, isp_b]}}
  both: {{balance: {{isp_a: 2, isp_b: 1}}}}
policies:
  - {{name: pinned-b, to: 198.18.0.0/15, via: isp_b}}
  - {{name: rest, to: 203.0.113.0/24, via: primary}}
  - {{name: spread, to: 198.51.100.0/24, via: both}}
"""
FAST = ", check: {interval: 0.05, timeout: 0.1, down: 3, up: 3}"


def plans(tmp_path: Path, *downs: frozenset[str]) -> list[Plan]:
    path = tmp_path / "markroute.yaml"
    path.write_text(CONFIG.format(check=""))
    model, diagnostics = load_model(str(path))
    assert model is not None, diagnostics
    return [compile_plan(model, UplinkAvailability(down=down)) for down in downs]


def listed(plan: Plan) -> list[dict[str, Any]]:
    """A stand-in for nft's listing of PLAN: rules with a comment come back with a counter added,
    as nft lists some expressions otherwise than they were written."""
    objects = json.loads(json.dumps(list(plan.nft), default=json_default))
    for obj in objects:
        if "rule" in obj and "comment" in obj["rule"]:
            obj["rule"]["expr"] = [*obj["rule"]["expr"], {"counter": {"packets": 7, "bytes": 700}}]
    return nft.normalise(objects)


def applied(plan: Plan) -> State:
    return State(plan_digest="nominal", nft_digest="d", table_name=plan.table_name, mask=plan.mask,
                 rule_priority=plan.rule_priority, nft_listing=listed(plan), rules=[], routes=[],
                 sysctls_original={}, sysctls_applied={}, uplinks=[], policies=[], applied_at="then", nft_generation=5)


@pytest.fixture
def run_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setattr(rundir, "RUN_DIR", tmp_path / "run")
    return tmp_path / "run"


def forbid_programs_and_fsync(monkeypatch: pytest.MonkeyPatch) -> None:
    def refused(*args: object, **kwargs: object) -> None:
        raise AssertionError("the failover path started a program or synced a file")

    for name in ("Popen", "run", "check_output"):
        monkeypatch.setattr(subprocess, name, refused)
    monkeypatch.setattr(os, "fsync", refused)
    monkeypatch.setattr(os, "fdatasync", refused)


def test_the_record_of_a_rewrite_is_composed_in_nfts_form_without_listing(
        run_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    up, a_down, both_down = plans(tmp_path, frozenset(), frozenset({"isp_a"}), frozenset({"isp_a", "isp_b"}))
    state.save(None, applied(up))
    errors: list[str] = []
    recorder = TableRecorder(Reactor(lambda exc: None), None, errors.append)
    recorder.adopt(up, state.load(None))
    forbid_programs_and_fsync(monkeypatch)
    installed = up
    for wanted, generation in ((a_down, 6), (both_down, 7), (up, 8)):
        commands = chain_batch(installed, wanted)
        assert commands, "each step rewrites chains"
        recorder.rewritten(wanted, changed_chains(commands), generation, "nominal")
        assert not recorder.idle
        recorder.flush()
        assert recorder.idle and errors == []
        seen = state.load(None)
        assert seen is not None and seen.nft_generation == generation
        assert seen.nft_listing == listed(wanted), "the rewritten chains as nft lists them, the rest as recorded"
        installed = wanted


def test_a_rule_no_apply_held_is_recorded_as_written(run_dir: Path, tmp_path: Path) -> None:
    up, a_down = plans(tmp_path, frozenset(), frozenset({"isp_a"}))
    state.save(None, applied(up))
    recorder = TableRecorder(Reactor(lambda exc: None), None, lambda message: None)
    recorder.adopt(up, state.load(None))
    recorder.forms.clear()  # as if nft had listed none of these rules yet
    recorder.rewritten(a_down, changed_chains(chain_batch(up, a_down)), 6, "nominal")
    recorder.flush()
    seen = state.load(None)
    assert seen is not None
    plain = nft.normalise(json.loads(json.dumps(list(a_down.nft), default=json_default)))
    group = [obj for obj in seen.nft_listing if obj.get("rule", {}).get("chain") == "group_primary"]
    assert group == [obj for obj in plain if obj.get("rule", {}).get("chain") == "group_primary"]


def test_a_rewrite_recorded_after_another_apply_is_dropped(run_dir: Path, tmp_path: Path) -> None:
    up, a_down = plans(tmp_path, frozenset(), frozenset({"isp_a"}))
    state.save(None, applied(up))
    recorder = TableRecorder(Reactor(lambda exc: None), None, lambda message: None)
    recorder.adopt(up, state.load(None))
    recorder.rewritten(a_down, changed_chains(chain_batch(up, a_down)), 6, "nominal")
    time.sleep(0.01)
    later = copy.deepcopy(applied(up))
    later.plan_digest = "someone else's"
    state.save(None, later)
    recorder.flush()
    assert state.load(None) == later


def test_the_daemons_records_are_written_without_fsync(
        run_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    synced: list[int] = []
    real = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), real(fd)))
    state.save_daemon_record(None, state.DaemonRecord(1, 0.0))
    state.save(None, applied(plans(tmp_path, frozenset())[0]))
    assert len(synced) == 1, "state.json (apply's) is synced, daemon.json is not"
    state.amend(None, "nominal")
    assert len(synced) == 1, "nor is table.json"


@pytest.mark.kernel
def test_a_libnftables_session_runs_batches_in_its_own_namespace_only() -> None:
    with Lab() as lab:
        ns = lab.add_ns("nft")
        with inside(ns):
            session = libnft.open_session()
            assert session is not None, "libnftables is installed with nftables"
            table = {"table": {"family": "inet", "name": "mrsession"}}
            nft.run_batch([{"add": table}, {"add": {"chain": {"family": "inet", "table": "mrsession", "name": "c"}}}],
                          session)
            with pytest.raises(KernelError, match="nft: .*No such file or directory"):
                nft.run_batch([{"add": {"rule": {"family": "inet", "table": "mrsession", "chain": "nope",
                                                  "expr": [{"accept": None}]}}}], session)
        assert "chain c" in lab.run(ns, ["nft", "list", "table", "inet", "mrsession"]).stdout
        with pytest.raises(KernelError, match="another network namespace"):
            session.run(json.dumps({"nftables": [{"delete": table}]}))
        session.close()


@pytest.mark.kernel
def test_deleting_by_mark_touches_only_that_mark(dlab: DaemonLab) -> None:  # noqa: F811
    r = dlab.router
    r.lab.run(r.rtr, ["conntrack", "-I", "-s", "192.0.2.10", "-d", "203.0.113.5", "-p", "udp", "--sport", "4000",
                      "--dport", "53", "-t", "60", "-m", "0x100"])
    r.lab.run(r.rtr, ["conntrack", "-I", "-s", "192.0.2.10", "-d", "203.0.113.5", "-p", "udp", "--sport", "4001",
                      "--dport", "53", "-t", "60", "-m", "0x200"])
    r.lab.run(r.rtr, ["conntrack", "-I", "-s", "192.0.2.10", "-d", "203.0.113.5", "-p", "udp", "--sport", "4002",
                      "--dport", "53", "-t", "60", "-m", "0x10100"])
    with inside(r.rtr):
        conntrack.delete_by_mark(0x100, 0xFF00)
    left = {(sport, mark) for _, sport, _, mark in _entries(r.rtr)}
    assert left == {(4001, 0x200)}, "0x100 and 0x10100 both carry 0x100 under the mask 0xff00"
    with inside(r.rtr), pytest.raises(ValueError):
        conntrack.delete_by_mark(0x10000, 0xFF00)


def _entries(ns: str) -> list[tuple[int, int, int, int]]:
    return [entry for entry in conntrack_entries(ns) if entry[0] == 17 and 4000 <= entry[1] <= 4002]


def no_drift(d: DaemonLab) -> bool:
    result = markroute("status", "--netns", d.rtr, "--json")
    return result.returncode == 0 and json.loads(result.stdout)["drift"] == []


def wait_no_drift(d: DaemonLab, what: str) -> None:
    deadline = time.monotonic() + 10
    while not no_drift(d):
        assert time.monotonic() < deadline, f"drift after {what}: {markroute('status', '--netns', d.rtr).stdout}"
        time.sleep(0.2)


@pytest.mark.kernel
def test_the_recorded_table_matches_the_live_one_after_every_kind_of_failover(dlab: DaemonLab) -> None:  # noqa: F811
    d = dlab
    d.start(d.write(CONFIG.format(check=FAST)))
    d.wait_states({"isp_a": "up", "isp_b": "up"})
    wait_no_drift(d, "the start")
    d.kill_upstream(0)
    d.wait_states({"isp_a": "down"})
    wait_no_drift(d, "isp_a's death (the failover member, the balance weights)")
    d.kill_upstream(1)
    d.wait_states({"isp_a": "down", "isp_b": "down"})
    wait_no_drift(d, "both deaths (the last resort)")
    d.revive_upstream(0)
    d.revive_upstream(1)
    d.wait_states({"isp_a": "up", "isp_b": "up"}, timeout=30)
    wait_no_drift(d, "both returns")
    events = [line for line in d.log().splitlines() if "event=failover" in line and "rules: rewrote" in line]
    assert len(events) >= 4 and all("reaction_ms=" in line and "reaction_cpu_ms=" in line for line in events)
