"""Where the kernel spends forwarding CPU: perf profiles of bench_dataplane's configurations, per packet.

Run (root, with `perf`): python3 benchmarks/profile_dataplane.py [--write] [--established] [--rounds N]
    [--top N] [CONFIGURATION ...]

CONFIGURATION: names of `bench_dataplane.py` configurations (as its table prints them; a
unique start is enough), the first being the one the others are compared with. Default:
markroute, its `connection_records: false` twin, pbr-style and the floor, at 1 policy.

A paired ratio in bench_dataplane says *that* one ruleset costs more than another, not
*where*. This script builds the same lab (one router namespace per configuration), sends
the same traffic (first packets: every frame a new connection; with --established: the
4,096 flows after each has seen a reply) from both CPUs, and records every CPU with
`perf record -a` (cpu-clock, 20 kHz) for the time of each burst. Samples of each kernel
symbol are counted per 1,000 packets the router forwarded (one sample = 50 µs of CPU, so
1.0 here is 0.05 µs per packet) and summed over the rounds; the idle loop is left out.
Rows: the symbols whose count differs most between the first configuration and the others.

What it is for: a difference a symbol alone explains (`nf_ct_ext_add`: a conntrack
extension allocated per new connection; `nft_lookup_eval`: a set or map lookup;
`__inet_dev_addr_type`: a `fib daddr type` check) names its cause; compare the totals with
care, they include the generator's own sending and vary more between rounds than the
per-symbol counts do. Use bench_dataplane's paired CPU ratios for how much.
"""

from __future__ import annotations

import re
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import bench_dataplane as dataplane  # noqa: E402
from common import publish, random_prefixes  # noqa: E402

from markroute.kernel.down import down  # noqa: E402
from markroute.kernel.netns import inside  # noqa: E402
from markroute.lab import Lab  # noqa: E402

DEFAULT = ("markroute, 1 policy", f"{dataplane.UNRECORDED}, 1 policy", "pbr-style, 1 policy", dataplane.FLOOR)
IDLE = {"pv_native_safe_halt", "default_idle", "cpuidle_enter_state", "intel_idle", "acpi_idle_do_entry"}
SAMPLE_LINE = re.compile(r"\s*[\d.]+%\s+(\d+)\s+\[k\]\s+(\S+)")


def chosen(names: list[str], prefixes: list[str]) -> list[dataplane.Variant]:
    """The named configurations of bench_dataplane (with its diagnostics), in the order given."""
    known = dataplane.variants(prefixes, extra=True)
    found = []
    for name in names:
        matching = [v for v in known if v.name == name] or [v for v in known if v.name.startswith(name)]
        if len(matching) != 1:
            sys.exit(f"{name!r} names {len(matching)} configurations of bench_dataplane.py: "
                     + "; ".join(v.name for v in known))
        found.append(matching[0])
    return found


def kernel_samples(data: Path) -> Counter[str]:
    """Samples per kernel symbol in a perf.data file."""
    out = subprocess.run(["perf", "report", "-i", str(data), "--sort", "symbol", "--no-children", "-n", "-q",
                          "--stdio"], capture_output=True, text=True, check=True).stdout
    counts: Counter[str] = Counter()
    for line in out.splitlines():
        m = SAMPLE_LINE.match(line)
        if m and m[2] not in IDLE:
            counts[m[2]] += int(m[1])
    return counts


def profile(lab: Lab, gen: str, k: int, variant: dataplane.Variant, binary: Path, flows: Path, replies: Path,
            established: bool, data: Path) -> int:
    """One burst through VARIANT's router (K) under perf; the packets it forwarded."""
    rtr = variant.router
    lab.run(rtr, ["conntrack", "-F"], check=False)
    if established:
        dataplane.blast(lab, gen, f"g{k}", binary, flows, 0.3, unique=False)
        lab.run(f"{lab.prefix}-s{k}", [str(binary), f"eth{variant.uplink}", str(replies), "0.2"])
    count = dataplane.sent(lab, rtr)
    perf = subprocess.Popen(["perf", "record", "-F", "20000", "-a", "-q", "-o", str(data), "--", "sleep", "1.5"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(0.2)  # perf is recording
    dataplane.blast(lab, gen, f"g{k}", binary, flows, 1.0, unique=not established)
    perf.wait()
    packets = dataplane.sent(lab, rtr) - count
    lab.run(rtr, ["conntrack", "-F"], check=False)  # the next router's bursts find no leftover entries in the shared hash
    return packets


def report(variants: list[dataplane.Variant], per_packet: dict[str, Counter[str]], rounds: int, established: bool,
           top: int) -> str:
    first = variants[0].name
    symbols = set().union(*per_packet.values())
    differs = sorted(symbols, key=lambda s: -max(abs(per_packet[first][s] - per_packet[v.name][s]) for v in variants))
    kind = "established packets (each flow has seen a reply)" if established else "first packets (new connections)"
    text = (f"Kernel samples (cpu-clock, 20 kHz, all CPUs) per 1,000 packets forwarded, {kind}, "
            f"summed over {rounds} rounds and divided by the packets of those rounds; 1.0 = 0.05 µs per packet. "
            f"The idle loop is left out. Load average: {' '.join(Path('/proc/loadavg').read_text().split()[:3])}.\n\n")
    names = [v.name for v in variants]
    text += "| symbol | " + " | ".join(names) + " |\n|---|" + "---|" * len(names) + "\n"
    text += "| all kernel symbols | " + " | ".join(f"{sum(per_packet[n].values()):.1f}" for n in names) + " |\n"
    for symbol in differs[:top]:
        text += f"| `{symbol}` | " + " | ".join(f"{per_packet[n][symbol]:.2f}" for n in names) + " |\n"
    return text


def main() -> None:
    if subprocess.run(["perf", "--version"], capture_output=True).returncode != 0:
        sys.exit("perf is not installed (Debian: apt install linux-perf)")
    established = "--established" in sys.argv
    rounds, top = int(dataplane.option("--rounds", 3)), int(dataplane.option("--top", 30))
    skip = {"--rounds", "--top"}
    names = [a for i, a in enumerate(sys.argv[1:], 1) if not a.startswith("--") and sys.argv[i - 1] not in skip]
    prefixes = random_prefixes(dataplane.PREFIXES, network=dataplane.DESTINATIONS, lengths=(26, 30))
    variants = chosen(names or list(DEFAULT), prefixes)
    samples = {v.name: Counter[str]() for v in variants}
    packets = dict.fromkeys(samples, 0)
    with tempfile.TemporaryDirectory() as directory, Lab() as lab:
        tmp = Path(directory)
        (tmp / "big.txt").write_text("\n".join(prefixes) + "\n")
        binary = tmp / "trafficgen"
        subprocess.run(["cc", "-O2", "-o", str(binary), str(dataplane.HERE / "trafficgen.c")], check=True)
        gen = dataplane.build(lab, len(variants))
        traffic = {scale: (tmp / f"flows{n}.bin", tmp / f"replies{n}.bin") for n, scale in enumerate(dataplane.SCALES)}
        for scale, (flows, replies) in traffic.items():
            dataplane.reply_frames(scale, prefixes, flows, replies)
        for k, variant in enumerate(variants):
            variant.router = f"{lab.prefix}-r{k}"
            variant.install(lab, variant.router, tmp)
        try:
            for r in range(rounds):
                for k, variant in enumerate(variants):
                    data = tmp / f"{k}.data"
                    flows, replies = traffic[variant.scale]
                    packets[variant.name] += profile(lab, gen, k, variant, binary, flows, replies, established, data)
                    samples[variant.name] += kernel_samples(data)
                print(f"round {r + 1}/{rounds} done", file=sys.stderr)
        finally:
            for variant in variants:
                if variant.name.startswith("markroute"):
                    with inside(variant.router):
                        down(variant.router)
    per_packet = {name: Counter({s: n * 1000 / max(packets[name], 1) for s, n in counts.items()})
                  for name, counts in samples.items()}
    section = "established packets" if established else "first packets"
    publish(f"Data plane profile: {section}", report(variants, per_packet, rounds, established, top))


if __name__ == "__main__":
    main()
