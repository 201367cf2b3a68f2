"""Moving a dead uplink's connections on a router of an HA pair: only the master's are its own.

Deleting connections is how the daemon moves a dead uplink's flows (`failover.move_flows`),
and conntrackd replicates every deletion to the peer's external cache. That is right on
the master: its connections are the pair's, and the flows come back as new connections
through a healthy uplink, replicated in turn. On a router that is not master the
entries it holds are stale copies (or the peer's own, committed before a failback), and
a router that loses LAN and WAN but keeps the sync link would, by deleting them, erase
the very copy its peer is about to commit (issue #17: the peer committed 0 entries).

So with `settings.ha` the deletion waits `SETTLE` seconds (keepalived sees the same link
going down and its notify hook, `markroute ha fault`, records the role in that time) and
then happens only if the role `markroute ha` recorded is master; otherwise the entries
are left to conntrackd (the fault hook's `conntrackd -t` purges them later).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Mapping

from markroute.daemon.failover import move_flows
from markroute.daemon.reactor import Reactor
from markroute.kernel import KernelError, ha

#: Seconds between an uplink going down and the role check (the hook's start-up fits easily).
SETTLE = 1.5


def move_when_master(
    reactor: Reactor,
    names: Collection[str],
    marks: Mapping[str, int],
    mask: int,
    still_down: Callable[[str], bool],
    netns: str | None,
    log: logging.Logger,
) -> None:
    """After SETTLE: delete the connections of NAMES still down, if this router is master."""

    def later() -> None:
        gone = sorted(name for name in names if still_down(name))
        if not gone:
            return
        try:
            record = ha.load(netns)
            if record is None or record.role != "master":
                role = record.role if record else "not yet told its role"
                log.info("flows of %s left alone: this router is %s (conntrackd keeps the peer's copy)",
                         ", ".join(gone), role)
                return
            move_flows((marks[name] for name in gone), mask)
            log.info("flows of %s moved (master)", ", ".join(gone))
        except KernelError as exc:
            log.error("cannot move the flows of %s: %s", ", ".join(gone), exc)

    reactor.call_later(SETTLE, later)
