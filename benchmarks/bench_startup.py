"""Start-up time of the `markroute` command: `--version` and `plan` of a small config.

Run: python3 benchmarks/bench_startup.py [--write] [--runs N]

Wall time is what a user waits; CPU time (user + system of the process) is what the
command costs and stays meaningful when other work shares the machine. The bare
interpreter (`python3 -c pass`) is the floor every Python command pays. The heaviest
imports of `plan` come from `python -X importtime`.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import compile_bytecode, publish  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
COMMANDS = {
    "`python3 -c pass` (interpreter floor)": ["-c", "pass"],
    "`markroute --version`": ["-m", "markroute", "--version"],
    "`markroute plan -c examples/dual-stack.yaml`": ["-m", "markroute", "plan", "-c", "examples/dual-stack.yaml"],
    "`markroute check -c examples/004-balance-two-wans.yaml`": ["-m", "markroute", "check", "-c",
                                                                "examples/004-balance-two-wans.yaml"],
}


def run(args: list[str]) -> tuple[float, float]:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, *args], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    if os.waitstatus_to_exitcode(status) not in (0, 1):
        raise RuntimeError(f"{args} failed")
    return time.perf_counter() - start, usage.ru_utime + usage.ru_stime


def heaviest_imports(count: int = 6) -> list[tuple[str, float]]:
    """The top-level imports of `plan` that take longest (cumulative), from -X importtime."""
    args = [sys.executable, "-X", "importtime", "-m", "markroute", "plan", "-c", "examples/dual-stack.yaml"]
    err = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=str(ROOT))).stderr
    found = []
    for line in err.splitlines():
        if not line.startswith("import time:") or "cumulative" in line:
            continue
        _, _, cumulative, name = (part.strip() for part in line.replace("import time:", "|").split("|"))
        if not name.startswith(" ") and len(name) - len(name.lstrip()) <= 2:
            found.append((name.strip(), int(cumulative) / 1000))
    return sorted(found, key=lambda item: -item[1])[:count]


def main() -> None:
    runs = int(sys.argv[sys.argv.index("--runs") + 1]) if "--runs" in sys.argv else 20
    compile_bytecode()
    for args in COMMANDS.values():
        run(args)  # files in the page cache
    results: dict[str, list[tuple[float, float]]] = {name: [] for name in COMMANDS}
    for _ in range(runs):
        for name, args in COMMANDS.items():
            results[name].append(run(args))
    rows = []
    for name, samples in results.items():
        walls, cpus = [w * 1000 for w, _ in samples], [c * 1000 for _, c in samples]
        rows.append(f"| {name} | {statistics.median(walls):.0f} ms ({min(walls):.0f}-{max(walls):.0f}) "
                    f"| {statistics.median(cpus):.0f} ms ({min(cpus):.0f}-{max(cpus):.0f}) |")
    imports = ", ".join(f"`{name}` {ms:.0f} ms" for name, ms in heaviest_imports())
    body = (
        f"{runs} runs each, in rotation, after one warm-up run; median (min-max). Goal: under 300 ms.\n\n"
        "| command | wall | CPU (user + system) |\n|---|---|---|\n" + "\n".join(rows) + "\n\n"
        f"Heaviest imports of `plan` (cumulative, one run of `python -X importtime`): {imports}. "
        "Subcommands load their modules only when run (`markroute.cli.LazyGroup`), and `plan` "
        "never imports the kernel layer, pyroute2 or the simulator.\n"
    )
    publish("Start-up of the markroute command", body)


if __name__ == "__main__":
    main()
