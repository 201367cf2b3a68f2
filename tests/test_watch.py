"""`markroute status --watch` through a real pseudo-terminal (tmux) while a failover happens,
and as plain lines through a pipe."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from daemon_helpers import (  # noqa: F401 (dlab: a fixture)
    DaemonLab,
    dlab,
    python_env,
)
from kernelhelp import KERNEL

pytestmark = KERNEL

CONFIG = """
uplinks:
  isp_a: {interface: wan0, gateway: 10.0.0.1, nat: masquerade}
  isp_b: {interface: wan1, gateway: 10.0.1.1, nat: masquerade}
groups:
  primary: {failover: [isp_a, isp_b]}
policies:
  - {name: rest, to: 203.0.113.0/24, via: primary}
"""


def wait_for(check: Callable[[], str], wanted: Callable[[str], bool], what: str, timeout: float = 20.0) -> str:
    deadline = time.monotonic() + timeout
    seen = ""
    while time.monotonic() < deadline:
        seen = check()
        if wanted(seen):
            return seen
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}; screen:\n{seen}")


def test_watch_redraws_a_terminal_through_a_failover_and_quits_on_ctrl_c(dlab: DaemonLab) -> None:  # noqa: F811
    d, r = dlab, dlab.router
    d.start(d.write(CONFIG))
    d.wait_states({"isp_a": "up", "isp_b": "up"})
    server = f"mr-watch-{uuid.uuid4().hex[:8]}"  # a tmux server of this test's own
    env = python_env()
    command = " ".join(shlex.quote(a) for a in [sys.executable, "-m", "markroute", "status", "--watch",
                                                  "--netns", d.rtr])
    tmux = ["tmux", "-L", server]
    subprocess.run([*tmux, "new-session", "-d", "-x", "170", "-y", "45", "-s", "w",
                    f"cd {shlex.quote(os.getcwd())}; PYTHONPATH={shlex.quote(env['PYTHONPATH'])} {command}; "
                    "echo WATCH-EXITED $?; sleep 60"], check=True)
    socket_path = subprocess.run([*tmux, "display-message", "-p", "#{socket_path}"], capture_output=True,
                                 text=True).stdout.strip()
    try:
        def pane() -> str:
            return subprocess.run([*tmux, "capture-pane", "-p", "-t", "w"], capture_output=True, text=True).stdout

        first = wait_for(pane, lambda s: "isp_a" in s and "active isp_a" in s, "the first screen")
        assert "rtt / loss over the last" in first and "Ctrl-C" in first
        flow = d.flow("udp", r.server, duration=4)
        d.set_link(r.isps[0], "down0", up=False)
        after = wait_for(pane, lambda s: "isp_a health: up -> down" in s and "active isp_b" in s,
                         "the failover on screen")
        assert "group primary: active isp_a -> active isp_b" in after
        assert any(c in after for c in "▁▂▃▄▅▆▇█"), "RTT sparklines"
        flow.result()
        subprocess.run([*tmux, "send-keys", "-t", "w", "C-c"], check=True)
        wait_for(pane, lambda s: "WATCH-EXITED 0" in s, "a clean exit on Ctrl-C")
    finally:
        subprocess.run([*tmux, "kill-server"], capture_output=True)
        if socket_path:
            Path(socket_path).unlink(missing_ok=True)


def test_watch_without_a_terminal_prints_plain_lines(dlab: DaemonLab) -> None:  # noqa: F811
    d = dlab
    d.start(d.write(CONFIG))
    d.wait_states({"isp_a": "up", "isp_b": "up"})
    proc = subprocess.Popen([sys.executable, "-m", "markroute", "status", "--watch", "--netns", d.rtr],
                            stdout=subprocess.PIPE, text=True, env=python_env())
    try:
        time.sleep(3)
    finally:
        proc.send_signal(2)  # SIGINT, as Ctrl-C
        out, _ = proc.communicate(timeout=20)
    assert proc.returncode == 0
    assert "\x1b[" not in out, "no terminal control sequences in a pipe"
    lines = [line for line in out.splitlines() if "uplink=isp_a" in line]
    assert len(lines) >= 2 and "health=up" in lines[-1], out
