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
`--fast interval=0.05,timeout=0.1,down=3,up=5` (issue 15).

The soak (`--soak SECONDS`, issue 15) asks what a profile costs in false failovers: one lab
per profile, side by side for the same SECONDS, each router's daemon probing two ISPs that
drop LOSS percent (`--loss`, default 5) of what reaches them from the router, at random
(`numgen random mod 100 < LOSS drop` at prerouting of their router-facing interface), so
probe rounds fail at random at about that rate and no uplink is ever really dead: every
transition to down is a false failover. The daemons' records are polled every 50 ms.

Run as root (it builds namespaces):
    python3 benchmarks/bench_failover.py [--runs N] [--fast SPEC] [--soak SECONDS] [--loss PERCENT] [--write]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from contextlib import ExitStack
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from common import publish  # noqa: E402
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


def config(check: HealthCheck) -> str:
    """The lab's config, with CHECK written out unless it is the default."""
    if check == HealthCheck():
        return CONFIG.format(check="")
    fields = f"interval: {check.interval:g}, timeout: {check.timeout:g}, down: {check.down}, up: {check.up}"
    return CONFIG.format(check=f", check: {{{fields}}}")


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
    rule = (f"table inet {LOSS_TABLE} {{ chain in {{ type filter hook prerouting priority -400; "
            f'iifname "down0" numgen random mod 100 < {loss} drop; }}; }}')
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
    body = (
        f"{seconds:g} s, the profiles side by side (one lab each, same time): each ISP drops {loss}% of "
        "the packets it receives from the router at random (nft `numgen random`), so about that share of probe "
        "rounds goes unanswered while both uplinks stay usable; every transition to down is a false failover. "
        "Probe loss: the daemon's own figure (recent probes unanswered), averaged over the polls.\n\n"
        "| check profile | false failovers isp_a | false failovers isp_b | state transitions (record) "
        "| probe loss seen |\n|---|---|---|---|---|\n"
    )
    for name, check in checks.items():
        body += (f"| {name}: {describe(check)} | {downs[name]['isp_a']} | {downs[name]['isp_b']} "
                 f"| {sum(transitions[name].values())} "
                 f"| {statistics.mean(losses[name]) if losses[name] else float('nan'):.1%} |\n")
    return body


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=7, help="failures of each kind per profile (default 7)")
    parser.add_argument("--fast", default="interval=0.05,timeout=0.1,down=3,up=5",
                        help="the faster check profile (default interval=0.05,timeout=0.1,down=3,up=5)")
    parser.add_argument("--soak", type=float, default=0, help="seconds of the false-failover soak (0: none)")
    parser.add_argument("--loss", type=int, default=5, help="percent dropped at random during the soak (default 5)")
    parser.add_argument("--write", action="store_true", help="store the result in BENCHMARKS.md")
    args = parser.parse_args()
    checks = {"default": HealthCheck(), "fast": parse_check(args.fast)}
    if args.runs:
        publish("Failover gap (markroute run, default checks)", gaps(checks["default"], args.runs))
        publish("Failover gap (markroute run, fast check profile)", gaps(checks["fast"], args.runs))
    if args.soak:
        publish(f"False failovers under {args.loss}% random loss", soak(checks, args.soak, args.loss))


if __name__ == "__main__":
    main()
