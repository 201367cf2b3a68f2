"""A small single-threaded event loop: sockets that became readable or writable, and timers.

The daemon keeps every probe, the netlink listener and the signal wake-up in one
thread, so a state change is decided in one place and never races with another one.
asyncio is not used because pyroute2's synchronous API (the kernel layer's) starts its
own event loop and refuses to run inside a running one.

Readable sockets are always handled before due timers in the same turn: a probe answer
that arrived while the loop was busy (an `nft` run, an apply) is counted before that
probe's timeout fires, and the kernel receive timestamp keeps its RTT right.

An exception escaping a callback goes to `on_error` and the loop goes on: one failed
step must not stop the probing of every uplink.
"""

from __future__ import annotations

import heapq
import itertools
import selectors
import time
from collections.abc import Callable
from typing import Any

Callback = Callable[[], None]


class Timer:
    """A scheduled call; `cancel` makes it a no-op."""

    __slots__ = ("when", "callback", "cancelled")

    def __init__(self, when: float, callback: Callback) -> None:
        self.when = when
        self.callback = callback
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class Reactor:
    def __init__(self, on_error: Callable[[Exception], None]) -> None:
        self.on_error = on_error
        self.selector = selectors.DefaultSelector()
        self.timers: list[tuple[float, int, Timer]] = []
        self.order = itertools.count()
        self.running = False

    @staticmethod
    def now() -> float:
        return time.monotonic()

    def watch(self, fileobj: Any, events: int, callback: Callback) -> None:
        """Call CALLBACK whenever FILEOBJ is ready for EVENTS (selectors.EVENT_READ/EVENT_WRITE)."""
        self.selector.register(fileobj, events, callback)

    def unwatch(self, fileobj: Any) -> None:
        try:
            self.selector.unregister(fileobj)
        except (KeyError, ValueError):
            pass

    def call_at(self, when: float, callback: Callback) -> Timer:
        timer = Timer(when, callback)
        heapq.heappush(self.timers, (when, next(self.order), timer))
        return timer

    def call_later(self, delay: float, callback: Callback) -> Timer:
        return self.call_at(self.now() + delay, callback)

    def stop(self) -> None:
        self.running = False

    def run(self) -> None:
        """Serve sockets and timers until `stop`."""
        self.running = True
        while self.running:
            self.turn()

    def turn(self) -> None:
        """One round: wait until something is due, run ready sockets, then due timers."""
        timeout = None
        while self.timers and self.timers[0][2].cancelled:
            heapq.heappop(self.timers)
        if self.timers:
            timeout = max(0.0, self.timers[0][0] - self.now())
        for key, _ in self.selector.select(timeout):
            if self.selector.get_map().get(key.fd) is key:  # not unwatched by an earlier callback
                self.call(key.data)
        now = self.now()
        while self.timers and self.timers[0][0] <= now:
            _, _, timer = heapq.heappop(self.timers)
            if not timer.cancelled:
                self.call(timer.callback)

    def call(self, callback: Callback) -> None:
        try:
            callback()
        except Exception as exc:  # noqa: BLE001 (reported, and the loop must go on)
            self.on_error(exc)
