"""What `status` shows of an HA pair: the role `markroute ha` recorded, the hold, conntrackd's sync health."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from markroute.kernel import ha


@dataclass(frozen=True)
class HaStatus:
    role: str
    since: float
    #: Whether markroute's hold is on in the live table (None: no table with the hold).
    held: bool | None
    #: The last hand-over's conntrackd steps: (arguments, exit code, seconds).
    steps: tuple[tuple[str, int, float], ...]
    sync: ha.SyncHealth | None
    hold_error: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "role": self.role,
            "since": self.since,
            "held": self.held,
            "steps": [{"step": step, "code": code, "seconds": seconds} for step, code, seconds in self.steps],
            "sync": asdict(self.sync) if self.sync else None,
            "hold_error": self.hold_error,
        }


def ha_status(netns: str | None, table: str | None) -> HaStatus | None:
    """None until keepalived's hook (`markroute ha`) has recorded a role in this namespace."""
    record = ha.load(netns)
    if record is None:
        return None
    steps = tuple((" ".join(step.argv[3:]), step.code, step.seconds) for step in record.steps)
    return HaStatus(
        role=record.role,
        since=record.since,
        held=ha.is_held(table) if table else None,
        steps=steps,
        sync=ha.sync_health(record.conntrackd) if record.conntrackd else None,
        hold_error=record.hold_error,
    )
