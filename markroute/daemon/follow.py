"""Following the uplinks' readiness: waiting uplinks, learned next hops, and what changed between two looks.

The daemon looks at the kernel (`kernel.gateways.survey`) at start and after every
burst of netlink events. A DHCP client renews its lease every few seconds with an
`ip addr change`, which changes nothing markroute depends on: two equal surveys mean
there is nothing to do (`Follower.observe` returns None) and no apply runs. Otherwise
the news says which uplinks began or stopped waiting (a missing or down interface is
not waiting here: the link is lost, and the health machine takes the uplink down with
flap damping, as for any link) and which ready uplinks now use
another next hop (a new lease, a new router address), so the daemon can act on all of
it in one step: the routes and `from ADDRESS` rules by one apply, the chains by one
failover transaction, the probes by a fresh monitor aimed at the new gateway from the
new address.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from markroute.daemon.monitor import OnTransition, UplinkMonitor, probe_targets
from markroute.daemon.reactor import Reactor
from markroute.daemon.uplinkstate import Snapshot, State, Transition, UplinkHealth
from markroute.kernel.gateways import Survey, describe

NextHops = dict[int, str | None]  # IP version -> next hop (None: on-link)
#: A missing or down interface is a lost link: the health machine takes the uplink down, with flap damping.
LINK_REASONS = (None, "interface-missing", "interface-down")


@dataclass(frozen=True)
class News:
    """What changed since the last survey."""

    waiting: dict[str, str] = field(default_factory=dict)  # uplink -> reason word: began (or goes on) waiting
    ready: tuple[str, ...] = ()  # uplinks that stopped waiting
    moved: dict[str, tuple[NextHops, NextHops]] = field(default_factory=dict)  # ready uplink -> (old, new) next hops


class Follower:
    """The last survey the daemon acted on."""

    def __init__(self) -> None:
        self.survey: Survey | None = None
        self.known: dict[str, NextHops] = {}  # the last next hops each uplink was ready with
        self.stale = False  # the next survey is news even if it equals this one

    @property
    def waiting(self) -> dict[str, str]:
        """Uplinks out of use until the kernel has what they need; a lost link is the health machine's."""
        if self.survey is None:
            return {}
        return {name: reason for name, reason in self.survey.waiting.items() if reason not in LINK_REASONS}

    def reason(self, uplink: str) -> str | None:
        readiness = self.survey.uplinks.get(uplink) if self.survey is not None else None
        return readiness.reason if readiness is not None else None

    def next_hops(self, uplink: str) -> NextHops:
        """The next hops the uplink's default routes use now (learned or fixed)."""
        readiness = self.survey.uplinks.get(uplink) if self.survey is not None else None
        return dict(readiness.ready) if readiness is not None else {}

    def forget(self) -> None:
        """Make the next survey news even if it equals this one (after a failed apply, lost events)."""
        self.stale = True

    def observe(self, survey: Survey) -> News | None:
        """Take SURVEY as the current view; None when it equals the last one, else what changed.

        A ready uplink whose next hops differ from the last ones it was ready with has
        moved, even if it waited in between (a lease renumbered in two steps).
        """
        before, self.survey = self.survey, survey
        if before == survey and not self.stale:
            return None
        self.stale = False
        old = {name: reason for name, reason in before.waiting.items() if reason not in LINK_REASONS} if before else {}
        news = News()
        ready: list[str] = []
        for name, now in survey.uplinks.items():
            reason = now.reason if now.reason not in LINK_REASONS else None
            if reason is not None:
                if old.get(name) != reason:
                    news.waiting[name] = reason
                continue
            if name in old:
                ready.append(name)
            hops = dict(now.ready)
            if hops and name in self.known and self.known[name] != hops:
                news.moved[name] = (self.known[name], hops)
            if hops:
                self.known[name] = hops
        return News(news.waiting, tuple(ready), news.moved)


def shown(snapshot: Snapshot, waiting: str | None) -> Snapshot:
    """What status and metrics show: a waiting uplink as waiting, whatever its (stopped) probes last said."""
    return snapshot if waiting is None else replace(snapshot, state="waiting")


def hops_text(hops: NextHops) -> str:
    """`10.0.0.1, fe80::1`, `on-link` for a device route, `none` when there is none."""
    return ", ".join(hop or "on-link" for _, hop in sorted(hops.items())) or "none"


def waiting_transition(name: str, state: State, reason: str) -> Transition:
    return Transition(name, state, "waiting", describe(reason))


def back_transition(monitor: UplinkMonitor, old: State, follower: Follower,
                    moved: tuple[NextHops, NextHops] | None) -> Transition:
    """An uplink that stopped waiting, or moved to another next hop, now in its monitor's state, and why.

    A gateway change says both values, `gateway 10.0.0.1 -> 10.1.0.1`: it is logged
    and handed to `on_change` once, whatever happened in between.
    """
    name = monitor.uplink.name
    hops = follower.next_hops(name)
    if moved:
        reason = f"gateway {hops_text(moved[0])} -> {hops_text(moved[1])}"
    elif hops:
        reason = f"ready via {hops_text(hops)}"
    else:
        reason = describe(follower.reason(name) or "")
    return Transition(name, old, monitor.health.state, reason)


def resume(reactor: Reactor, monitor: UplinkMonitor, hops: NextHops, moved: bool, usable: bool,
           on_transition: OnTransition) -> UplinkMonitor:
    """The monitor of an uplink that stopped waiting or moved, probing again.

    The same monitor, health and flap damping included, when it probes the same
    targets or has no next hop at all (its interface is missing or down: the link is
    lost, and it stays down until it answers again); a fresh one aimed at the new next
    hops otherwise, since earlier results were about another gateway or none at all.
    Only the count of transitions carries over, and the fresh health starts from the
    link's state (USABLE).
    """
    monitor.stop()
    check, targets = probe_targets(monitor.uplink, hops)
    if not moved and (targets == monitor.targets or not hops):
        resumed = monitor
    else:
        health = UplinkHealth(monitor.uplink.name, check if targets else None, transitions=monitor.health.transitions)
        health.announced = monitor.health.announced  # `on_change` already heard of the state it carries on from
        health.link(usable, reactor.now())
        resumed = UplinkMonitor(reactor, monitor.uplink, health, on_transition, monitor.on_news, hops)
    resumed.start(None)
    return resumed
