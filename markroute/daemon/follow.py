"""Following the uplinks' readiness: waiting uplinks, learned next hops, and what changed between two looks.

The daemon looks at the kernel (`kernel.gateways.survey`) at start and after every
burst of netlink events. A DHCP client renews its lease every few seconds with an
`ip addr change`, which changes nothing markroute depends on: two equal surveys mean
there is nothing to do (`Follower.observe` returns None) and no apply runs. Otherwise
the news says which uplinks began or stopped waiting and which ready uplinks now use
another next hop (a new lease, a new router address), so the daemon can act on all of
it in one step: the routes and `from ADDRESS` rules by one apply, the chains by one
failover transaction, the probes by a fresh monitor aimed at the new gateway from the
new address.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from markroute.daemon.health import Snapshot, State, Transition, UplinkHealth
from markroute.daemon.monitor import OnTransition, UplinkMonitor, probe_targets
from markroute.daemon.reactor import Reactor
from markroute.kernel.gateways import Survey, describe
from markroute.model import Uplink

NextHops = dict[int, str | None]  # IP version -> next hop (None: on-link)


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
        return self.survey.waiting if self.survey is not None else {}

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
        old = before.uplinks if before is not None else {}
        news = News()
        ready: list[str] = []
        for name, now in survey.uplinks.items():
            was = old.get(name)
            if now.reason is not None:
                if was is None or was.reason != now.reason:
                    news.waiting[name] = now.reason
                continue
            hops = dict(now.ready)
            if was is not None and was.reason is not None:
                ready.append(name)
            if name in self.known and self.known[name] != hops:
                news.moved[name] = (self.known[name], hops)
            self.known[name] = hops
        return News(news.waiting, tuple(ready), news.moved)


def shown(snapshot: Snapshot, waiting: str | None) -> Snapshot:
    """What status and metrics show: a waiting uplink as waiting, whatever its (stopped) probes last said."""
    return snapshot if waiting is None else replace(snapshot, state="waiting")


def hops_text(hops: NextHops) -> str:
    """`10.0.0.1, fe80::1` or `dev` for on-link, `none` when there is none."""
    return ", ".join(hop or "on-link" for _, hop in sorted(hops.items())) or "none"


def waiting_transition(name: str, state: State, reason: str) -> Transition:
    return Transition(name, state, "waiting", describe(reason))


def back_transition(name: str, old: State, hops: NextHops, moved: tuple[NextHops, NextHops] | None) -> Transition:
    """An uplink ready again, or moved to another next hop: up (probes decide from here), and why.

    A gateway change says both values, `gateway 10.0.0.1 -> 10.1.0.1`: it is logged
    and handed to `on_change` once, whatever happened in between.
    """
    reason = f"gateway {hops_text(moved[0])} -> {hops_text(moved[1])}" if moved else f"ready via {hops_text(hops)}"
    return Transition(name, old, "up", reason)


def fresh_monitor(reactor: Reactor, uplink: Uplink, old: UplinkMonitor, hops: NextHops,
                  on_transition: OnTransition) -> UplinkMonitor:
    """A monitor for an uplink that is ready again or moved: probes aimed at its next hops now, health up.

    Its earlier results were about another gateway or none at all, so they are not
    kept; only the count of transitions carries over (status shows it).
    """
    old.stop()
    check, targets = probe_targets(uplink, hops)
    health = UplinkHealth(uplink.name, check if targets else None, transitions=old.health.transitions)
    return UplinkMonitor(reactor, uplink, health, on_transition, hops)
