"""Probing one uplink on a fixed schedule and feeding the results to its `UplinkHealth`.

Every `check.interval` a round starts: one probe to each target, all with the same
token. The `check.min_up`-th target to answer (the first, by default) settles the round
as a success with that RTT; if fewer answer within `check.timeout` (or fewer probes
could even be sent) it is a failure. k of n targets make one dead target (a resolver
under maintenance) harmless while a dead path still fails every round. Rounds
overlap when the timeout is longer than the interval, so a dead uplink is noticed
`(down - 1) * interval + timeout` after its first lost probe, whatever the RTT was.
Results count in the order the rounds were sent: an answered round waits (at most
`timeout`) for the earlier rounds still in flight, so `down` lost rounds in a row are
`down` failures in a row even when later rounds were answered before the earlier ones
timed out (they used to reset the count in between: 7 lost rounds in a row with the
fast profile of 15 ms / 45 ms never took an uplink down).

What is probed when the config says nothing (`targets`) is the method's business
(`markroute.probes`): `icmp` (the default) probes the uplink's gateway(s), for
`gateway: auto` the learned ones, `arp` its IPv4 gateway, `tcp` nothing. An uplink
with no targets (a point-to-point link without gateway, say) is not probed at all:
its link state, followed through netlink, is its health.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from markroute.daemon.reactor import Reactor, Timer
from markroute.daemon.uplinkstate import Transition, UplinkHealth
from markroute.model import HealthCheck, Uplink
from markroute.probes import METHODS, default_targets
from markroute.probes.method import Egress, Prober

OnTransition = Callable[[Transition], None]


@dataclass
class Round:
    """One round in flight: the targets that answered it so far, and its result once settled."""

    answers: set[str] = field(default_factory=set)
    settled: bool = False
    rtt: float | None = None  # the settling answer's RTT; None: the round failed


def probe_targets(uplink: Uplink, learned: Mapping[int, str | None] | None = None) -> tuple[HealthCheck, tuple[str, ...]]:
    """The check an uplink gets (its own or the defaults) and what it probes; () means link state only.

    A `gateway: auto` is probed at the next hop learned from the kernel (LEARNED: IP
    version -> next hop), so the targets move with it.
    """
    check = uplink.check or HealthCheck()
    method = METHODS[check.method]
    targets = check.targets or default_targets(method, uplink, learned)
    return check, tuple(method.canonical(target) for target in targets)


class UplinkMonitor:
    def __init__(self, reactor: Reactor, uplink: Uplink, health: UplinkHealth, on_transition: OnTransition,
                 on_news: OnTransition, learned: Mapping[int, str | None] | None = None) -> None:
        self.reactor = reactor
        self.uplink = uplink
        self.health = health
        self.on_transition = on_transition  # the rules must follow
        self.on_news = on_news  # the known state changed (`UplinkHealth.news`): on_change
        self.check, self.targets = probe_targets(uplink, learned)
        self.method = METHODS[self.check.method]
        self.probers: dict[str, Prober] = {}
        self.egress: Egress | None = None
        self.rounds: dict[int, Round] = {}  # token -> round, in the order they were sent
        self.token = 0
        self.next_round = 0.0
        self.ticker: Timer | None = None
        self.review: Timer | None = None

    @property
    def probed(self) -> bool:
        return bool(self.targets)

    @property
    def bytes_per_day(self) -> int | None:
        """Probe traffic both ways at the configured rate: what a metered link pays for its checks."""
        if not self.probed:
            return None
        per_round = sum(self.method.probe_bytes(target) for target in self.targets)
        return round(per_round * 86400 / self.check.interval)

    def start(self, egress: Egress | None) -> None:
        """Begin probing through EGRESS (None: the interface does not exist right now)."""
        self.rebind(egress)
        if self.probed:
            self.next_round = self.reactor.now()
            self.ticker = self.reactor.call_at(self.next_round, self.tick)

    def stop(self) -> None:
        for timer in (self.ticker, self.review):
            if timer is not None:
                timer.cancel()
        self.close_probers()

    def rebind(self, egress: Egress | None) -> None:
        """New probe sockets when the interface, its index or its addresses changed."""
        if egress == self.egress and (self.probers or not self.probed):
            return
        self.close_probers()
        self.egress = egress
        if egress is None or not self.probed:
            return
        for target in self.targets:
            key = self.prober_key(target)
            if key not in self.probers:
                try:
                    self.probers[key] = self.make_prober(egress, key)
                except OSError:
                    continue  # no address of that family yet: those targets fail until one appears

    def prober_key(self, target: str) -> str:
        return self.method.prober_key(target)

    def make_prober(self, egress: Egress, key: str) -> Prober:
        return self.method.open_prober(self.reactor, egress, key, self.answered, self.check)

    def close_probers(self) -> None:
        for prober in self.probers.values():
            prober.close()
        self.probers.clear()
        self.rounds.clear()

    # -- rounds ------------------------------------------------------------------------

    def tick(self) -> None:
        now = self.reactor.now()
        self.next_round += self.check.interval
        if self.next_round <= now:  # the loop was held up: skip the missed rounds, keep the rhythm
            self.next_round = now + self.check.interval
        self.ticker = self.reactor.call_at(self.next_round, self.tick)
        self.token = (self.token + 1) & 0xFFFF
        token = self.token
        sent = 0
        for target in self.targets:
            prober = self.probers.get(self.prober_key(target))
            if prober is None:
                continue
            try:
                prober.send(target, token)
                sent += 1
            except OSError:
                continue
        self.rounds[token] = Round()
        if sent < self.check.min_up:
            self.settle(token, None)
            return
        self.reactor.call_at(now + self.check.timeout, lambda: self.expired(token))

    def answered(self, target: str, token: int, rtt: float) -> None:
        round_ = self.rounds.get(token)
        if round_ is None or round_.settled:
            return
        round_.answers.add(target)
        if len(round_.answers) >= self.check.min_up:
            self.settle(token, rtt)

    def expired(self, token: int) -> None:
        self.settle(token, None)

    def settle(self, token: int, rtt: float | None) -> None:
        """A round's `min_up`-th answer (RTT) or its timeout (None); later news of it is ignored.
        Settled rounds are reported in the order they were sent (module doc)."""
        round_ = self.rounds.get(token)
        if round_ is None or round_.settled:
            return
        round_.settled, round_.rtt = True, rtt
        self.forget(token)
        while self.rounds:
            oldest = next(iter(self.rounds))
            done = self.rounds[oldest]
            if not done.settled:
                return
            del self.rounds[oldest]
            self.report(self.health.probe(done.rtt is not None, done.rtt, self.reactor.now()))

    def forget(self, token: int) -> None:
        for target in self.targets:
            prober = self.probers.get(self.prober_key(target))
            if prober is not None:
                prober.forget(target, token)

    # -- link state --------------------------------------------------------------------

    def link(self, usable: bool) -> None:
        self.report(self.health.link(usable, self.reactor.now()))

    def report(self, transition: Transition | None) -> None:
        if transition is not None:
            self.on_transition(transition)
        news = self.health.news()
        if news is not None:
            self.on_news(news)
        wait = self.health.reuse_in(self.reactor.now())
        if wait is not None and self.review is None:
            self.review = self.reactor.call_later(wait + 0.01, self.reviewed)

    def reviewed(self) -> None:
        self.review = None
        self.report(self.health.review(self.reactor.now()))
