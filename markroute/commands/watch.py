"""`markroute status --watch`: the status report refreshed every second, as a live view.

On a terminal: one screen redrawn in place, per uplink its RTT and loss as sparklines
over the last minutes, connections and traffic rates, per policy its new connections a
second, and the state changes as they happen. Anywhere else (a pipe, a log file): one
plain line per uplink each refresh and one line per change, nothing redrawn. Ctrl-C
ends it with exit 0.

The view keeps its history itself (`History`): the daemon records only the latest
RTT and loss, and the counters give rates only as differences between two samples.
"""

from __future__ import annotations

import shutil
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import click

if TYPE_CHECKING:
    from markroute.kernel.status import StatusReport

SPARKS = "▁▂▃▄▅▆▇█"
WINDOW = 180  # samples kept: three minutes at one a second
EVENTS = 10
CLEAR = "\x1b[H\x1b[2J"


@dataclass
class History:
    """What one refresh needs of the refreshes before it: series, last counters, last states."""

    rtt: dict[str, deque[float | None]] = field(default_factory=dict)
    loss: dict[str, deque[float | None]] = field(default_factory=dict)
    events: deque[str] = field(default_factory=lambda: deque(maxlen=EVENTS))
    states: dict[str, str] = field(default_factory=dict)
    counters: dict[str, int] = field(default_factory=dict)
    rates: dict[str, float] = field(default_factory=dict)
    when: float | None = None

    def add(self, report: StatusReport, traffic: Mapping[str, Mapping[str, int]], now: float) -> list[str]:
        """Take one sample; returns the state changes since the last one, as event lines."""
        changes = []
        current = states_of(report)
        for key, value in current.items():
            before = self.states.get(key)
            if before is not None and before != value:
                changes.append(f"{time.strftime('%H:%M:%S', time.localtime(now))} {key}: {before} -> {value}")
        self.states = current
        self.events.extend(changes)
        counters = {f"policy {p.name}": p.packets for p in report.policies}
        for u in report.uplinks:
            counted = traffic.get(u.interface, {})
            counters[f"uplink {u.name}"] = counted.get("rx_bytes", 0) + counted.get("tx_bytes", 0)
        if self.when is not None and now > self.when:
            self.rates = {k: max(0, v - self.counters.get(k, v)) / (now - self.when) for k, v in counters.items()}
        self.counters, self.when = counters, now
        for u in report.uplinks:
            self.rtt.setdefault(u.name, deque(maxlen=WINDOW)).append(u.health.rtt if u.health else None)
            self.loss.setdefault(u.name, deque(maxlen=WINDOW)).append(u.health.loss if u.health else None)
        return changes


def states_of(report: StatusReport) -> dict[str, str]:
    """Everything whose change is an event: each uplink's link and health, each group's active member."""
    found = {}
    for u in report.uplinks:
        found[f"{u.name} link"] = "up" if u.up else "down" if u.exists else "missing"
        found[f"{u.name} health"] = u.health.state if u.health else "not probed"
    for g in report.groups:
        found[f"group {g.name}"] = ("last resort" if g.last_resort else f"active {g.active}" if g.kind == "failover"
                                   else "weights " + ",".join(f"{m.name}:{m.effective}" for m in g.members))
    return found


def sparkline(values: deque[float | None], width: int) -> str:
    """The last WIDTH values as bars scaled to their maximum; a gap where nothing was measured."""
    shown = list(values)[-width:]
    known = [v for v in shown if v is not None]
    top = max(known, default=0.0) or 1.0
    bars = "".join(" " if v is None else SPARKS[min(len(SPARKS) - 1, int(v / top * (len(SPARKS) - 1) + 0.5))]
                   for v in shown)
    return bars.rjust(width)


def rate_text(per_second: float, unit: str) -> str:
    for scale, prefix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if per_second >= scale:
            return f"{per_second / scale:.1f} {prefix}{unit}/s"
    return f"{per_second:.0f} {unit}/s"


def screen(report: StatusReport, history: History, width: int) -> str:
    """The whole terminal view for one refresh."""
    where = f"namespace {report.namespace}" if report.namespace else "this host"
    clock = time.strftime("%H:%M:%S")
    lines = [f"markroute status --watch: {where}, {clock} (Ctrl-C to quit)", ""]
    spark = max(10, min(60, width - 90))
    lines.append(f"{'uplink':<12} {'link':<8} {'health':<10} {'rtt':>9} {'loss':>5} {'conns':>6} {'traffic':>12}  "
                 f"rtt / loss over the last {spark} s")
    for u in report.uplinks:
        health = u.health.state if u.health else "-"
        rtt = f"{u.health.rtt * 1000:.1f} ms" if u.health and u.health.rtt is not None else "-"
        loss = f"{u.health.loss:.0%}" if u.health and u.health.loss is not None else "-"
        traffic = rate_text(history.rates.get(f"uplink {u.name}", 0.0), "B")
        link = "up" if u.up else "down" if u.exists else "missing"
        lines.append(f"{u.name:<12} {link:<8} {health:<10} {rtt:>9} {loss:>5} {u.connections or 0:>6} {traffic:>12}  "
                     f"{sparkline(history.rtt.get(u.name, deque()), spark)} "
                     f"{sparkline(history.loss.get(u.name, deque()), spark // 3)}")
    if report.groups:
        lines += ["", "groups:"]
        for state_key, value in states_of(report).items():
            if state_key.startswith("group "):
                lines.append(f"  {state_key[len('group '):]:<12} {value}")
    if report.policies:
        lines += ["", f"{'policy':<24} {'target':<12} {'new conns':>10} {'per second':>11}"]
        for p in report.policies:
            lines.append(f"{p.name:<24} {p.target or '?':<12} {p.packets:>10} "
                         f"{history.rates.get(f'policy {p.name}', 0.0):>11.1f}")
    lines += ["", "changes:"] + [f"  {e}" for e in history.events or ["  (none yet)"]]
    return "\n".join(lines) + "\n"


def plain_lines(report: StatusReport, history: History, changes: list[str]) -> list[str]:
    """Without a terminal: each change, then one line per uplink; nothing is redrawn."""
    clock = time.strftime("%H:%M:%S")
    lines = [f"change {c}" for c in changes]
    for u in report.uplinks:
        rtt = f"{u.health.rtt * 1000:.1f}ms" if u.health and u.health.rtt is not None else "-"
        loss = f"{u.health.loss:.0%}" if u.health and u.health.loss is not None else "-"
        lines.append(f"{clock} uplink={u.name} link={'up' if u.up else 'down'} "
                     f"health={u.health.state if u.health else '-'} rtt={rtt} loss={loss} "
                     f"connections={u.connections or 0} bytes_per_s={history.rates.get(f'uplink {u.name}', 0.0):.0f}")
    return lines


def watch(sample: Callable[[], tuple[StatusReport, Mapping[str, Mapping[str, int]]]], interval: float,
          terminal: bool) -> None:
    """Refresh until Ctrl-C: SAMPLE gives the report and the interface counters."""
    history = History()
    try:
        while True:
            started = time.monotonic()
            report, traffic = sample()
            changes = history.add(report, traffic, time.time())
            if terminal:
                width = shutil.get_terminal_size().columns
                click.echo(CLEAR + screen(report, history, width), nl=False)
            else:
                for line in plain_lines(report, history, changes):
                    click.echo(line)
            time.sleep(max(0.0, interval - (time.monotonic() - started)))
    except KeyboardInterrupt:
        if terminal:
            click.echo("")
