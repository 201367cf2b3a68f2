"""How long a flow is interrupted when its uplink dies, with `markroute run`'s default checks.

Goal (issue 5): under one second with the defaults. Lab: a router with two ISPs in
network namespaces (markroute.lab.router_lab); the LAN client sends a UDP datagram every
10 ms to the echo server through the failover group [isp_a, isp_b]; the daemon runs
with the default check (ICMP to the gateway). Each run breaks isp_a one way, measures
the flow's gap (the longest silence between two answers) and how long the daemon took
to declare isp_a down, then repairs isp_a and waits until it is used again:

* upstream dead: everything dropped inside the ISP's namespace, its link stays up,
  so only the probes can tell;
* link down: the ISP's end of the link is set down, the router sees its carrier go.

Each check profile is measured the same way: the defaults, and a faster profile given as
`--fast SPEC`, by default the fast profile README documents (`FAST`, issue 15 goal 4).

The soak (`--soak SECONDS`, issue 15) asks what a profile costs in false failovers: one lab
per profile, side by side for the same SECONDS, each router's daemon probing two ISPs that
drop LOSS percent (`--loss`, default 5) of the packets on their link to the router at
random, each way (`numgen random mod 100 < LOSS drop` at prerouting and at postrouting of
their router-facing interface), so about 1 - (1 - LOSS)^2 of the probe rounds (9.75% at
5%) go unanswered and no uplink is ever really dead: every transition to down is a false
failover. The daemons' records are polled every 50 ms. A counter in front of the drop
counts the echo requests each ISP receives: the probe rate the daemon really kept.

The daemon's own reaction (`--reaction N`, issue 15 goal 4): from the transition the monitor
decides to the flows of the dead uplink deleted, as the daemon logs it on its rules event
(`reaction_ms`, `reaction_cpu_ms`, and `batch_ms` the nft transaction within it), over N
deaths and N returns of isp_a (upstream dead) with the fast profile, with no set and with
a 100,000-prefix set through isp_b. Then two more with strace attached to the daemon and
its children (`-e trace=fsync,fdatasync,execve`; its timings are not used): fsyncs, and
the programs it ran (an `nft` batch or a table listing would show there).

Run as root (it builds namespaces):
    python3 benchmarks/bench_failover.py [--runs N] [--fast SPEC] [--soak SECONDS] [--loss PERCENT]
                                         [--reaction N] [--write]
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from common import publish, random_prefixes  # noqa: E402
from daemon_helpers import DaemonLab, daemon_lab  # noqa: E402

from markroute.model import HealthCheck  # noqa: E402

CONFIG = """
uplinks:
  isp_a: {{interface: wan0, gateway: 10.0.0.1, nat: masquerade{check}}}
  isp_b: {{interface: wan1, gateway: 10.0.1.1, nat: masquerade{check}}}
groups:
  primary: {{failover: [isp_a, isp_b]}}
policies:
  - {{name: rest, to: 203.0.113.0/24, via: primary}}
"""
SETTLE = 6.0  # seconds between runs, so flap damping never holds isp_a down
LOSS_TABLE = "mrbenchloss"
FAST = "interval=0.015,timeout=0.03,down=7,up=10"  # README's fast check profile


def config(check: HealthCheck) -> str:
    """The lab's config, with CHECK written out unless it is the default."""
    if check == HealthCheck():
        return CONFIG.format(check="")
    fields = f"interval: {check.interval:g}, timeout: {check.timeout:g}, down: {check.down}, up: {check.up}"
    return CONFIG.format(check=f", check: {{{fields}}}")


BIG_SET = """
sets:
  big: {file: big.txt}
"""
BIG_POLICY = """  - {name: big-set, to: "@big", via: isp_b}
"""
SET_SIZES = (0, 100_000)


def parse_check(spec: str) -> HealthCheck:
    """`interval=0.05,timeout=0.1,down=3,up=5` -> a HealthCheck (the defaults for what is not given)."""
    values: dict[str, float | int] = {}
    for item in spec.split(","):
        key, _, value = item.partition("=")
        if key not in ("interval", "timeout", "down", "up"):
            raise SystemExit(f"--fast: unknown check field {key!r}")
        values[key] = int(value) if key in ("down", "up") else float(value)
    return replace(HealthCheck(), **values)  # type: ignore[arg-type]


def describe(check: HealthCheck) -> str:
    return (f"ICMP to the gateway every {check.interval:g} s, timeout {check.timeout:g} s, down after "
            f"{check.down} unanswered rounds, up after {check.up} answered ones")


def one_run(d: DaemonLab, how: str) -> tuple[float, float]:
    """(flow gap, time until the daemon declared isp_a down) for one failure of isp_a."""
    r = d.router
    flow = d.flow("udp", r.server, duration=3.0)
    time.sleep(1.0)
    broken = d.kill_upstream(0) if how == "upstream" else d.set_link(r.isps[0], "down0", up=False)
    declared = d.wait_states({"isp_a": "down"}, timeout=10).uplinks["isp_a"].since
    result = flow.result()
    if how == "upstream":
        d.revive_upstream(0)
    else:
        d.set_link(r.isps[0], "down0", up=True)
    d.wait_states({"isp_a": "up"}, timeout=30)
    assert d.isp_of(result.sources(start=broken + 1.5)) == {1}, "the flow did not move to isp_b"
    return result.gap(broken), declared - broken


def row(label: str, samples: list[float]) -> str:
    ms = [s * 1000 for s in samples]
    return f"| {label} | {statistics.median(ms):.0f} ms | {max(ms):.0f} ms | {min(ms):.0f} ms | {len(ms)} |\n"


def gaps(check: HealthCheck, runs: int) -> str:
    """The failover gap section body for CHECK."""
    results: dict[str, tuple[list[float], list[float]]] = {"upstream": ([], []), "link": ([], [])}
    with tempfile.TemporaryDirectory() as tmp, daemon_lab(Path(tmp)) as d:
        d.start(d.write(config(check)))
        d.wait_states({"isp_a": "up", "isp_b": "up"})
        for how, (flow_gaps, detections) in results.items():
            for _ in range(runs):
                time.sleep(SETTLE)
                gap, detection = one_run(d, how)
                flow_gaps.append(gap)
                detections.append(detection)
    body = (
        f"Check: {describe(check)}. A UDP flow sends every 10 ms through "
        "the failover group [isp_a, isp_b]; the gap is its longest silence, from the last answer through isp_a "
        "to the first through isp_b.\n\n"
        "| isp_a fails by | median | worst | best | runs |\n|---|---|---|---|---|\n"
    )
    for how, label in (("upstream", "upstream dead, link up: flow gap"), ("link", "link down: flow gap")):
        body += row(label, results[how][0])
    body += row("upstream dead: until declared down", results["upstream"][1])
    body += row("link down: until declared down", results["link"][1])
    return body


def soak(checks: dict[str, HealthCheck], seconds: float, loss: int) -> str:
    """False failovers of each profile under LOSS% random loss, all profiles side by side for SECONDS."""
    rule = (f"table inet {LOSS_TABLE} {{ counter probes {{}}; "
            f"chain in {{ type filter hook prerouting priority -400; "
            f'iifname "down0" icmp type echo-request counter name probes; '
            f'iifname "down0" numgen random mod 100 < {loss} drop; }}; '
            f"chain out {{ type filter hook postrouting priority -400; "
            f'oifname "down0" numgen random mod 100 < {loss} drop; }}; }}')
    downs = {name: {"isp_a": 0, "isp_b": 0} for name in checks}
    losses: dict[str, list[float]] = {name: [] for name in checks}
    with ExitStack() as stack:
        labs: dict[str, DaemonLab] = {}
        for name, check in checks.items():
            d = labs[name] = stack.enter_context(daemon_lab(Path(stack.enter_context(tempfile.TemporaryDirectory()))))
            d.start(d.write(config(check)))
            d.wait_states({"isp_a": "up", "isp_b": "up"})
            for isp in d.router.isps:
                d.router.lab.nft(isp, rule)
        last = {name: d.states() for name, d in labs.items()}
        counted = {name: [d.router.lab.nft_counter(isp, "inet", LOSS_TABLE, "probes") for isp in d.router.isps]
                   for name, d in labs.items()}
        started = time.monotonic()
        first_transitions = {name: {u: r.transitions for u, r in d.record().uplinks.items()} for name, d in labs.items()}
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            time.sleep(0.05)
            for name, d in labs.items():
                record = d.record()
                now = {uplink: seen.state for uplink, seen in record.uplinks.items()}
                for uplink, state in now.items():
                    if state == "down" and last[name].get(uplink) != "down":
                        downs[name][uplink] += 1
                losses[name] += [seen.loss for seen in record.uplinks.values() if seen.loss is not None]
                last[name] = now
        transitions = {name: {u: r.transitions - first_transitions[name][u] for u, r in d.record().uplinks.items()}
                       for name, d in labs.items()}
        rates = {name: [(d.router.lab.nft_counter(isp, "inet", LOSS_TABLE, "probes") - before)
                        / (time.monotonic() - started) for isp, before in zip(d.router.isps, counted[name])]
                 for name, d in labs.items()}
    body = (
        f"{seconds:g} s, the profiles side by side (one lab each, same time): each ISP drops {loss}% of "
        "the packets on its link to the router at random, each way (nft `numgen random`), so about "
        f"{1 - (1 - loss / 100) ** 2:.1%} of the probe rounds go unanswered while both uplinks stay usable; every "
        "transition to down is a false failover. Probe loss: the daemon's own figure (recent probes unanswered), "
        "averaged over the polls. Probes/s: echo requests each ISP received per second (counted before the "
        "drop), the probe rate the daemon kept.\n\n"
        "| check profile | false failovers isp_a | false failovers isp_b | state transitions (record) "
        "| probe loss seen | probes/s isp_a, isp_b |\n|---|---|---|---|---|---|\n"
    )
    for name, check in checks.items():
        body += (f"| {name}: {describe(check)} | {downs[name]['isp_a']} | {downs[name]['isp_b']} "
                 f"| {sum(transitions[name].values())} "
                 f"| {statistics.mean(losses[name]) if losses[name] else float('nan'):.1%} "
                 f"| {', '.join(f'{rate:.1f}' for rate in rates[name])} (configured {1 / check.interval:.1f}) |\n")
    return body


def reaction_config(check: HealthCheck, workdir: Path, prefixes: int) -> str:
    """The lab's config, with a set of PREFIXES prefixes (written beside it) sent through isp_b."""
    text = config(check)
    if not prefixes:
        return text
    (workdir / "big.txt").write_text("\n".join(random_prefixes(prefixes)) + "\n")
    return text.replace("groups:", BIG_SET.strip() + "\ngroups:") + BIG_POLICY


Reactions = dict[str, dict[str, list[float]]]  # "down"/"up" -> "reaction"/"cpu"/"batch" -> ms


def reactions(d: DaemonLab, log_from: int, runs: int) -> Reactions:
    """RUNS deaths and returns of isp_a; the daemon's reaction to each, in ms, from its log."""
    for _ in range(runs):
        time.sleep(SETTLE)
        d.kill_upstream(0)
        d.wait_states({"isp_a": "down"}, timeout=10)
        time.sleep(0.3)
        d.revive_upstream(0)
        d.wait_states({"isp_a": "up"}, timeout=30)
    time.sleep(0.5)
    found: Reactions = {way: {"reaction": [], "cpu": [], "batch": []} for way in ("down", "up")}
    for line in d.log()[log_from:].splitlines():
        event = re.search(r"event=failover down=(\S+) .*batch_ms=([\d.]+) reaction_ms=([\d.]+) "
                          r"reaction_cpu_ms=([\d.]+)", line)
        if event and event.group(1) in ("isp_a", "none"):
            figures = found["down" if event.group(1) == "isp_a" else "up"]
            figures["batch"].append(float(event.group(2)))
            figures["reaction"].append(float(event.group(3)))
            figures["cpu"].append(float(event.group(4)))
    return found


def traced(d: DaemonLab, pid: int, runs: int) -> tuple[int, list[list[str]]]:
    """RUNS deaths and returns of isp_a with strace on the daemon: (fsyncs, argv of each program it ran)."""
    out = d.workdir / "strace.out"
    tracer = subprocess.Popen(["strace", "-f", "-qq", "-e", "trace=fsync,fdatasync,execve", "-o", str(out),
                               "-p", str(pid)], stderr=subprocess.DEVNULL)
    try:
        time.sleep(1.0)
        reactions(d, 0, runs)
    finally:
        tracer.terminate()
        tracer.wait()
    text = out.read_text()
    fsyncs = len(re.findall(r"\b(?:fsync|fdatasync)\(", text))
    ran = re.findall(r'execve\("[^"]*", \[([^\]]*)\].*= 0$', text, re.M)  # not the failed tries along PATH
    return fsyncs, [re.findall(r'"([^"]*)"', argv) for argv in ran]


def spread(samples: list[float]) -> str:
    return f"{statistics.median(samples):.1f} ms ({min(samples):.1f}-{max(samples):.1f})"


def reaction(check: HealthCheck, runs: int) -> str:
    """The daemon reaction section body: timings per set size, then the strace pass."""
    rows: list[str] = []
    traces: list[str] = []
    for size in SET_SIZES:
        with tempfile.TemporaryDirectory() as tmp, daemon_lab(Path(tmp)) as d:
            process = d.start(d.write(reaction_config(check, d.workdir, size)))
            d.wait_states({"isp_a": "up", "isp_b": "up"})
            found = reactions(d, len(d.log()), runs)
            label = f"{size:,} prefixes" if size else "none"
            for way, what in (("down", "isp_a down: chains + its flows"), ("up", "isp_a back: chains")):
                figures = found[way]
                rows.append(f"| {label} | {what} | {spread(figures['reaction'])} | {spread(figures['cpu'])} "
                            f"| {spread(figures['batch'])} | {len(figures['reaction'])} |")
            fsyncs, ran = traced(d, process.pid, 2)
            lists = sum("list" in argv for argv in ran)
            commands = sorted({" ".join(argv) for argv in ran})
            traces.append(f"| {label} | {fsyncs} | {len(ran)} | {lists} | {', '.join(f'`{c}`' for c in commands)} |")
    load = " ".join(f"{value:.2f}" for value in os.getloadavg())
    return (
        f"Check: {describe(check)}. isp_a dies (upstream dead) and comes back {runs} times per set size. The "
        "daemon logs on its rules event the time from the transition its monitor decided to the rules "
        "rewritten and, for a death, the uplink's flows deleted: `reaction_ms` (wall clock), "
        "`reaction_cpu_ms` (the daemon's CPU time meanwhile: the rest is waiting for a CPU) and `batch_ms` "
        "(the nft transaction, through libnftables in the daemon, and the two generation reads around it). "
        "The records are written after that. Median (min-max); the machine is shared with other "
        f"work (load average {load} at the end), which shows in the wall clock, not in the CPU time.\n\n"
        "| set through isp_b | transition | reaction (wall) | reaction (CPU) | nft transaction | events |\n"
        "|---|---|---|---|---|---|\n" + "\n".join(rows) + "\n\n"
        "With strace on the daemon and its children (`strace -f -e trace=fsync,fdatasync,execve -p PID`) for "
        "2 deaths and 2 returns of isp_a (4 failover transactions, and the records written after each):\n\n"
        "| set through isp_b | fsync/fdatasync | programs run | of them table listings | commands |\n"
        "|---|---|---|---|---|\n" + "\n".join(traces) + "\n"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=7, help="failures of each kind per profile (default 7)")
    parser.add_argument("--fast", default=FAST, help=f"the faster check profile (default {FAST})")
    parser.add_argument("--soak", type=float, default=0, help="seconds of the false-failover soak (0: none)")
    parser.add_argument("--loss", type=int, default=5,
                        help="percent dropped at random each way during the soak (default 5)")
    parser.add_argument("--reaction", type=int, default=0,
                        help="deaths and returns of isp_a per set size for the daemon's reaction (0: none)")
    parser.add_argument("--write", action="store_true", help="store the result in BENCHMARKS.md")
    args = parser.parse_args()
    checks = {"default": HealthCheck(), "fast": parse_check(args.fast)}
    if args.runs:
        publish("Failover gap (markroute run, default checks)", gaps(checks["default"], args.runs))
        publish("Failover gap (markroute run, fast check profile)", gaps(checks["fast"], args.runs))
    if args.reaction:
        publish("Daemon reaction (declared down to rules and conntrack changed)", reaction(checks["fast"], args.reaction))
    if args.soak:
        publish(f"False failovers under {args.loss}% random loss", soak(checks, args.soak, args.loss))


if __name__ == "__main__":
    main()
