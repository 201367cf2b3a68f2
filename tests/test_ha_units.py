"""HA pair pieces that need no kernel: conntrackd's statistics, how `status` shows the role, the role's record."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from markroute.commands.status import render
from markroute.kernel import KernelError, ha, rundir, state
from markroute.kernel.ha import SyncHealth, _counters
from markroute.kernel.hastatus import HaStatus
from markroute.kernel.status import StatusReport

#: `conntrackd -s` of conntrackd 1.4.7 (numbers changed so each one is told apart).
STATS = (Path(__file__).parent / "data" / "conntrackd-stats.txt").read_text()


def test_conntrackd_statistics_by_section() -> None:
    counters = _counters(STATS.splitlines())
    assert counters["cache internal.current active connections"] == 3
    assert counters["cache internal.connections created failed"] == 1
    assert counters["cache external.current active connections"] == 2
    assert (counters["sync.Pckts sent"], counters["sync.Pckts recv"]) == (1, 4)
    assert counters["message tracking.Lost msgs"] == 7


def test_status_shows_role_hold_and_sync() -> None:
    sync = SyncHealth(True, _counters(STATS.splitlines()))
    ha = HaStatus("backup", 0.0, True, (("-t", 0, 0.01), ("-n", 1, 0.01)), sync, "no such set")
    text = render(StatusReport(namespace=None, applied=True, applied_at="now", ha=ha))
    assert "HA role: backup since " in text and "new connections held" in text
    assert "last hand-over failed: conntrackd -n exit 1, the hold: no such set" in text
    assert "cache external.current active connections 2" in text and "message tracking.Lost msgs 7" in text
    down = HaStatus("master", 0.0, False, (), SyncHealth(False, {}, "can't connect"))
    text = render(StatusReport(namespace=None, applied=True, applied_at="now", ha=down))
    assert "not held" in text and "conntrackd does not answer: can't connect" in text
    assert render(StatusReport(namespace=None, applied=True, applied_at="now")).count("HA role") == 0


def test_ha_record_is_private_type_checked_and_never_read_through_a_link(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """ha.json decides whose connections `markroute run` deletes: read like every state record."""
    monkeypatch.setattr(rundir, "RUN_DIR", tmp_path / "run")
    record = ha.HaRecord("master", 1.5, "/etc/conntrackd/conntrackd.conf", (ha.Step(("conntrackd", "-c"), 0, 0.1, ""),))
    ha.save("ns1", record)
    path = state.directory("ns1") / state.HA_RECORD
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert ha.load("ns1") == record and ha.is_master("ns1")

    path.write_text(json.dumps({**record.to_json(), "role": "boss"}))
    with pytest.raises(KernelError, match=r"ha\.json is damaged: field 'role' must be one of"):
        ha.load("ns1")
    path.write_text(json.dumps({**record.to_json(), "steps": [{"argv": "conntrackd -c"}]}))
    with pytest.raises(KernelError, match=r"field 'steps\[0\]\.argv' must be a list"):
        ha.load("ns1")

    path.write_text(json.dumps({**record.to_json(), "format": 2, "new": 1}))
    with pytest.raises(KernelError, match=r"field 'format' is 2: written by another markroute version"):
        ha.load("ns1")
    before = record.to_json()
    del before["format"]  # as written before records of ha.json had a format: read as format 1
    path.write_text(json.dumps(before))
    assert ha.load("ns1") == record

    elsewhere = tmp_path / "elsewhere.json"
    elsewhere.write_text(json.dumps(record.to_json()))
    path.unlink()
    path.symlink_to(elsewhere)
    with pytest.raises(KernelError, match="cannot read"):
        ha.load("ns1")
    state.remove("ns1")
    assert not path.is_symlink() and elsewhere.exists()
