"""Each uplink's state machine (`UplinkHealth`): up, degraded or down, with hysteresis and flap damping.

Inputs are probe rounds (answered with an RTT, or not within the timeout) and the
link's state from netlink; the output is a `Transition` whenever the state the rules
must reflect changes. Probes only ever say "reachable" or "unreachable" after a run of
equal results (`check.down` failures, `check.up` successes), and a link that is lost
makes the uplink unreachable at once, since nothing can pass through it.

Flap damping (the idea of BGP route flap damping): every time the uplink becomes
unreachable it collects a penalty of 1, which halves every `HALF_LIFE` seconds. Once
the penalty reaches `SUPPRESS` the uplink stays down even when it is reachable again,
until the penalty has decayed below `REUSE`. Going down is never delayed (traffic must
leave a dead uplink at once); only coming back is. With these numbers two bounces are
never damped, a third one less than 3.5 s after the one before (or a steady flapping)
holds the uplink down, and it is back 5 to 10 s (`MAX_PENALTY`) after the flapping
stops: a link flapping for minutes costs about five rule changes instead of two per
bounce.

Unknown, and what `on_change` hears: an uplink the daemon has not judged yet (a fresh
start without a record, or one whose definition a reload changed) is `unknown` and
carries no traffic until `check.up` rounds in a row answer (or, for a link-only uplink,
its link state says so); `check.down` unanswered rounds make it down. A restart takes
each uplink's state from the daemon's record for the rules (nothing moves), but the
state is still only "known" after the first such verdict. `news` reports each change of
the known state exactly once, starting from `unknown`: the rules follow `Transition`s,
the admin's `on_change` follows the news, so a state taken over from the record is
announced (old state `unknown`) once probes confirm or refute it, and a reset on
reload is never a silent `up` (a changed uplink once showed `up`, unprobed, then went
`up -> down` 0.5 s later, which `on_change` saw as a second `up -> down` in a row).

Degraded: among the results of the last `WINDOW_SECONDS`, loss above `check.max_loss`
or a mean RTT above `check.max_rtt` makes an up uplink degraded; it is up again only
when loss and RTT are back under `RECOVER` times their limits, so values hovering
around a limit do not flap. A degraded uplink keeps its place in failover lists but
gets `DEGRADED_WEIGHT` of its weight in balance groups.

Waiting (`State`'s fourth value): an uplink without an address or next hop yet
(`kernel.gateways`, `gateway: auto` before its lease) is out of use like a down one
but not judged by this machine: the daemon's `follow.Follower` says so, its probes
stop, and status, metrics and the record show `waiting` (`follow.shown`).
"""

from __future__ import annotations

import math
import time
from collections import deque
from dataclasses import dataclass

from markroute.kernel.state import UplinkRecord
from markroute.kernel.state import UplinkState as State
from markroute.model import HealthCheck

HALF_LIFE = 5.0
SUPPRESS = 2.0
REUSE = 1.0
MAX_PENALTY = 4.0
WINDOW_SECONDS = 2.0
MIN_WINDOW = 10
RECOVER = 0.8
DEGRADED_WEIGHT = 0.25


@dataclass(frozen=True)
class Transition:
    uplink: str
    old: State
    new: State
    reason: str


@dataclass(frozen=True)
class Snapshot:
    """What status, metrics and the record show about one uplink."""

    state: State
    since: float  # wall-clock time of the last transition
    rtt: float | None  # mean RTT of the answered probes in the window, seconds
    loss: float | None  # fraction of unanswered probes in the window
    transitions: int
    suppressed: bool

    def record(self, probed: bool, probe_bytes_per_day: int | None = None) -> UplinkRecord:
        """The snapshot as `daemon.json` keeps it."""
        return UplinkRecord(self.state, self.since, self.rtt, self.loss, self.transitions, self.suppressed, probed,
                            probe_bytes_per_day)


class UplinkHealth:
    """One uplink's state machine; `now` is time.monotonic(), `since` is wall-clock time."""

    def __init__(self, name: str, check: HealthCheck | None, state: State = "up", since: float | None = None,
                 transitions: int = 0) -> None:
        self.name = name
        self.check = check
        self.state: State = state
        self.since = time.time() if since is None else since
        self.transitions = transitions
        self.reachable = state not in ("down", "unknown")
        self.known = False  # a verdict was reached since this machine was made (else `state` is assumed)
        self.announced: State = "unknown"  # the state `news` last reported
        self.reason = ""
        self.link_usable = True
        self.failures = 0
        self.successes = 0
        self.penalty = 0.0
        self.penalty_at = 0.0
        self.suppressed = False
        size = MIN_WINDOW if check is None else max(MIN_WINDOW, math.ceil(WINDOW_SECONDS / check.interval))
        self.window: deque[float | None] = deque(maxlen=size)

    # -- inputs ------------------------------------------------------------------------

    def probe(self, answered: bool, rtt: float | None, now: float) -> Transition | None:
        """The result of one probe round (answered by any target, with the best RTT)."""
        self.window.append(rtt if answered else None)
        if answered:
            self.successes += 1
            self.failures = 0
        else:
            self.failures += 1
            self.successes = 0
        assert self.check is not None
        if self.failures >= self.check.down and (self.reachable or not self.known):
            self.known = True
            if self.reachable:
                self.become_unreachable(now)
            return self.settle(now, f"{self.failures} probes unanswered")
        if self.successes >= self.check.up and self.link_usable and (not self.reachable or not self.known):
            self.known = True
            self.reachable = True
            return self.settle(now, f"{self.successes} probes answered")
        return self.settle(now, None)

    def link(self, usable: bool, now: float) -> Transition | None:
        """The interface went away, lost its carrier or was set down (False), or came back (True)."""
        first = not self.known and (self.check is None or not usable)  # the link alone decides
        if usable == self.link_usable and not first:
            return None
        self.link_usable = usable
        self.successes = 0
        if not usable:
            self.known = True
            if self.reachable:
                self.become_unreachable(now)
            return self.settle(now, "link lost")
        if self.check is None:  # nothing to probe: the link is all there is to know
            self.known = True
            self.reachable = True
            return self.settle(now, "link back" if not first else "link up")
        return None

    def news(self) -> Transition | None:
        """The change of the known state since the last news (from `unknown` at first), once."""
        if not self.known or self.state == self.announced:
            return None
        transition = Transition(self.name, self.announced, self.state, self.reason)
        self.announced = self.state
        return transition

    def review(self, now: float) -> Transition | None:
        """Re-decide without new input: a suppression that has just expired lets the uplink up."""
        return self.settle(now, None)

    # -- derived values ----------------------------------------------------------------

    def current_penalty(self, now: float) -> float:
        return float(self.penalty * 0.5 ** ((now - self.penalty_at) / HALF_LIFE))

    def reuse_in(self, now: float) -> float | None:
        """Seconds until a suppressed uplink may come back, None when not suppressed."""
        if not self.suppressed:
            return None
        penalty = self.current_penalty(now)
        return max(0.0, HALF_LIFE * math.log2(penalty / REUSE)) if penalty > REUSE else 0.0

    def loss(self) -> float | None:
        if not self.window:
            return None
        return sum(result is None for result in self.window) / len(self.window)

    def rtt(self) -> float | None:
        answered = [result for result in self.window if result is not None]
        return sum(answered) / len(answered) if answered else None

    def snapshot(self) -> Snapshot:
        return Snapshot(self.state, self.since, self.rtt(), self.loss(), self.transitions, self.suppressed)

    # -- the machine -------------------------------------------------------------------

    def become_unreachable(self, now: float) -> None:
        self.reachable = False
        self.successes = 0
        self.penalty = min(MAX_PENALTY, self.current_penalty(now) + 1.0)
        self.penalty_at = now
        if self.penalty >= SUPPRESS:
            self.suppressed = True

    def settle(self, now: float, reason: str | None) -> Transition | None:
        """Move to the state the inputs now call for; a Transition if that changed anything."""
        if self.suppressed and self.current_penalty(now) < REUSE:
            self.suppressed = False
        if reason:
            self.reason = reason
        if not self.reachable or self.suppressed:
            wanted: State = "down" if self.known or self.state != "unknown" else "unknown"
        elif self.state in ("down", "unknown"):
            wanted = "up"
            reason = reason or "flap damping over"
            self.window.clear()  # the failures that took it down say nothing about its quality now
        else:
            wanted = self.quality(self.state)
            reason = self.quality_text()
        if wanted == self.state:
            return None
        transition = Transition(self.name, self.state, wanted, reason or "")
        self.reason = transition.reason
        self.transitions += self.state != "unknown"  # learning the first state is no change of the uplink
        self.state = wanted
        self.since = time.time()
        return transition

    def quality(self, current: State) -> State:
        """up or degraded from the window; leaving degraded needs the `RECOVER` margin."""
        check = self.check
        if check is None or (check.max_loss is None and check.max_rtt is None) or len(self.window) < MIN_WINDOW:
            return current
        margin = RECOVER if current == "degraded" else 1.0
        loss, rtt = self.loss() or 0.0, self.rtt()
        bad = (check.max_loss is not None and loss > check.max_loss * margin) or (
            check.max_rtt is not None and rtt is not None and rtt > check.max_rtt * margin
        )
        return "degraded" if bad else "up"

    def quality_text(self) -> str:
        loss, rtt = self.loss(), self.rtt()
        parts = [f"loss {loss:.0%}" if loss is not None else "no results"]
        if rtt is not None:
            parts.append(f"rtt {rtt * 1000:.0f} ms")
        return " ".join(parts) + f" over the last {len(self.window)} probes"
