"""HA pair pieces that need no kernel: conntrackd's statistics and how `status` shows the role."""

from __future__ import annotations

from pathlib import Path

from markroute.commands.status import render
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
