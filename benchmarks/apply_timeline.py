"""One CLI `markroute apply`, its stages timed: where the wall and CPU time go (bench_apply --part timeline).

Run by bench_apply.py as a child process:
    python3 benchmarks/apply_timeline.py NETNS CONFIG
Runs `markroute apply -c CONFIG --netns NETNS` in this process as the command line does
(`markroute.cli.main`), with the stages below wrapped to note when each started (ms
since this script started), how long it took and the CPU time of its thread. The set
elements are inserted in apply's filling thread (`NewTable.fill`), the rest in the main
thread. Prints, as its last line, one JSON object: the stages, the imports (everything
`apply` imports before it runs, done here first so they are one figure) and the
process's CPU time, and its children's (the nft processes).
"""

from __future__ import annotations

import importlib
import json
import resource
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

START, START_CPU = time.perf_counter(), time.process_time()
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

STAGES = (
    ("markroute.commands.apply", "load_model_or_exit", "read and validate the config and set file"),
    ("markroute.compile", "compile_plan", "compile"),
    ("markroute.kernel.waiting", "current_survey", "survey links, addresses and routes"),
    ("markroute.kernel.apply", "NewTable.fill", "fill the new table's sets (filling thread)"),
    ("markroute.kernel.nftnetlink", "update", "of which the element batch (built, sent, committed)"),
    ("markroute.kernel.apply", "_Apply.converge", "sysctls, routes, rules, the table, the record"),
    ("markroute.kernel.apply", "NewTable.wait", "of which waiting for the filling thread"),
    ("markroute.kernel.digest", "nft_digest", "the plan's nftables digest"),
    ("markroute.kernel.nft", "_run_side_by_side", "an nft process (or processes side by side)"),
    ("markroute.kernel.nft", "table_structure", "the table listed (nft, json.loads)"),
    ("markroute.kernel.nft", "normalise", "a listing normalised"),
    ("markroute.kernel.nft", "shape", "a listing's or plan's shape"),
    ("markroute.kernel.state", "save", "of which state.json written"),
    ("markroute.kernel.ha", "restore_hold", "the HA hold restored"),
    ("markroute.kernel.apply", "_Apply.record", "of which the state record"),
    ("markroute.daemon.dnsmasq", "sync", "dnsmasq domain sets"),
    ("markroute.commands.apply", "neighbour_warnings", "post-apply neighbour check"),
)
IMPORTS = ("markroute.cli", "markroute.commands.apply", "markroute.compile", "markroute.config",
           "markroute.daemon.dnsmasq", "markroute.kernel.environment", "markroute.kernel.waiting",
           "markroute.kernel.gateways", "markroute.kernel.interrupt")


def wrapped(function: Callable[..., Any], label: str, found: list[dict[str, Any]]) -> Callable[..., Any]:
    def timed(*args: Any, **kwargs: Any) -> Any:
        begin, cpu = time.perf_counter(), time.thread_time()
        try:
            return function(*args, **kwargs)
        finally:
            found.append({"stage": label, "start": (begin - START) * 1000, "wall": (time.perf_counter() - begin) * 1000,
                          "cpu": (time.thread_time() - cpu) * 1000, "thread": threading.current_thread().name})
    return timed


def main() -> None:
    netns, config = sys.argv[1:3]
    found: list[dict[str, Any]] = []
    for name in IMPORTS:
        importlib.import_module(name)
    imported = {"wall": (time.perf_counter() - START) * 1000, "cpu": (time.process_time() - START_CPU) * 1000}
    for module_name, path, label in STAGES:
        owner: Any = importlib.import_module(module_name)
        *outer, attribute = path.split(".")
        for part in outer:
            owner = getattr(owner, part)
        setattr(owner, attribute, wrapped(getattr(owner, attribute), label, found))
    from markroute.cli import main as cli

    try:
        cli(["apply", "-c", config, "--netns", netns], standalone_mode=False)
    finally:
        children = resource.getrusage(resource.RUSAGE_CHILDREN)
        print(json.dumps({"imports": imported, "stages": found, "end": (time.perf_counter() - START) * 1000,
                          "cpu": (time.process_time() - START_CPU) * 1000,
                          "children": (children.ru_utime + children.ru_stime) * 1000}))


if __name__ == "__main__":
    main()
