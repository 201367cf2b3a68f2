"""Domain sets filled by `markroute run` itself (`settings.dns: markroute`, the default).

Without a resolver of ours on the path, the daemon asks a DNS server (`dns_server`, else
the first `nameserver` of /etc/resolv.conf) for each listed name's A and AAAA records,
adds the addresses to the set's halves with the set's element lifetime, and asks again
when the answer's TTL runs out (at least every `MIN_REFRESH` s, at most every
`MAX_REFRESH` s; a failed query is retried after `RETRY` s). Each answer renews the
lifetime of the addresses in it; an address the name no longer resolves to ages out.
Only the names listed are asked for, not names below them: nobody tells the daemon
which those are.

The queries run in a thread of their own: a slow or dead DNS server never delays a
failover in the daemon's loop. The thread inherits the daemon's network namespace.
"""

from __future__ import annotations

import heapq
import logging
import threading
import time
from pathlib import Path

from markroute.kernel import KernelError, dynsets
from markroute.kernel.dnswire import DnsError, resolve
from markroute.model import Model
from markroute.values import parse_address

TABLE = "markroute"
MIN_REFRESH = 5.0
MAX_REFRESH = 3600.0
RETRY = 30.0
RESOLV_CONF = Path("/etc/resolv.conf")


def default_server() -> str | None:
    """The first nameserver of /etc/resolv.conf, or None."""
    try:
        lines = RESOLV_CONF.read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        words = line.split()
        if len(words) >= 2 and words[0] == "nameserver":
            return words[1].split("%")[0]
    return None


class DomainResolver:
    """Keeps the domain sets of the current model filled; `update` on (re)load, `stop` at exit."""

    def __init__(self, log: logging.Logger) -> None:
        self.log = log
        self.lock = threading.Condition()
        self.names: dict[str, str] = {}  # domain -> set name
        self.server: str | None = None
        self.due: list[tuple[float, str]] = []
        self.thread: threading.Thread | None = None
        self.stopped = False

    def update(self, model: Model) -> None:
        """Resolve the model's domain names from now on (all of them at once, then by TTL)."""
        wanted = {}
        if model.settings.dns == "markroute":
            wanted = {domain: name for name, s in model.dynamic_sets.items() for domain in s.domains}
        with self.lock:
            self.names = wanted
            self.server = model.settings.dns_server or default_server()
            self.due = [(0.0, domain) for domain in wanted]
            heapq.heapify(self.due)
            self.lock.notify()
        if wanted and self.server is None:
            self.log.warning("domain sets: no DNS server (set dns_server or a nameserver in /etc/resolv.conf)")
        if wanted and self.thread is None:
            self.thread = threading.Thread(target=self.serve, name="markroute-domains", daemon=True)
            self.thread.start()

    def stop(self) -> None:
        with self.lock:
            self.stopped = True
            self.lock.notify()
        if self.thread is not None:
            self.thread.join(timeout=5)

    def serve(self) -> None:
        while True:
            with self.lock:
                while not self.stopped and (not self.due or self.due[0][0] > time.monotonic()):
                    self.lock.wait(timeout=self.due[0][0] - time.monotonic() if self.due else None)
                if self.stopped:
                    return
                _, domain = heapq.heappop(self.due)
                set_name, server = self.names.get(domain), self.server
            if set_name is None or server is None:
                continue
            delay = self.refresh(server, domain, set_name)
            with self.lock:
                if self.names.get(domain) == set_name:
                    heapq.heappush(self.due, (time.monotonic() + delay, domain))

    def refresh(self, server: str, domain: str, set_name: str) -> float:
        """Resolve DOMAIN and add its addresses to SET_NAME; seconds until it is due again."""
        ttls: list[int] = []
        elements = []
        problems: list[str] = []
        for version in (4, 6):  # one family's failure (a server refusing AAAA) keeps the other's answers
            try:
                answers = resolve(server, domain, version)
            except DnsError as exc:
                problems.append(f"{'A' if version == 4 else 'AAAA'}: {exc}")
                continue
            elements += [parse_address(answer.address) for answer in answers]
            ttls += [answer.ttl for answer in answers]
        try:
            if elements:
                dynsets.change(TABLE, set_name, elements, None, remove=False)
        except KernelError as exc:
            problems.append(str(exc))
        if problems and not ttls:
            self.log.warning("domain set %s: %s: %s; again in %g s", set_name, domain, "; ".join(problems), RETRY)
            return RETRY
        self.log.debug("domain set %s: %s -> %d addresses", set_name, domain, len(elements))
        return min(max(float(min(ttls)), MIN_REFRESH), MAX_REFRESH)
