"""Following the kernel: links, addresses and main's routes, as netlink reports them.

One pyroute2 `IPRSocket` bound to the link, address and route multicast groups; it is
select()-able, so it lives in the daemon's reactor and an event is handled the moment
it arrives (no polling). What the daemon is told:

* `on_link(interface, usable)`: an interface changed; usable means administratively
  up with carrier, None means it no longer exists. A link that stops being usable
  takes its uplink down at once, before any probe could notice.
* `on_change()`: something `apply` derives from the running system may have changed:
  an address (DHCP renewed with another one), a connected route of main, a default
  route in any table (the next hop of a `gateway: auto` uplink), an interface that
  came back. The daemon answers with a resync (`apply` of the installed plan).
* `on_removed([(port, what), ...])`: someone removed markroute's own ip rules or
  routes (`markroute.daemon.churn`); the daemon puts them back with a resync.

If the socket's receive buffer overflowed (a burst of thousands of route changes),
events were lost: the socket is opened again and `on_lost()` asks the daemon to read
the whole state afresh.
"""

from __future__ import annotations

import selectors
from collections.abc import Callable
from typing import Any

from markroute.daemon import churn
from markroute.daemon.reactor import Reactor
from markroute.kernel.ipjson import RT_TABLE_MAIN, table_of
from markroute.kernel.links import IFF_LOWER_UP, IFF_UP
from markroute.plan import RULE_PROTOCOL

RTMGRP_LINK = 0x1
RTMGRP_IPV4_IFADDR = 0x10
RTMGRP_IPV4_ROUTE = 0x40
RTMGRP_IPV6_IFADDR = 0x100
RTMGRP_IPV6_ROUTE = 0x400
RTMGRP_IPV4_RULE = 0x80
RTMGRP_IPV6_RULE = 1 << (19 - 1)  # RTNLGRP_IPV6_RULE has no legacy RTMGRP_ constant
GROUPS = (RTMGRP_LINK | RTMGRP_IPV4_IFADDR | RTMGRP_IPV4_ROUTE | RTMGRP_IPV6_IFADDR | RTMGRP_IPV6_ROUTE
          | RTMGRP_IPV4_RULE | RTMGRP_IPV6_RULE)


class LinkWatcher:
    def __init__(
        self,
        reactor: Reactor,
        on_link: Callable[[str, bool | None], None],
        on_change: Callable[[], None],
        on_lost: Callable[[], None],
        on_removed: Callable[[list[tuple[int, str]]], None] | None = None,
    ) -> None:
        self.reactor = reactor
        self.on_link = on_link
        self.on_change = on_change
        self.on_lost = on_lost
        self.on_removed = on_removed
        self.socket: Any = None
        self.open()

    def open(self) -> None:
        from pyroute2 import IPRSocket

        self.socket = IPRSocket()
        self.socket.bind(groups=GROUPS)
        self.reactor.watch(self.socket, selectors.EVENT_READ, self.readable)

    def close(self) -> None:
        if self.socket is not None:
            self.reactor.unwatch(self.socket)
            self.socket.close()
            self.socket = None

    def readable(self) -> None:
        try:
            messages = self.socket.get()
        except OSError:  # ENOBUFS: the kernel dropped events
            self.close()
            self.open()
            self.on_lost()
            return
        changed = False
        gone: list[tuple[int, str]] = []
        for message in messages:
            event = message.get("event")
            what = churn.removed(message) if event in ("RTM_DELRULE", "RTM_DELROUTE") else None
            if what is not None:
                gone.append((message["header"]["pid"], what))
                continue
            if event in ("RTM_NEWLINK", "RTM_DELLINK"):
                name = message.get_attr("IFLA_IFNAME")
                if name is None:
                    continue
                if event == "RTM_DELLINK":
                    self.on_link(name, None)
                else:
                    flags = message["flags"]
                    self.on_link(name, bool(flags & IFF_UP and flags & IFF_LOWER_UP))
            elif event in ("RTM_NEWADDR", "RTM_DELADDR"):
                changed = True
            elif event in ("RTM_NEWROUTE", "RTM_DELROUTE"):
                # markroute's own routes change only through apply; main's decide the copies, and
                # default routes in any table give `gateway: auto` uplinks their next hop.
                ours = message["proto"] == RULE_PROTOCOL
                changed |= not ours and (table_of(message, "RTA_TABLE") == RT_TABLE_MAIN or message["dst_len"] == 0)
        if gone and self.on_removed is not None:
            self.on_removed(gone)
        if changed:
            self.on_change()
