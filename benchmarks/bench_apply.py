"""How long `markroute apply` takes with 100,000 prefixes, and what a change of set contents costs.

Run (root): python3 benchmarks/bench_apply.py [--write] [--runs N]

In a lab namespace with two uplinks: a full apply onto a router without markroute
(the CLI as a user runs it: wall time, CPU time and peak memory of the process, with
markroute's bytecode compiled first, as `pip install` leaves it), an
apply of the unchanged config (no nf_tables transaction since, so nothing is listed), and
changes of set contents: 1,000 changed prefixes in the 100,000-prefix set, and 20 in a
5,000-prefix set; and a policy edited with the set file untouched (chains rewritten,
sets left alone). "Kernel transactions" is the time of the `nft -j -f` batches and the
netlink element batches (`markroute.kernel.nftnetlink`) that make a change live,
measured in-process around `nft.run_batch` and `nftnetlink.update`; the stages of a
full apply are timed in-process too. The last rows time nft 1.0.6 itself on element
updates of the big set: why elements go over netlink.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from common import BIG_SET_CONFIG as CONFIG  # noqa: E402
from common import compile_bytecode, publish, random_prefixes  # noqa: E402

from markroute.compile import compile_plan  # noqa: E402
from markroute.config import load_model  # noqa: E402
from markroute.kernel import apply as apply_module  # noqa: E402
from markroute.kernel import nft, nftnetlink  # noqa: E402
from markroute.kernel.down import down  # noqa: E402
from markroute.kernel.netns import inside  # noqa: E402
from markroute.lab import Lab  # noqa: E402
from markroute.plan.nftjson import address_element  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
PREFIXES = 100_000


def cli(netns: str, *args: str) -> tuple[float, float, float, str]:
    """(wall s, CPU s, peak RSS MB, stdout) of one `markroute` run."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "markroute", *args, "--netns", netns],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env, text=True)
    assert proc.stdout is not None
    output = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"markroute {' '.join(args)} failed: {output}")
    return wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024, output


def transaction_seconds(netns: str, config: Path, stages: dict[str, list[float]] | None = None) -> tuple[float, str]:
    """Apply CONFIG in-process; the time spent in kernel transactions and the change reported.

    STAGES, when given, collects the time of each stage: load + validate, compile, apply.
    """
    marks = [time.perf_counter()]
    model, _ = load_model(str(config))
    assert model is not None
    marks.append(time.perf_counter())
    plan = compile_plan(model)
    marks.append(time.perf_counter())
    spent: list[float] = []
    originals = nft.run_batch, nftnetlink.update

    def timing(function: Callable[..., None]) -> Callable[..., None]:
        def timed_call(*args: Any) -> None:
            start = time.perf_counter()
            function(*args)
            spent.append(time.perf_counter() - start)
        return timed_call

    nft.run_batch, nftnetlink.update = timing(originals[0]), timing(originals[1])  # type: ignore[assignment]
    try:
        with inside(netns):
            report = apply_module.apply(plan, netns)
    finally:
        nft.run_batch, nftnetlink.update = originals  # type: ignore[assignment]
    marks.append(time.perf_counter())
    if stages is not None:
        for name, begin, end in zip(("load + validate", "compile", "apply"), marks, marks[1:]):
            stages.setdefault(name, []).append(end - begin)
        stages.setdefault("of which kernel transactions", []).append(sum(spent))
    return sum(spent), "; ".join(report.changes)


def timed(func: Callable[[], Any]) -> float:
    start = time.perf_counter()
    func()
    return time.perf_counter() - start


def element_command(verb: str, elements: list[Any]) -> dict[str, Any]:
    """An nft JSON command on the big set's elements, for nft's own figures."""
    return {verb: {"element": {"family": "inet", "table": "markroute", "name": "big_v4", "elem": elements}}}


def ms(samples: list[float]) -> str:
    return f"{statistics.median(samples) * 1000:,.0f} ms ({min(samples) * 1000:,.0f}-{max(samples) * 1000:,.0f})"


def main() -> None:
    runs = int(sys.argv[sys.argv.index("--runs") + 1]) if "--runs" in sys.argv else 5
    compile_bytecode()
    prefixes = random_prefixes(PREFIXES)
    changed = prefixes[500:] + random_prefixes(500, seed=99, network="100.64.0.0/10", lengths=(24, 24))
    small = random_prefixes(5_000, seed=3)
    small_changed = small[10:] + random_prefixes(10, seed=98, network="100.64.0.0/10", lengths=(24, 24))
    rows: list[tuple[str, str, str, str]] = []
    with tempfile.TemporaryDirectory() as directory, Lab() as lab:
        tmp = Path(directory)
        ns, peer = lab.add_ns("apply"), lab.add_ns("peer")
        for k in (0, 1):
            lab.veth(ns, f"wan{k}", peer, f"up{k}")
            lab.addr(ns, f"wan{k}", f"10.0.{k}.2/24")
        config = tmp / "markroute.yaml"
        config.write_text(CONFIG)

        def use(lines: list[str]) -> None:
            (tmp / "big.txt").write_text("\n".join(lines) + "\n")

        walls: dict[str, list[float]] = {"fresh": [], "unchanged": [], "change": [], "policy": []}
        cpus: list[float] = []
        peaks: list[float] = []
        transactions: dict[str, list[float]] = {"fresh": [], "change": [], "small": []}
        stages: dict[str, list[float]] = {}
        paths: dict[str, str] = {}
        for _ in range(runs):
            with inside(ns):
                down(ns)
            use(prefixes)
            wall, cpu, peak, _ = cli(ns, "apply", "-c", str(config))
            walls["fresh"].append(wall)
            cpus.append(cpu)
            peaks.append(peak)
            walls["unchanged"].append(cli(ns, "apply", "-c", str(config))[0])
            use(changed)
            wall, _, peak, output = cli(ns, "apply", "-c", str(config))
            walls["change"].append(wall)
            peaks.append(peak)
            paths["change"] = output.splitlines()[0]
            config.write_text(CONFIG.replace("via: isp_b}", "via: isp_a}"))  # a policy edited, the set file not
            wall, _, _, output = cli(ns, "apply", "-c", str(config))
            walls["policy"].append(wall)
            paths["policy"] = output.splitlines()[0]
            config.write_text(CONFIG)
            cli(ns, "apply", "-c", str(config))
            use(prefixes)
            seconds, paths["back"] = transaction_seconds(ns, config)
            transactions["change"].append(seconds)
            with inside(ns):
                down(ns)
            transactions["fresh"].append(transaction_seconds(ns, config, stages)[0])
            use(small)
            transaction_seconds(ns, config)
            use(small_changed)
            seconds, paths["small"] = transaction_seconds(ns, config)
            transactions["small"].append(seconds)
        use(prefixes)
        with inside(ns):
            down(ns)
        transaction_seconds(ns, config)  # the big set again, for nft's own figures
        with inside(ns):
            elements = next(o["set"]["elem"] for o in nft.list_table("markroute") or [] if "set" in o)
            model, _ = load_model(str(config))
            assert model is not None
            intervals = model.sets["big"].v4
            gaps = [(hi + 1, hi + 1) for (_, hi), (lo, _) in zip(intervals, intervals[1:]) if hi + 1 < lo]
            extra = [address_element(4, gap) for gap in gaps[::len(gaps) // 500][:500]]
            add_500 = timed(lambda: nft.run_batch([element_command("add", extra)]))
            delete_20 = timed(lambda: nft.run_batch([element_command("delete", elements[1000:1020])]))
            full_load = timed(lambda: nft.replace_table("markroute", nft.loadable(nft.list_table("markroute") or [])))
            down(ns)  # leaves no record under /run/markroute for the namespace the lab deletes

    rows = [
        ("full apply, 100,000 prefixes, onto a router without markroute (CLI)", ms(walls["fresh"]),
         f"CPU {statistics.median(cpus):.2f} s", f"peak RSS {max(peaks):.0f} MB"),
        ("apply of the unchanged config (no transaction since: nothing listed)", ms(walls["unchanged"]), "", ""),
        ("1,000 prefixes changed in the 100,000-prefix set (CLI)", ms(walls["change"]), f"`{paths['change']}`", ""),
        ("kernel transaction of that change", ms(transactions["change"]), f"`{paths['back']}`", ""),
        ("a policy edited, the 100,000-prefix set file not (CLI)", ms(walls["policy"]), f"`{paths['policy']}`", ""),
        *((f"full apply in-process: {name}", ms(samples), "", "") for name, samples in stages.items()),
        ("20 prefixes changed in a 5,000-prefix set: kernel transaction", ms(transactions["small"]),
         f"`{paths['small']}`", ""),
        ("nft 1.0.6: add 500 elements to the 100,000-prefix set", f"{add_500 * 1000:,.0f} ms", "", ""),
        ("nft 1.0.6: delete 20 elements of the 100,000-prefix set", f"{delete_20 * 1000:,.0f} ms", "", ""),
        ("nft 1.0.6: load the whole table again (one transaction)", f"{full_load * 1000:,.0f} ms", "", ""),
    ]
    body = (
        f"Config: 2 uplinks, a `sets:` file of {PREFIXES:,} random IPv4 prefixes ({len(prefixes):,} lines; "
        f"merged into fewer intervals) used by one policy, a balance group. {runs} rounds; median (min-max).\n\n"
        "| what | time | detail | memory |\n|---|---|---|---|\n"
        + "".join(f"| {a} | {b} | {c} | {d} |\n" for a, b, c, d in rows)
    )
    publish("Apply with 100,000 prefixes", body)


if __name__ == "__main__":
    main()
