"""The monitor's rounds on a virtual clock: overlapping rounds, timeouts, how soon a dead uplink is down.

A round starts every `interval`; with the fast profile (15 ms, timeout 30 ms) two or three rounds
are in flight at once, and a round answered late or not at all must fail on its own even
when later rounds were answered before its timeout. No sockets and no sleeping: the
reactor here runs timers in the order of a virtual clock, and the prober answers (or not)
after a fixed RTT, so the times asserted are exact.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable

from markroute.daemon.monitor import UplinkMonitor
from markroute.daemon.reactor import Timer
from markroute.daemon.uplinkstate import Transition, UplinkHealth
from markroute.diagnostics import Where
from markroute.model import HealthCheck, Uplink
from markroute.probes.method import Egress

FAST = HealthCheck(interval=0.015, timeout=0.03, down=7, up=10)  # README's fast profile
RTT = 0.002


class Clock:
    """The part of `Reactor` a monitor uses, on a virtual clock."""

    def __init__(self) -> None:
        self.time = 0.0
        self.timers: list[tuple[float, int, Timer]] = []
        self.order = itertools.count()

    def now(self) -> float:
        return self.time

    def call_at(self, when: float, callback: Callable[[], None]) -> Timer:
        timer = Timer(when, callback)
        heapq.heappush(self.timers, (when, next(self.order), timer))
        return timer

    def call_later(self, delay: float, callback: Callable[[], None]) -> Timer:
        return self.call_at(self.time + delay, callback)

    def run_until(self, end: float) -> None:
        while self.timers and self.timers[0][0] <= end:
            when, _, timer = heapq.heappop(self.timers)
            self.time = when
            if not timer.cancelled:
                timer.callback()
        self.time = end


class Path:
    """A prober whose probes are answered after RTT unless `lost(send time, round number)` says otherwise."""

    def __init__(self, clock: Clock, lost: Callable[[float, int], bool]) -> None:
        self.clock = clock
        self.lost = lost
        self.sent: list[float] = []
        self.monitor: UplinkMonitor | None = None

    def send(self, target: str, token: int) -> None:
        self.sent.append(self.clock.time)
        if not self.lost(self.clock.time, len(self.sent)):
            monitor = self.monitor
            assert monitor is not None
            self.clock.call_later(RTT, lambda: monitor.answered(target, token, RTT))

    def forget(self, target: str, token: int) -> None:
        pass

    def close(self) -> None:
        pass


def monitored(lost: Callable[[float, int], bool]) -> tuple[Clock, Path, list[tuple[float, Transition]]]:
    clock = Clock()
    path = Path(clock, lost)
    uplink = Uplink("isp", "eth0", Where("x", 1, 1), 0x100, 100, gateway="192.0.2.1", check=FAST)
    seen: list[tuple[float, Transition]] = []
    monitor = UplinkMonitor(clock, uplink, UplinkHealth("isp", FAST, state="unknown"), lambda t: seen.append((clock.time, t)),
                            lambda t: None)  # type: ignore[arg-type]
    monitor.make_prober = lambda egress, key: path  # type: ignore[method-assign]
    path.monitor = monitor
    monitor.start(Egress("eth0", 2, 0x100, sources={4: "192.0.2.2"}))
    return clock, path, seen


def test_a_dead_path_is_down_down_minus_one_intervals_plus_the_timeout_after_its_first_lost_probe() -> None:
    died = 1.0003
    clock, path, seen = monitored(lambda at, _: at >= died)
    clock.run_until(2.0)
    assert [(t.old, t.new) for _, t in seen] == [("unknown", "up"), ("up", "down")]
    first_lost = min(at for at in path.sent if at >= died)
    declared = seen[-1][0]
    assert abs(declared - (first_lost + (FAST.down - 1) * FAST.interval + FAST.timeout)) < 1e-9
    assert declared - died <= FAST.interval + (FAST.down - 1) * FAST.interval + FAST.timeout + 1e-9  # 150 ms
    assert len(path.sent) == round(2.0 / FAST.interval) + 1, "one round every interval, none skipped"


def test_each_overlapping_round_fails_on_its_own_and_only_a_run_of_down_failures_takes_the_uplink_down() -> None:
    every_other = monitored(lambda at, number: at > 0.5 and number % 2 == 0)
    every_other[0].run_until(3.0)
    assert [(t.old, t.new) for _, t in every_other[2]] == [("unknown", "up")], "half the rounds lost: still up"
    six = monitored(lambda at, number: 100 <= number < 100 + FAST.down - 1)
    six[0].run_until(3.0)
    assert [(t.old, t.new) for _, t in six[2]] == [("unknown", "up")], "six lost in a row: still up"
    seven = monitored(lambda at, number: 100 <= number < 100 + FAST.down)
    seven[0].run_until(3.0)
    assert [(t.old, t.new) for _, t in seven[2]][:2] == [("unknown", "up"), ("up", "down")]
    assert abs(seven[2][1][0] - (seven[1].sent[99] + (FAST.down - 1) * FAST.interval + FAST.timeout)) < 1e-9
