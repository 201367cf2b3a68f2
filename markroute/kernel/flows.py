"""Live connections with the uplink and the decision markroute recorded for each.

The uplink comes from the connection mark (`ct mark & mask`), the deciding policy or
ingress from the connection's labels (`markroute.plan.labels`), both read back against
the applied state record, so names are those of the config that made the decision.
`markroute flows` lists these; `markroute explain` compares one with the simulator.
"""

from __future__ import annotations

import ipaddress
import time
from dataclasses import dataclass
from typing import Any

from markroute import marks
from markroute.kernel.conntrack import Connection, connections
from markroute.kernel.state import State
from markroute.plan import labels

PROTOCOLS = {1: "icmp", 6: "tcp", 17: "udp", 58: "icmpv6", 132: "sctp"}


@dataclass(frozen=True)
class TrackedFlow:
    """One connection and what decided it.

    `uplink`: the uplink its mark names, None when it carries no uplink mark (main
    table). `decision`: "policy", "ingress" or None (markroute recorded nothing: to this
    host, no policy matched, a socket's own mark, or older than markroute's rules);
    `policy` the deciding policy's name, `ingress` the uplink it arrived through.
    """

    connection: Connection
    uplink: str | None
    decision: str | None
    policy: str | None
    ingress: str | None

    @property
    def reason(self) -> str:
        if self.decision == "policy":
            return f"policy {self.policy}"
        if self.decision == "ingress":
            return f"ingress via {self.ingress}"
        return "not recorded"

    def endpoints(self) -> str:
        """`tcp 192.0.2.1:40000 to 198.51.100.1:80`: the form `markroute explain` takes back (no `>`: shells redirect it)."""
        c = self.connection
        return f"{protocol_name(c.proto)} {endpoint(c.src, c.sport)} to {endpoint(c.dst, c.dport)}"

    def to_json(self, now: float) -> dict[str, Any]:
        c = self.connection
        return {
            "proto": protocol_name(c.proto),
            "src": c.src, "sport": c.sport, "dst": c.dst, "dport": c.dport,
            "uplink": self.uplink,
            "mark": hex(c.mark),
            "decision": self.decision,
            "policy": self.policy,
            "ingress": self.ingress,
            "reason": self.reason,
            "snat": c.snat,
            "dnat": c.dnat,
            "age": round(now - c.started, 3) if c.started else None,
            "packets": c.packets,
            "bytes": c.octets,
            "state": c.state,
        }


def protocol_name(number: int) -> str:
    return PROTOCOLS.get(number, str(number))


def endpoint(address: str, port: int | None) -> str:
    if port is None:
        return address
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


def tracked_flows(recorded: State) -> list[TrackedFlow]:
    """Every tracked connection, read against what apply recorded (`state.load`)."""
    return [describe(c, recorded) for c in connections()]


def describe(connection: Connection, recorded: State) -> TrackedFlow:
    """What the mark and the labels of `connection` say, in the names of the applied config."""
    by_mark = {u.mark: u.name for u in recorded.uplinks}
    uplink = by_mark.get(connection.mark & recorded.mask)
    decided = labels.decode(connection.labels)
    policy = ingress = None
    if decided is not None and decided.kind == "policy":
        n = decided.number
        policy = recorded.policies[n - 1] if n <= len(recorded.policies) else f"#{n} (not in the applied config)"
    elif decided is not None:
        mark = marks.value(recorded.mask, decided.number)
        ingress = by_mark.get(mark, f"mark {mark:#x} (not in the applied config)")
    return TrackedFlow(connection, uplink, decided.kind if decided else None, policy, ingress)


def in_network(address: str, wanted: str) -> bool:
    """Whether ADDRESS is WANTED (an address or a prefix); raises ValueError for a bad WANTED."""
    network = ipaddress.ip_network(wanted, strict=False)
    found = ipaddress.ip_address(address)
    return found.version == network.version and found in network


def age_text(started: float | None, now: float | None = None) -> str:
    if not started:
        return "-"
    seconds = int((now or time.time()) - started)
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 7200:
        return f"{seconds // 60}m"
    return f"{seconds // 3600}h"


def arrival(address: str) -> tuple[bool, str | None]:
    """(is it this host's address, the interface a packet from it arrives on), by route lookup.

    A connection's record does not say which interface its first packet came in on; the
    route back to its source is where it came from in every symmetric network.
    """
    from pyroute2 import IPRoute, NetlinkError

    with IPRoute() as ipr:
        try:
            found = ipr.route("get", dst=address)
        except NetlinkError:
            return False, None
        for route in found:
            if route["type"] == 2:  # RTN_LOCAL
                return True, None
            oif = route.get_attr("RTA_OIF")
            if oif:
                links = ipr.get_links(oif)
                return False, links[0].get_attr("IFLA_IFNAME") if links else None
    return False, None
