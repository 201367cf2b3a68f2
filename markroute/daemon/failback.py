"""Failback control per failover group (`failback: {hold, flows}`) and which connections
may be ended at all.

* `hold`: a member that came back (down -> up) is not preferred by that group again
  until it has stayed healthy for `hold` seconds; meanwhile the group keeps using the
  member its traffic failed over to. The compiler sees this as `(group, uplink)` pairs
  in `UplinkAvailability.held`; the daemon re-acts when the next hold ends. Without
  `hold`, the uplink state machine's own hysteresis (`check.up` rounds) and flap
  damping are all there is, as before. Why: a primary that recovers for a minute at a
  time would otherwise pull every new connection back and forth.
* `flows: move`: when a group's choice moves back to an earlier (preferred) member,
  the connections carrying the marks of the members it is leaving are ended
  (conntrack, by mark), so their next packet is classified again and goes home.
  For UDP services that never start a new connection (SIP, RTP, a VPN over UDP) the
  default `keep` would leave them on the backup until they end. The entries are found
  by mark, so connections another policy sent to that backup member directly end too.
* A connection is never ended when nothing healthy could take it: the flows of an
  uplink that went down are only deleted when some target that uses the uplink still
  has a usable uplink or falls back to `main`; otherwise (a fail-closed tunnel with
  no alternative) they are kept, dropped while the tunnel is down, and carry on
  unchanged, NAT mapping and all, when it returns.
"""

from __future__ import annotations

from collections.abc import Iterable

from markroute.compile import UplinkAvailability
from markroute.daemon.uplinkstate import Transition
from markroute.model import Model


class FailbackClock:
    """When each uplink last came back up (monotonic seconds), for `hold`."""

    def __init__(self) -> None:
        self.recovered: dict[str, float] = {}

    def note(self, transition: Transition, now: float) -> None:
        if transition.old == "down" and transition.new in ("up", "degraded"):
            self.recovered[transition.uplink] = now
        elif transition.new == "down":
            self.recovered.pop(transition.uplink, None)

    def held(self, model: Model, now: float) -> frozenset[tuple[str, str]]:
        """(group, uplink) pairs whose hold has not run out."""
        return frozenset(
            (name, member) for name, group in model.groups.items() if group.failback.hold is not None
            for member, _ in group.members
            if member in self.recovered and now - self.recovered[member] < group.failback.hold
        )

    def next_release(self, model: Model, now: float) -> float | None:
        """Seconds until the first held pair is released, None when nothing is held."""
        waits = [self.recovered[member] + (model.groups[name].failback.hold or 0.0) - now
                 for name, member in self.held(model, now)]
        return max(0.0, min(waits)) if waits else None


def usable(model: Model, target: str, state: UplinkAvailability, group: str | None = None) -> bool:
    """Whether TARGET can carry traffic now (as a member of GROUP: not held there)."""
    if target in model.groups:
        return any(usable(model, member, state, target) for member, _ in model.groups[target].members)
    return target not in state.down and (group, target) not in state.held


def chosen(model: Model, group: str, state: UplinkAvailability) -> int | None:
    """Index of the member a failover group sends new connections to, None for its last resort."""
    for index, (member, _) in enumerate(model.groups[group].members):
        if usable(model, member, state, group):
            return index
    return None


def returning(model: Model, before: UplinkAvailability, after: UplinkAvailability) -> set[str]:
    """Uplinks whose connections end because a `flows: move` group went back to an earlier member."""
    leaving: set[str] = set()
    for name, group in model.groups.items():
        if group.kind != "failover" or group.failback.flows != "move":
            continue
        was, now = chosen(model, name, before), chosen(model, name, after)
        if was is None or now is None or now >= was:
            continue  # never end a connection that has nowhere healthy to go
        home = set(model.uplinks_of(group.members[now][0]))
        leaving |= set(model.uplinks_of(group.members[was][0])) - home
    return leaving


def with_destination(model: Model, state: UplinkAvailability, uplinks: Iterable[str]) -> set[str]:
    """Of UPLINKS (down), those whose connections have somewhere else to go if ended."""
    targets = {policy.via for policy in model.policies}
    found: set[str] = set()
    for uplink in uplinks:
        for target in targets:
            if uplink not in model.uplinks_of(target):
                continue
            resort = model.last_resort_of(target) if target in model.groups else model.settings.last_resort
            if resort == "main" or any(usable(model, other, state) for other in model.uplinks_of(target)):
                found.add(uplink)
                break
    return found
