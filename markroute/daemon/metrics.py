"""Prometheus metrics on `--metrics HOST:PORT` (off unless asked for).

Served by a small HTTP server on its own thread, so a scrape (which lists nftables
counters, interface counters and the conntrack table) never delays a probe or a
failover; the daemon's side is `Exposed`, a snapshot it replaces whole after each
change, which the server thread only reads. A scrape is the daemon's `StatusReport`
(kernel/status.py, the value `markroute status` renders too) in the exposition format.

Per uplink: state (one series per possible state, 1 for the current one), RTT, loss,
since when, state changes, tracked connections, and the packets and bytes its
interface received and sent; for a waiting uplink why it waits, for a ready one the
next hops its default routes use (learned for `gateway: auto`). Per policy: the packets and bytes its rules counted,
which are the first packets of the connections it routed (markroute decides once
per connection). `markroute_rule_changes_total`: nftables transactions made for
health changes. Per group member: `markroute_group_member_weight` (the effective weight
the live table draws with) and `markroute_group_member_active`; per group
`markroute_group_last_resort`. Per dynamic set (filled by dnsmasq, the resolver or
scripts): `markroute_dynamic_set_elements`. `contrib/grafana-markroute.json` charts these
names only.
"""

from __future__ import annotations

import logging
import socket
import threading
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from markroute.kernel import KernelError, dynsets, nft
from markroute.kernel.conntrack import count_by_mark
from markroute.kernel.gateways import Readiness
from markroute.kernel.links import interface_counters
from markroute.kernel.rpdb import Rpdb
from markroute.kernel.state import UPLINK_STATES, DaemonRecord
from markroute.kernel.status import (
    DaemonStatus,
    StatusReport,
    group_statuses,
    policy_statuses,
    uplink_statuses,
)
from markroute.plan import FAMILY_NAMES, Plan
from markroute.plan.nftjson import is_dynamic

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
INTERFACE_COUNTERS = (
    ("receive_packets", "rx_packets", "Packets received by the uplink's interface."),
    ("receive_bytes", "rx_bytes", "Bytes received by the uplink's interface."),
    ("transmit_packets", "tx_packets", "Packets sent by the uplink's interface."),
    ("transmit_bytes", "tx_bytes", "Bytes sent by the uplink's interface."),
)


@dataclass(frozen=True)
class Exposed:
    """What the daemon shows: its record, the plan installed (uplinks, policies, mask), the uplinks' readiness."""

    record: DaemonRecord
    plan: Plan
    readiness: Mapping[str, Readiness] = field(default_factory=dict)  # `kernel.gateways.Survey.uplinks`


@dataclass
class Families:
    """Metric families in the text exposition format, in the order they were first used."""

    lines: dict[str, list[str]] = field(default_factory=dict)

    def add(self, name: str, kind: str, help_text: str, labels: dict[str, str], value: float) -> None:
        family = self.lines.setdefault(name, [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}"])
        label_text = ",".join(f'{key}="{_escape(text)}"' for key, text in labels.items())
        family.append(f"{name}{{{label_text}}} {_number(value)}" if label_text else f"{name} {_number(value)}")

    def text(self) -> str:
        return "".join(line + "\n" for lines in self.lines.values() for line in lines)


def _escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


@dataclass(frozen=True)
class KernelCounters:
    """What a scrape reads from the kernel: connections per mark, interface and rule counters."""

    connections: Counter[int]
    interfaces: dict[str, dict[str, int]]
    rules: list[tuple[str, int, int]]
    table: list[dict[str, Any]] = field(default_factory=list)  # the table without set elements (group chains)
    dynamic_sets: dict[str, int] = field(default_factory=dict)  # elements per set others fill


def read_kernel(plan: Plan, log: logging.Logger) -> KernelCounters | None:
    """The kernel's counters now, or None (and a debug line) if they cannot be read."""
    try:
        connections = count_by_mark(plan.mask)
        with Rpdb() as rpdb:
            interfaces = interface_counters(rpdb)
        table = nft.table_structure(plan.table_name) or []
        filled = dynsets.element_counts(plan.table_name) if any(
            "set" in obj and is_dynamic(obj["set"]) for obj in plan.nft) else {}
        return KernelCounters(connections, interfaces, nft.rule_counters(table), table, filled)
    except (KernelError, OSError) as exc:
        log.debug("metrics: %s", exc)
        return None


def report(exposed: Exposed, kernel: KernelCounters | None) -> StatusReport:
    """The status report the daemon can give of itself: its record, its plan, the kernel's counters."""
    record, plan = exposed.record, exposed.plan
    return StatusReport(
        namespace=None,
        applied=True,
        applied_at=None,
        uplinks=uplink_statuses(list(plan.uplinks), record, connections=kernel.connections if kernel else None,
                                traffic=kernel.interfaces if kernel else None, readiness=exposed.readiness),
        policies=policy_statuses(list(plan.policies), kernel.rules) if kernel else (),
        daemon=DaemonStatus(record.pid, True, record.started, record.rule_changes),
        groups=group_statuses(list(plan.groups), kernel.table, record) if kernel else (),
        dynamic_sets=kernel.dynamic_sets if kernel else {},
    )


def exposition(exposed: Exposed, kernel: KernelCounters | None) -> str:
    """The whole scrape: the daemon's view of the uplinks plus the kernel's counters (None: unreadable)."""
    return render(report(exposed, kernel))


def render(status: StatusReport) -> str:
    families = Families()
    for uplink in status.uplinks:
        seen = uplink.health
        if seen is None:
            continue
        labels = {"uplink": uplink.name}
        for name in UPLINK_STATES:
            families.add("markroute_uplink_state", "gauge",
                         "1 for the uplink's current state (up, degraded, down, waiting).",
                         {**labels, "state": name}, 1 if seen.state == name else 0)
        if seen.rtt is not None:
            families.add("markroute_uplink_rtt_seconds", "gauge", "Mean round-trip time of the recent probes.",
                         labels, seen.rtt)
        if seen.loss is not None:
            families.add("markroute_uplink_loss_ratio", "gauge", "Fraction of the recent probes not answered in time.",
                         labels, seen.loss)
        families.add("markroute_uplink_state_since_seconds", "gauge", "Unix time of the uplink's last state change.",
                     labels, seen.since)
        families.add("markroute_uplink_transitions_total", "counter", "State changes since the daemon first started.",
                     labels, seen.transitions)
    for uplink in status.uplinks:
        if uplink.waiting is not None:
            families.add("markroute_uplink_waiting", "gauge",
                         "1 while the uplink waits for an address or next hop; reason: why (kernel.gateways).",
                         {"uplink": uplink.name, "reason": uplink.waiting}, 1)
        for version, hop in uplink.next_hops:
            families.add("markroute_uplink_next_hop_info", "gauge",
                         "The next hop the uplink's default route uses now (learned for gateway: auto).",
                         {"uplink": uplink.name, "family": FAMILY_NAMES[version], "next_hop": hop or "on-link"}, 1)
    for uplink in status.uplinks:
        if uplink.connections is not None:
            families.add("markroute_uplink_connections", "gauge", "Tracked connections carrying the uplink's mark.",
                         {"uplink": uplink.name}, uplink.connections)
        for suffix, key, help_text in INTERFACE_COUNTERS if uplink.traffic else ():
            families.add(f"markroute_uplink_{suffix}_total", "counter", help_text,
                         {"uplink": uplink.name, "interface": uplink.interface}, uplink.traffic[key])  # type: ignore[index]
    for policy in status.policies:
        families.add("markroute_policy_packets_total", "counter",
                     "Packets counted by the policy's rules: the first packet of each connection it routed.",
                     {"policy": policy.name}, policy.packets)
        families.add("markroute_policy_bytes_total", "counter", "Bytes of the packets the policy's rules counted.",
                     {"policy": policy.name}, policy.bytes)
    group_families(families, status)
    for set_name, count in sorted(status.dynamic_sets.items()):
        families.add("markroute_dynamic_set_elements", "gauge",
                     "Elements a set others fill holds now (domain sets: addresses the resolver answered).",
                     {"set": set_name}, count)
    rule_changes = status.daemon.rule_changes if status.daemon else 0
    families.add("markroute_rule_changes_total", "counter",
                 "nftables transactions the daemon made for uplink state changes.", {}, rule_changes)
    return families.text()


def group_families(families: Families, status: StatusReport) -> None:
    """Per group member: the weight the live table draws it with and whether it carries traffic now."""
    for group in status.groups:
        for member in group.members:
            labels = {"group": group.name, "member": member.name}
            families.add("markroute_group_member_weight", "gauge",
                         "Effective weight of the member in the live table (0: left out; failover: 1 for the active one).",
                         labels, member.effective)
            families.add("markroute_group_member_active", "gauge",
                         "1 when the member carries the group's new connections now.", labels, 1 if member.effective else 0)
        families.add("markroute_group_last_resort", "gauge",
                     "1 when no member is usable and the group's traffic takes the last resort.",
                     {"group": group.name}, 1 if group.last_resort else 0)


class MetricsServer:
    """GET /metrics (any path, really) on HOST:PORT, from a daemon thread."""

    def __init__(self, host: str, port: int, current: Callable[[], Exposed], log: logging.Logger) -> None:
        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (the name http.server calls)
                exposed = current()
                body = exposition(exposed, read_kernel(exposed.plan, log)).encode()
                self.send_response(200)
                self.send_header("Content-Type", CONTENT_TYPE)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:  # noqa: A002 (the base's name)
                return  # one line per scrape would drown the events in the journal

        class Server(ThreadingHTTPServer):
            address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
            daemon_threads = True

        self.server = Server((host, port), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, name="metrics", daemon=True)

    @property
    def address(self) -> tuple[str, int]:
        host, port = self.server.server_address[:2]
        return str(host), int(port)

    def start(self) -> None:
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def parse_address(text: str) -> tuple[str, int]:
    """HOST:PORT or [V6]:PORT; ValueError with a readable message otherwise."""
    host, separator, port = text.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not separator or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"'{text}' is not HOST:PORT (for example 127.0.0.1:9586 or [::1]:9586)")
    return host or "0.0.0.0", int(port)
