"""How long `check` and `plan` take for a config with a 100,000-prefix set, and with 10,000 policies.

Goal (issue 2): plan in well under two seconds. Measures the in-process pipeline stages
and the whole CLI as a user runs it (interpreter start-up included).

Second section (issue 15, `--part policies`): the CLI `check` and `plan --format nft` of
configs with 1,000 and 10,000 policies (a quarter each: source /28s, destination /24s,
destination ports, input interfaces; alternately via two uplinks and a balance group),
beside `nft -c -f` of the ruleset that plan prints (nft parsing and checking it against
the kernel of a lab namespace without loading it) as a reference for what handling that
many rules costs. All six measured in a new random order each round; the 10x ratio is
paired within a round.

Run (root for the second section): python3 benchmarks/bench_plan.py [--write] [--part all|set|policies] [--rounds N]
"""

from __future__ import annotations

import ipaddress
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from common import BIG_SET_CONFIG as CONFIG  # noqa: E402
from common import compile_bytecode, publish, random_prefixes, summary  # noqa: E402

PREFIXES = 100_000
RUNS = 5



def timed(func) -> list[float]:
    samples = []
    for _ in range(RUNS):
        start = time.perf_counter()
        func()
        samples.append(time.perf_counter() - start)
    return samples


def option(name: str, default: str) -> str:
    return sys.argv[sys.argv.index(name) + 1] if name in sys.argv else default


def main() -> None:
    part = option("--part", "all")
    compile_bytecode()
    if part in ("all", "set"):
        big_set()
    if part in ("all", "policies"):
        many_policies(int(option("--rounds", "7")))


def policies_config(count: int) -> str:
    """COUNT distinct policies of four kinds, none of them the same match twice."""
    lines = ["uplinks:", "  isp_a: {interface: wan0, gateway: 10.0.0.1, nat: masquerade}",
             "  isp_b: {interface: wan1, gateway: 10.0.1.1, nat: masquerade}",
             "groups:", "  both: {balance: {isp_a: 1, isp_b: 1}}", "policies:"]
    for i in range(count):
        via = ("isp_a", "isp_b", "both")[i % 3]
        n = i // 4
        match = (f"from: {ipaddress.IPv4Address(int(ipaddress.IPv4Address('10.64.0.0')) + 16 * n)}/28",
                 f"to: {ipaddress.IPv4Address(int(ipaddress.IPv4Address('10.128.0.0')) + 256 * n)}/24",
                 f"dport: {1024 + n}", f"iif: vl{n}")[i % 4]
        lines.append(f"  - {{name: p{i}, {match}, via: {via}}}")
    return "\n".join(lines) + "\n"


def many_policies(rounds: int) -> None:
    from markroute.lab import Lab

    sizes = (1_000, 10_000)
    samples: dict[tuple[str, int], list[float]] = {}
    cpu: dict[tuple[str, int], list[float]] = {}
    with tempfile.TemporaryDirectory() as tmp, Lab() as lab:
        ns = lab.add_ns("check")
        jobs = []
        for size in sizes:
            config = Path(tmp) / f"p{size}.yaml"
            config.write_text(policies_config(size))
            ruleset = Path(tmp) / f"p{size}.nft"
            ruleset.write_text(subprocess.run([sys.executable, "-m", "markroute", "plan", "--format", "nft", "-c",
                                               str(config)], check=True, capture_output=True, text=True).stdout)
            jobs += [
                (("markroute check", size), [sys.executable, "-m", "markroute", "check", "-c", str(config)]),
                (("markroute plan --format nft", size),
                 [sys.executable, "-m", "markroute", "plan", "--format", "nft", "-c", str(config)]),
                (("nft -c -f (the planned ruleset)", size), ["ip", "netns", "exec", ns, "nft", "-c", "-f", str(ruleset)]),
            ]
        shuffle = random.Random(15)
        for _ in range(rounds):
            shuffle.shuffle(jobs)
            for key, argv in jobs:
                start, used = time.perf_counter(), children_cpu()
                subprocess.run(argv, check=True, capture_output=True)
                samples.setdefault(key, []).append(time.perf_counter() - start)
                cpu.setdefault(key, []).append(children_cpu() - used)
    names = ("markroute check", "markroute plan --format nft", "nft -c -f (the planned ruleset)")
    load = Path("/proc/loadavg").read_text().split()[:3]
    body = (f"{rounds} rounds, the six commands in a new random order each round; median (min-max) of wall and CPU "
            "time (user + system of the process and its children: the steadier figure on a shared machine, "
            f"load average {' '.join(load)} at the end). "
            "The ratio is 10,000 policies over 1,000, paired within a round (10 would be linear).\n\n"
            "| command | 1,000 policies: wall | CPU | 10,000 policies: wall | CPU | 10,000 / 1,000 (CPU) |\n"
            "|---|---|---|---|---|---|\n")
    for name in names:
        small, big = cpu[(name, sizes[0])], cpu[(name, sizes[1])]
        ratio = [b / a for a, b in zip(small, big)]
        body += (f"| {name} | {ms(samples[(name, sizes[0])])} | {ms(small)} | {ms(samples[(name, sizes[1])])} "
                 f"| {ms(big)} | {statistics.median(ratio):.1f} ({min(ratio):.1f}-{max(ratio):.1f}) |\n")
    publish("Plan and check with 1,000 and 10,000 policies", body)


def children_cpu() -> float:
    """CPU seconds of every waited-for child so far."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def ms(samples: list[float]) -> str:
    return f"{statistics.median(samples) * 1000:,.0f} ms ({min(samples) * 1000:,.0f}-{max(samples) * 1000:,.0f})"


def big_set() -> None:
    from markroute.compile import compile_plan
    from markroute.config import load_model
    from markroute.plan import nfttext

    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "big.txt").write_text("\n".join(random_prefixes(PREFIXES)) + "\n")
        config = Path(tmp) / "markroute.yaml"
        config.write_text(CONFIG)
        model, _ = load_model(str(config))
        assert model is not None
        rows = [
            ("load + validate (check)", timed(lambda: load_model(str(config)))),
            ("compile to Plan", timed(lambda: compile_plan(model))),
            # a fresh plan each time: a plan formats its set elements as text once, on first use
            ("compile + render nft text", timed(lambda: nfttext.render(compile_plan(model).nft_document()))),
        ]
        for label, args in (("CLI `markroute check`", ["check"]), ("CLI `markroute plan --format nft`", ["plan", "--format", "nft"])):
            rows.append((label, timed(lambda a=args: subprocess.run(
                [sys.executable, "-m", "markroute", *a, "-c", str(config)], check=True, capture_output=True))))
    body = f"Config: 2 uplinks, a `sets:` file of {PREFIXES:,} random IPv4 prefixes used by one policy, a balance group.\n\n"
    body += "| stage | time |\n|---|---|\n" + "".join(f"| {label} | {summary(s)} |\n" for label, s in rows)
    publish("Plan and check with 100,000 prefixes", body)


if __name__ == "__main__":
    main()
