"""`markroute run` against hostile files (issue #12, 6 and 7), on a real router namespace.

A FIFO named as a set file once hung the reload SIGHUP started, freezing the daemon
(no failover for 11 s while an uplink was dead); a damaged `daemon.json` kept `run`
from starting at all.
"""

from __future__ import annotations

import os
import signal
import time

import pytest
from daemon_helpers import DaemonLab, dlab  # noqa: F401 (dlab: a fixture)
from test_daemon_service import config

from markroute.kernel.state import DAEMON_RECORD, directory

pytestmark = pytest.mark.kernel


def test_a_damaged_daemon_record_is_ignored_and_run_starts(dlab: DaemonLab) -> None:  # noqa: F811
    d = dlab
    directory(d.rtr).mkdir(parents=True, mode=0o700)
    (directory(d.rtr) / DAEMON_RECORD).write_text("[]")
    daemon = d.start(d.write(config()))
    assert daemon.poll() is None
    assert f"{DAEMON_RECORD} is damaged and ignored" in d.log()
    assert d.wait_states({"isp_a": "up", "isp_b": "up"})


def test_a_fifo_set_file_on_reload_does_not_freeze_failover(dlab: DaemonLab) -> None:  # noqa: F811
    d = dlab
    path = d.write(config())
    daemon = d.start(path)
    d.wait_states({"isp_a": "up", "isp_b": "up"})
    fifo = d.workdir / "prefixes.fifo"
    os.mkfifo(fifo)
    path.write_text(config() + f"sets:\n  hostile: {{file: {fifo}}}\n")
    daemon.send_signal(signal.SIGHUP)
    time.sleep(0.5)
    d.kill_upstream(0)
    d.wait_states({"isp_a": "down"}, timeout=15)
    assert daemon.poll() is None
    assert "not a regular file" in d.log(), d.log()
