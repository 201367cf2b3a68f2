"""How fast `markroute trace` answers: single traces, the bare interpreter, and --flows sampling.

Goal (issue 4): at least 100,000 flows per second for `--flows` sampling. Measured on
the seed-like example plans and on a plan whose policy uses a 100,000-prefix set:

* compile: plan -> simulator (the ruleset compiled to closures and lookup structures);
* trace: what `markroute trace` computes for one flow (every path, steps recorded, the
  reply walked too), flows with varying addresses so nothing is reused;
* walk: one walk of a first packet, no steps, no reply (the interpreter itself);
* sample: `--flows` over 1,000,000 new connections of one balanced flow.

Run: python3 benchmarks/bench_trace.py [--write]
"""

from __future__ import annotations

import random
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_plan import CONFIG as BIG  # noqa: E402
from common import ROOT, publish, random_prefixes  # noqa: E402

from markroute import sim  # noqa: E402
from markroute.compile import compile_plan  # noqa: E402
from markroute.config import load_model  # noqa: E402
from markroute.plan import Plan  # noqa: E402
from markroute.sim.packet import Flow, make_flow  # noqa: E402
from markroute.sim.sample import split  # noqa: E402
from markroute.sim.trace import Simulator, _Script  # noqa: E402

SECONDS = 1.0
SAMPLED = 1_000_000
# Per plan: the host's addresses (--addr), main's routes (--route), and the LAN side flows come from.
HOSTS = {
    "000-destination-via-isp-a": (["lan0=192.168.1.1/24", "eth0=10.0.0.2/24", "eth1=10.0.1.2/24"], "lan0",
                                  "192.168.1.0/24"),
    "001-mail-via-cheap-link": (["lan0=192.168.1.1/24", "ppp0=100.64.0.2/32", "wan0=198.51.100.2/24"], "lan0",
                                "192.168.1.0/24"),
    "002-reply-via-second-router": (["eth0=192.168.10.50/24"], "eth0", "203.0.113.0/24"),
    "003-multihomed-host": (["eth0=10.10.0.5/24", "eth1=10.20.0.5/24"], "eth1", "203.0.113.0/24"),
    "004-balance-two-wans": (["eth0=172.17.0.1/16", "eth1=192.168.0.109/24", "eth2=192.168.29.2/24"], "eth0",
                             "172.17.0.0/16"),
    "100k-prefix set": (["lan0=192.168.1.1/24", "wan0=10.0.0.2/24", "wan1=10.0.1.2/24"], "lan0", "192.168.1.0/24"),
}


def flows(source_net: str, iif: str, count: int, seed: int) -> list[Flow]:
    """Flows with random sources in the LAN, random destinations, protocols and ports."""
    import ipaddress

    rng = random.Random(seed)
    network = ipaddress.ip_network(source_net)
    made = []
    for _ in range(count):
        src = str(network[rng.randint(2, network.num_addresses - 2)])
        dst = f"{rng.randint(1, 223)}.{rng.randint(0, 255)}.{rng.randint(0, 255)}.{rng.randint(1, 254)}"
        proto = rng.choice(("tcp", "udp"))
        made.append(make_flow(src, dst, proto, rng.randint(1024, 65535), rng.choice((25, 53, 80, 443)), iif))
    return made


def rate(work: Callable[[Flow], object], cases: list[Flow]) -> float:
    """Calls per second of `work` over `cases`, cycling until SECONDS have passed."""
    done = 0
    start = time.perf_counter()
    while time.perf_counter() - start < SECONDS:
        work(cases[done % len(cases)])
        done += 1
    return done / (time.perf_counter() - start)


def measure(name: str, plan: Plan) -> str:
    addresses, iif, lan = HOSTS[name]
    start = time.perf_counter()
    simulator: Simulator = sim.offline(plan, addresses, ["default via 10.255.255.1 dev lo"])
    compiled = time.perf_counter() - start
    cases = flows(lan, iif, 2000, seed=len(name))
    traces = rate(lambda flow: simulator.paths(flow), cases)
    walks = rate(lambda flow: simulator.walk(flow, _Script(()), None, with_reply=False), cases)
    balanced = max(cases[:50], key=lambda flow: len(simulator.explore(flow, record=False)))
    leaves = simulator.explore(balanced, record=False)
    sampling = "one outcome: nothing to draw"
    if len(leaves) > 1:
        start = time.perf_counter()
        split(leaves, SAMPLED, seed=1)
        sampling = f"{SAMPLED / (time.perf_counter() - start):,.0f}"
    return f"| {name} | {compiled * 1000:.1f} ms | {traces:,.0f} | {walks:,.0f} | {len(leaves)} | {sampling} |"


def main() -> None:
    rows = []
    for path in sorted((ROOT / "examples").glob("00*.yaml")):
        model, _ = load_model(str(path))
        assert model is not None, path
        rows.append(measure(path.stem, compile_plan(model)))
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "big.txt").write_text("\n".join(random_prefixes(100_000)) + "\n")
        (Path(tmp) / "markroute.yaml").write_text(BIG)
        model, _ = load_model(str(Path(tmp) / "markroute.yaml"))
        assert model is not None
        rows.append(measure("100k-prefix set", compile_plan(model)))
    body = "\n".join([
        "| plan | compile | traces/s (all paths, steps, reply) | walks/s (bare interpreter) | "
        "paths of the sampled flow | --flows sampling, flows/s |",
        "| --- | --- | --- | --- | --- | --- |",
        *rows,
    ])
    body += (
        "\n\nA trace explores every numgen/multipath choice and also walks the reply (for the rp_filter"
        " answer); `--flows` then samples new connections from the tree of those choices instead of"
        " re-running the interpreter per connection, since a fixed flow differs between connections"
        " only in what numgen draws."
    )
    publish("markroute trace: simulator speed", body)


if __name__ == "__main__":
    main()
