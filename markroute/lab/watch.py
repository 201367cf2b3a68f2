"""Reading a lab namespace's addresses and default routes, and waiting for them to change.

DHCP clients and router advertisements change a namespace's state on their
own schedule, so tests wait for the state they expect instead of sleeping:
:func:`wait_until` polls with a bounded timeout and fails with what it last
saw, which is what a failing test needs to show.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any, TypeVar

from markroute.lab.netns import Lab, LabError

T = TypeVar("T")

_POLL_SECONDS = 0.1


def wait_until(
    check: Callable[[], T | None],
    timeout: float,
    what: str,
    seen: Callable[[], object] | None = None,
) -> T:
    """Call *check* until it returns something other than None; return that.

    Raises LabError after *timeout* seconds, naming *what* was awaited and,
    if given, what ``seen()`` shows at that moment.
    """
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result is not None:
            return result
        if time.monotonic() >= deadline:
            detail = f"; last seen: {seen()}" if seen is not None else ""
            raise LabError(f"timed out after {timeout:g}s waiting for {what}{detail}")
        time.sleep(_POLL_SECONDS)


def _ip_json(lab: Lab, ns: str, *args: str) -> list[dict[str, Any]]:
    out = lab.ip(ns, "-j", *args).stdout
    parsed: list[dict[str, Any]] = json.loads(out) if out.strip() else []
    return parsed


def default_routes(lab: Lab, ns: str, ifname: str, ipv6: bool = False) -> list[dict[str, Any]]:
    """Default routes of the main table leaving by *ifname*, as ``ip -j`` shows them.

    Each has ``gateway``, and ``protocol``/``metric``/``expires`` when set.
    IPv6 routes whose lifetime ran out are included: the kernel keeps them
    listed (with a negative ``expires``) until its garbage collection runs.
    """
    family = "-6" if ipv6 else "-4"
    routes = _ip_json(lab, ns, family, "route", "show", "default")
    return [route for route in routes if route.get("dev") == ifname]


def addresses(lab: Lab, ns: str, ifname: str, ipv6: bool = False) -> list[dict[str, Any]]:
    """Global addresses on *ifname* as ``ip -j`` ``addr_info`` entries (``local``, ``prefixlen``...)."""
    family = "-6" if ipv6 else "-4"
    links = _ip_json(lab, ns, family, "addr", "show", "dev", ifname, "scope", "global")
    # ip -j leaves an empty object for each address the scope filter skipped.
    return [info for link in links for info in link.get("addr_info", []) if "local" in info]
