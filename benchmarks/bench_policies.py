"""How `check`, `plan` and the compile of `apply` grow with the number of policies (issue 15).

Goal: `check` and `plan` of 10,000 policies each under 3 s, and ten times the policies
costing at most twelve times the time. The config gives every policy its own `to:`,
every other /24 from 11.0.0.0, so no two destinations touch; the other fields vary in
runs of eight, so runs of one shape merge into a verdict map and others (DSCP with a
port) stay rules of their own; every 50th policy repeats an earlier one's
destination with a port, hidden when that policy matched its destination alone, so the
shadowed-policy check has something to find.

Without --mixed every policy is `to:` alone, the issue's config.
With --apply (root) the config is also applied in a lab namespace with the two uplinks'
interfaces, onto a router without markroute each time: the CLI `apply` (wall and CPU
time, the post-apply checks included), then again with one more policy that has a set of
its own (a re-apply of a changed config: chains rewritten, that set added), and, in-process,
the stages of a first apply (load, compile, the kernel apply and the nf_tables transactions
in it), as benchmarks/bench_apply.py does.
"Time" is wall time unless a row says CPU; the load averages before and after are noted.
Run: python3 benchmarks/bench_policies.py [--mixed] [--apply] [--write] [--runs N] [--counts 1000,10000]
     python3 benchmarks/bench_policies.py --config N [--mixed] > FILE   (just write the config, for profiling)
"""

from __future__ import annotations

import gc
import ipaddress
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import compile_bytecode, publish  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
MIXED = "--mixed" in sys.argv
HEADER = """\
uplinks:
  isp_a: {interface: wan0, gateway: 10.0.0.1, gateway6: "fe80::1", nat: masquerade}
  isp_b: {interface: wan1, gateway: 10.0.1.1, nat: masquerade}
groups:
  both:
    balance: {isp_a: 1, isp_b: 1}
policies:
"""
FIRST = int(ipaddress.ip_address("11.0.0.0"))
VIAS = ("isp_a", "isp_b", "both")
# The shapes a run of eight policies takes in turn; `{to}` is the policy's own /24.
SHAPES = (
    "to: {to}",
    "to: {to}, dport: {port}",
    "to: {to}, proto: udp, dport: [{port}, {port2}]",
    "from: 172.16.{low}.0/24, to: {to}",
    "to: {to}, iif: lan{low}",
    "to: {to}, proto: tcp",
    "to: {to}, dscp: {dscp}, dport: {port}",
    "to: {to}, mac: \"02:00:00:00:{high:02x}:{low:02x}\", proto: tcp",
    "to: {to}, sport: {port}-{port2}",
)


def destination(index: int) -> str:
    """The `index`th of every other /24 from 11.0.0.0."""
    return f"{ipaddress.ip_address(FIRST + 2 * index * 256)}/24"


def policies_config(count: int, mixed: bool) -> str:
    """A config of `count` policies: each `to:` alone (the issue's config), or `mixed` shapes (module docstring)."""
    lines = [HEADER]
    for index in range(count):
        if not mixed:
            lines.append(f"  - {{name: p{index}, to: {destination(index)}, via: {VIAS[index % 3]}}}\n")
            continue
        fields = {"to": destination(index), "port": 1000 + index % 5000, "port2": 7000 + index % 5000,
                  "low": index % 256, "high": index // 256 % 256, "dscp": index % 64}
        if index % 50 == 49:  # hidden when policy index - 49 matched its destination alone
            match = f"to: {destination(index - 49)}, dport: 443"
        else:
            match = SHAPES[index // 8 % len(SHAPES)].format(**fields)
        lines.append(f"  - {{name: p{index}, {match}, via: {VIAS[index % 3]}}}\n")
    return "".join(lines)


def timed(func: Callable[[], object], runs: int) -> list[float]:
    """Wall times of FUNC, with the cyclic garbage collector paused as `check` and `plan` run."""
    samples = []
    for _ in range(runs):
        gc.collect()
        gc.disable()
        start = time.perf_counter()
        try:
            func()
        finally:
            samples.append(time.perf_counter() - start)
            gc.enable()
    return samples


def cli(args: list[str]) -> Callable[[], object]:
    """A markroute command as a user runs it; `check` exits 0 (warnings only).

    Run in ROOT: `python -m` looks in the working directory first, so started from
    another checkout it would time that checkout's markroute, whatever PYTHONPATH says.
    """
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return lambda: subprocess.run([sys.executable, "-m", "markroute", *args], check=True, capture_output=True,
                                  env=env, cwd=ROOT)


def stages(config: Path, runs: int) -> list[tuple[str, list[float]]]:
    """In-process stages: YAML, the whole load (with warnings), the shadowed-policy check, compile, search."""
    from ruamel.yaml import YAML

    from markroute.commands.check import simulated_warnings
    from markroute.compile import compile_plan
    from markroute.config import load_model
    from markroute.config.source import load

    model, _ = load_model(str(config))
    assert model is not None
    text = config.read_text()
    rows = [
        ("YAML to nodes (config/source.py)", timed(lambda: load(str(config)), runs)),
        ("ruamel's C compose alone (the C path before the event reader)", timed(lambda: YAML(typ="safe", pure=False).compose(text),
                                                                 runs)),
        ("ruamel's pure-Python compose instead (before issue 15)",
         timed(lambda: YAML(typ="safe", pure=True).compose(text), runs)),
    ]
    return rows + [
        ("load + validate, warnings included", timed(lambda: load_model(str(config)), runs)),
        ("of which shadowed-policy check (uncached)", timed(lambda: shadowed_uncached(model), runs)),
        ("compile to Plan (apply compiles the same)", timed(lambda: compile_plan(model), runs)),
        ("compile + reachability search of check (sim/reach.py, as commands/check.py asks it)",
         timed(lambda: list(simulated_warnings(model)), runs)),
    ]


def apply_rows(configs: dict[int, Path], runs: int) -> dict[str, dict[int, list[float]]]:
    """`apply` of each config in a lab namespace: the CLI, then its stages in-process (module docstring)."""
    from bench_apply import child, transaction_seconds

    from markroute.kernel.down import down
    from markroute.kernel.netns import inside
    from markroute.lab import Lab

    table: dict[str, dict[int, list[float]]] = {}
    with Lab() as lab:
        ns, peer = lab.add_ns("apply"), lab.add_ns("peer")
        for k in (0, 1):
            lab.veth(ns, f"wan{k}", peer, f"up{k}")
            lab.addr(ns, f"wan{k}", f"10.0.{k}.2/24")
        for count, config in configs.items():
            for _ in range(runs):
                with inside(ns):
                    down(ns)
                wall, cpu, _, _ = child([sys.executable, "-m", "markroute", "apply", "-c", str(config), "--netns", ns])
                table.setdefault("CLI `markroute apply` (onto a router without markroute)", {}).setdefault(
                    count, []).append(wall)
                table.setdefault("of which CPU time", {}).setdefault(count, []).append(cpu)
                wall, cpu, _, _ = child([sys.executable, "-m", "markroute", "apply", "-c", str(with_a_set(config)),
                                         "--netns", ns])
                table.setdefault("CLI `markroute apply` again, one more policy with a set of its own (a re-apply)",
                                 {}).setdefault(count, []).append(wall)
                table.setdefault("of which CPU time (the re-apply)", {}).setdefault(count, []).append(cpu)
                with inside(ns):
                    down(ns)
                stages: dict[str, list[float]] = {}
                transaction_seconds(ns, config, stages)
                for name, samples in stages.items():
                    label = f"apply in-process: {name}" if not name.startswith("of which") else name
                    table.setdefault(label, {}).setdefault(count, []).extend(samples)
        with inside(ns):
            down(ns)
    return table


def with_a_set(config: Path) -> Path:
    """CONFIG with one more policy, first, sending a one-prefix set of its own through isp_a: what
    a re-apply of a changed config costs (`nft.table_rewrite`), written beside CONFIG."""
    (config.parent / "extra.txt").write_text("198.51.100.0/24\n")
    changed = config.with_name(f"{config.stem}-and-a-set.yaml")
    changed.write_text(config.read_text().replace(
        "policies:\n", f"sets:\n  extra: {{file: {config.parent / 'extra.txt'}}}\n"
                        "policies:\n  - {name: extra, to: '@extra', via: isp_a}\n", 1))
    return changed


def shadowed_uncached(model: object) -> None:
    """The shadowed-policy check as load_model runs it, not the result it keeps for `check`'s second ask."""
    from markroute.config import warnings

    warnings._last = None
    list(warnings.shadowed_policies(model))  # type: ignore[arg-type]


def median(samples: list[float]) -> str:
    return f"{statistics.median(samples) * 1000:,.0f} ms ({min(samples) * 1000:,.0f}-{max(samples) * 1000:,.0f})"


def main() -> None:
    if "--config" in sys.argv:
        sys.stdout.write(policies_config(int(sys.argv[sys.argv.index("--config") + 1]), MIXED))
        return
    runs = int(sys.argv[sys.argv.index("--runs") + 1]) if "--runs" in sys.argv else 3
    counts = [int(c) for c in sys.argv[sys.argv.index("--counts") + 1].split(",")] if "--counts" in sys.argv \
        else [1000, 10000]
    compile_bytecode()
    table: dict[str, dict[int, list[float]]] = {}
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        configs: dict[int, Path] = {}
        for count in counts:
            config = configs[count] = Path(tmp) / f"policies-{count}.yaml"
            config.write_text(policies_config(count, MIXED))
            rows = [("CLI `markroute check`", timed(cli(["check", "-c", str(config)]), runs)),
                    ("CLI `markroute plan`", timed(cli(["plan", "-c", str(config)]), runs)),
                    *stages(config, runs)]
            for label, samples in rows:
                table.setdefault(label, {})[count] = samples
        if "--apply" in sys.argv:
            table.update(apply_rows(configs, runs))
    load_after = os.getloadavg()
    head = "| stage | " + " | ".join(f"{c:,} policies" for c in counts)
    if len(counts) > 1:
        head += f" | {counts[-1] // counts[0]}x the policies costs"
    lines = [head + " |", "|---" * (len(counts) + 1 + (len(counts) > 1)) + "|"]
    for label, by_count in table.items():
        cells = [median(by_count[c]) for c in counts]
        if len(counts) > 1:
            ratio = statistics.median(by_count[counts[-1]]) / statistics.median(by_count[counts[0]])
            cells.append(f"{ratio:.1f}x")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    shape = ("other fields varied in runs of eight (some merge into verdict maps, DSCP with a port stays rules), "
             "every 50th policy shadowed by an earlier one" if MIXED else "nothing else (one verdict map)")
    body = (f"Config: `benchmarks/bench_policies.py --config N{' --mixed' if MIXED else ''}`: 2 uplinks, a balance "
            f"group, N policies, each with its own `to:` (every other /24 from 11.0.0.0), {shape}. "
            f"{runs} runs each; median (min-max). Load average (1, 5, 15 min) before: "
            f"{', '.join(f'{x:.1f}' for x in load_before)}; after: {', '.join(f'{x:.1f}' for x in load_after)}.\n\n"
            + "\n".join(lines) + "\n")
    publish(f"Plan and check with many policies{', mixed shapes' if MIXED else ''}", body)


if __name__ == "__main__":
    main()
