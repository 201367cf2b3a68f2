"""`on_change`: the admin's command, run once per uplink state change.

The command is an argument list, executed directly (never by a shell), with the
change in its environment: MARKROUTE_UPLINK, MARKROUTE_OLD_STATE, MARKROUTE_NEW_STATE,
MARKROUTE_REASON (and MARKROUTE_NETNS under --netns). It runs in the background so a
slow notifier never delays a failover; its output goes to the daemon's stderr (the
journal), and one still running after `TIMEOUT` seconds is killed.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time

from markroute.daemon.uplinkstate import Transition

TIMEOUT = 30.0


class Hooks:
    def __init__(self, argv: tuple[str, ...], netns: str | None, log: logging.Logger) -> None:
        self.argv = argv
        self.netns = netns
        self.log = log
        self.running: list[tuple[subprocess.Popen[bytes], float, str]] = []

    def run(self, transition: Transition) -> None:
        if not self.argv:
            return
        env = dict(os.environ)
        env.update(
            MARKROUTE_UPLINK=transition.uplink,
            MARKROUTE_OLD_STATE=transition.old,
            MARKROUTE_NEW_STATE=transition.new,
            MARKROUTE_REASON=transition.reason,
        )
        if self.netns:
            env["MARKROUTE_NETNS"] = self.netns
        what = f"on_change for {transition.uplink} ({transition.old} -> {transition.new})"
        try:
            process = subprocess.Popen(list(self.argv), env=env, stdin=subprocess.DEVNULL, stdout=sys.stderr)
        except OSError as exc:
            self.log.warning("%s could not start %s: %s", what, self.argv[0], exc.strerror or exc)
            return
        self.running.append((process, time.monotonic(), what))

    def reap(self) -> None:
        """Collect finished commands, report failures, kill the ones that ran too long."""
        still: list[tuple[subprocess.Popen[bytes], float, str]] = []
        for process, started, what in self.running:
            code = process.poll()
            if code is None and time.monotonic() - started > TIMEOUT:
                process.kill()
                code = process.wait()
                self.log.warning("%s was killed after %.0f s", what, TIMEOUT)
            elif code is None:
                still.append((process, started, what))
            elif code != 0:
                self.log.warning("%s exited with status %d", what, code)
        self.running = still
