"""The daemon's view of the uplinks, kept next to the apply state (`state.DAEMON_RECORD`).

`markroute status` shows it, and a daemon that starts again (after a crash, a SIGKILL,
an upgrade) takes each uplink's state from it instead of assuming everything is up:
the rules it applies are then exactly the ones already installed, so the restart
changes nothing and no flow moves. Written atomically on every state change and at
most once a second otherwise (RTT and loss move all the time).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from typing import Any

from markroute.daemon.health import STATES, Snapshot, State
from markroute.kernel import state

FORMAT = 1


@dataclass(frozen=True)
class UplinkRecord:
    state: State
    since: float
    rtt: float | None = None
    loss: float | None = None
    transitions: int = 0
    suppressed: bool = False
    probed: bool = True

    @classmethod
    def of(cls, snapshot: Snapshot, probed: bool) -> UplinkRecord:
        return cls(snapshot.state, snapshot.since, snapshot.rtt, snapshot.loss, snapshot.transitions,
                   snapshot.suppressed, probed)


@dataclass(frozen=True)
class DaemonRecord:
    pid: int
    started: float
    rule_changes: int = 0
    uplinks: dict[str, UplinkRecord] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["format"] = FORMAT
        return data

    @property
    def running(self) -> bool:
        """Whether the process that wrote this record still runs."""
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True


def load(netns: str | None) -> DaemonRecord | None:
    """The record, or None if there is none or it cannot be used (a fresh start is then safe)."""
    path = state.directory(netns) / state.DAEMON_RECORD
    try:
        data = json.loads(path.read_text())
        if data.get("format") != FORMAT:
            return None
        uplinks = {
            name: UplinkRecord(**fields) for name, fields in data["uplinks"].items() if fields.get("state") in STATES
        }
        return DaemonRecord(int(data["pid"]), float(data["started"]), int(data["rule_changes"]), uplinks)
    except (OSError, ValueError, KeyError, TypeError):
        return None


def save(netns: str | None, record: DaemonRecord) -> None:
    state.write(netns, state.DAEMON_RECORD, record.to_json())


def remove(netns: str | None) -> None:
    (state.directory(netns) / state.DAEMON_RECORD).unlink(missing_ok=True)
