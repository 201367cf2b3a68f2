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

Run as root (it builds namespaces): python3 benchmarks/bench_failover.py [--runs N] [--write]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from common import publish  # noqa: E402
from daemon_helpers import DaemonLab, daemon_lab  # noqa: E402

from markroute.model import HealthCheck  # noqa: E402

CONFIG = """
uplinks:
  isp_a: {interface: wan0, gateway: 10.0.0.1, nat: masquerade}
  isp_b: {interface: wan1, gateway: 10.0.1.1, nat: masquerade}
groups:
  primary: {failover: [isp_a, isp_b]}
policies:
  - {name: rest, to: 203.0.113.0/24, via: primary}
"""
SETTLE = 6.0  # seconds between runs, so flap damping never holds isp_a down


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=7, help="failures of each kind (default 7)")
    parser.add_argument("--write", action="store_true", help="store the result in BENCHMARKS.md")
    args = parser.parse_args()
    results: dict[str, tuple[list[float], list[float]]] = {"upstream": ([], []), "link": ([], [])}
    with tempfile.TemporaryDirectory() as tmp, daemon_lab(Path(tmp)) as d:
        d.start(d.write(CONFIG))
        d.wait_states({"isp_a": "up", "isp_b": "up"})
        for how, (gaps, detections) in results.items():
            for _ in range(args.runs):
                time.sleep(SETTLE)
                gap, detection = one_run(d, how)
                gaps.append(gap)
                detections.append(detection)
    check = HealthCheck()
    body = (
        f"Default check: ICMP to the gateway every {check.interval:g} s, timeout {check.timeout:g} s, down after "
        f"{check.down} unanswered rounds, up after {check.up} answered ones. A UDP flow sends every 10 ms through "
        "the failover group [isp_a, isp_b]; the gap is its longest silence, from the last answer through isp_a "
        "to the first through isp_b.\n\n"
        "| isp_a fails by | median | worst | best | runs |\n|---|---|---|---|---|\n"
    )
    for how, label in (("upstream", "upstream dead, link up: flow gap"), ("link", "link down: flow gap")):
        body += row(label, results[how][0])
    body += row("upstream dead: until declared down", results["upstream"][1])
    body += row("link down: until declared down", results["link"][1])
    publish("Failover gap (markroute run, default checks)", body)


if __name__ == "__main__":
    main()
