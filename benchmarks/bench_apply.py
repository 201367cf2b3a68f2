"""How long `markroute apply` takes with 100,000 prefixes, and what a change of set contents costs.

Run (root): python3 benchmarks/bench_apply.py [--write] [--runs N] [--part all|own|peers|timeline|reapply] [--peer-runs N]
            [--sizes 100000,1000000]

In a lab namespace with two uplinks: a full apply onto a router without markroute
(the CLI as a user runs it: wall time, CPU time and peak memory of the process, with
markroute's bytecode compiled first, as `pip install` leaves it), an
apply of the unchanged config (no nf_tables transaction since, so nothing is listed), and
changes of set contents: 1,000 changed prefixes in the 100,000-prefix set, and 20 in a
5,000-prefix set; a policy edited with the set file untouched (chains rewritten,
sets left alone); and a policy with a set of its own added, then dropped (chains
rewritten, that set added or deleted in the same transaction, the big set left alone).
"Kernel transactions" is the time of the `nft -j -f` batches and the netlink element
batches (`markroute.kernel.nftnetlink`) that make a change live, measured in-process
around `nft.run_batch` and `nftnetlink.update`; the stages of a full apply are timed
in-process too. The last rows time nft 1.0.6 itself on element updates of the big set:
why elements go over netlink.

The second section (`--part peers`, issue 15) puts the whole CLI `apply` of 100,000 and
1,000,000 distinct prefixes (every other /24 from 11.0.0.0, so nothing merges; no packet
is sent to them) beside the same set loaded by its peers, in the same run, in a new
random order each round: `nft -f` of a table with that set, `ipset restore` of a hash:net
set, and the kernel-only insert: the element batch markroute sends, built beforehand and
only sent and committed (`nftnetlink._commit`) while timed. Each runs as a child process,
so `wait4` gives its peak RSS. A fifth contender is the resident daemon: `markroute run`,
started once per size in its own router namespace with one prefix in the set file, and
timed from just before a SIGHUP (the file now holding all the prefixes) until its log
says "reloaded:" (its CPU from /proc/PID/stat, peak RSS its VmHWM); the switch back to
one prefix is waited for, not timed. A sixth is the CLI `apply` of that daemon's own
config, which hands the apply to it (`markroute/daemon/control.py`): the CLI process's
wall time, and its CPU plus the daemon's over that time. Goal: CLI apply within 1.5x of
the kernel-only insert, peak RSS under 150 MB at 1,000,000; an apply by the resident
daemon within 1.5x.

The third (`--part timeline`, `--runs N`) times the stages of that CLI apply at 100,000
prefixes inside the process (`benchmarks/apply_timeline.py`): where its wall and CPU
time go, beside the kernel-only insert of the same round.

The fourth (`--part reapply`, `--runs N`, `--sizes`) applies a changed config beside the
set of the peers section: a policy with a one-prefix set of its own added, then dropped
(one transaction rewriting the chains and adding or deleting that set; the big set is
not loaded again); then both again with 1,000 of the big set's prefixes replaced in the
same apply (their elements first, over netlink, then the same rewrite). Then the same
policy added and dropped by `markroute apply` handed to a resident `markroute run`, with
the big set file unchanged (the daemon keeps its addresses, `config.sets.SetFiles`) and
rewritten alike before each apply (read again): what keeping the file saves a reload.
"""

from __future__ import annotations

import ipaddress
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from common import BIG_SET_CONFIG as CONFIG  # noqa: E402
from common import compile_bytecode, publish, random_prefixes  # noqa: E402
from daemon_helpers import DaemonLab  # noqa: E402

from markroute.compile import compile_plan  # noqa: E402
from markroute.config import load_model  # noqa: E402
from markroute.kernel import apply as apply_module  # noqa: E402
from markroute.kernel import nft, nftnetlink  # noqa: E402
from markroute.kernel.down import down  # noqa: E402
from markroute.kernel.netns import inside  # noqa: E402
from markroute.lab import Lab  # noqa: E402
from markroute.plan.nftjson import address_element  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
HERE = Path(__file__).resolve().parent
TIME = "/usr/bin/time"  # Debian package `time`: peak RSS of a child process
PREFIXES = 100_000


def cli(netns: str, *args: str) -> tuple[float, float, float, str]:
    """(wall s, CPU s, peak RSS MB, stdout) of one `markroute` run."""
    return child([sys.executable, "-m", "markroute", *args, "--netns", netns])


def child(argv: list[str]) -> tuple[float, float, float, str]:
    """(wall s, CPU s, peak RSS MB, stdout) of one process.

    The peak comes from /usr/bin/time, a small process that starts ARGV: a child forked
    straight from this script starts with this script's pages counted in its peak (the
    kernel keeps the highest RSS across exec), which here holds up to 1,000,000 prefixes.
    """
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err, \
            tempfile.NamedTemporaryFile("r") as peak:
        start = time.perf_counter()
        proc = subprocess.Popen([TIME, "-f", "%M", "-o", peak.name, *argv], stdout=out, stderr=err, env=env, text=True)
        _, status, usage = os.wait4(proc.pid, 0)  # not proc.wait(): wait4 also gives the children's CPU time
        wall = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        output = out.read()
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(argv[:4])} failed: {output}{err.read()}")
        kilobytes = int(peak.read().split()[-1])
    return wall, usage.ru_utime + usage.ru_stime, kilobytes / 1024, output


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
        def timed_call(*args: Any, **kwargs: Any) -> None:
            start = time.perf_counter()
            function(*args, **kwargs)
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


def option(name: str, default: str) -> str:
    return sys.argv[sys.argv.index(name) + 1] if name in sys.argv else default


def main() -> None:
    part = option("--part", "all")
    if not Path(TIME).exists():
        sys.exit(f"{TIME} is missing (Debian package `time`): it measures the peak memory of each command")
    compile_bytecode()
    if part in ("all", "own"):
        own(int(option("--runs", "5")))
    if part in ("all", "peers"):
        peers(int(option("--peer-runs", "5")), [int(n) for n in option("--sizes", "100000,1000000").split(",")])
    if part in ("all", "timeline"):
        timeline(int(option("--runs", "5")))
    if part in ("all", "reapply"):
        reapply(int(option("--runs", "5")), [int(n) for n in option("--sizes", "100000,1000000").split(",")])


def spaced_prefixes(count: int) -> list[str]:
    """COUNT distinct /24s, every other one from 11.0.0.0: no two adjacent, so none merge."""
    first = int(ipaddress.IPv4Address("11.0.0.0"))
    return [f"{ipaddress.IPv4Address(first + 512 * i)}/24" for i in range(count)]


PEER_CONFIG = """\
uplinks:
  isp_a: {interface: wan0, gateway: 10.0.0.1, nat: masquerade}
  isp_b: {interface: wan1, gateway: 10.0.1.1, nat: masquerade}
sets:
  big: {file: big.txt}
policies:
  - {name: big-set, to: "@big", via: isp_b}
"""


def apply_router(lab: Lab, tmp: Path, text: str, roles: tuple[str, str] = ("apply", "peer"),
                 answering: bool = False) -> tuple[str, Path]:
    """The router namespace markroute applies into (two uplinks to one peer), and its config file holding TEXT.

    ANSWERING: the peer holds the gateways' addresses, so a daemon's probes of them succeed.
    """
    ns, peer = lab.add_ns(roles[0]), lab.add_ns(roles[1])
    for k in (0, 1):
        lab.veth(ns, f"wan{k}", peer, f"up{k}")
        lab.addr(ns, f"wan{k}", f"10.0.{k}.2/24")
        if answering:
            lab.addr(peer, f"up{k}", f"10.0.{k}.1/24")
    config = tmp / "markroute.yaml"
    config.write_text(text)
    return ns, config


ONE_PREFIX = "198.51.100.0/24\n"  # the resident daemon's set file between timed reloads (an empty one is an error)
RESIDENT = "markroute run, SIGHUP (resident daemon)"
HANDED = "markroute apply, handed to the resident daemon"
CLI_APPLY = "markroute apply (CLI)"


def resident_router(lab: Lab, tmp: Path) -> tuple[str, Path]:
    """The resident daemon's own router namespace and config (its peer answers the probes)."""
    workdir = tmp / "resident"
    workdir.mkdir()
    return apply_router(lab, workdir, PEER_CONFIG, ("resident", "rpeer"), answering=True)


@contextmanager
def resident_daemon(ns: str, config: Path, text: str) -> Iterator[tuple[Callable[[], tuple[float, float, float]],
                                                                         Callable[[], tuple[float, float, float]]]]:
    """`markroute run` for CONFIG in NS, its set file holding one prefix; yields a timed reload to TEXT
    (`sighup_reload`) and a timed CLI apply handed to the daemon (`handed_apply`). One reload to TEXT
    and back runs first, untimed: the first after start-up also pays once for what a resident daemon
    keeps (modules imported on first use, its heap grown). The daemon is stopped and `markroute down`
    run even on failure."""
    daemons = DaemonLab(SimpleNamespace(rtr=ns), config.parent)
    set_file = config.parent / "big.txt"
    set_file.write_text(ONE_PREFIX)
    try:
        process = daemons.start(config)
        sighup_reload(daemons, process.pid, set_file, text)
        yield (lambda: sighup_reload(daemons, process.pid, set_file, text),
               lambda: handed_apply(daemons, process.pid, ns, config, text))
    finally:
        daemons.close()


def sighup_reload(daemons: DaemonLab, pid: int, set_file: Path, text: str) -> tuple[float, float, float]:
    """(wall s, CPU s, peak RSS MB) of the daemon PID reloading with TEXT in SET_FILE; then back to one prefix.

    CPU: all its threads (the probes' too) and its children, from just before the SIGHUP until its log says
    "reloaded:"; the wall time is bounded by polling the log every 2 ms."""
    log = daemons.logs[-1]
    seen = log.read_text().count("reloaded:")
    set_file.write_text(text)
    cpu, start = process_cpu(pid), time.perf_counter()
    os.kill(pid, signal.SIGHUP)
    wait_for_reloads(daemons, seen + 1)
    wall, cpu = time.perf_counter() - start, process_cpu(pid) - cpu
    peak = int(Path(f"/proc/{pid}/status").read_text().split("VmHWM:")[1].split()[0]) / 1024
    set_file.write_text(ONE_PREFIX)
    os.kill(pid, signal.SIGHUP)
    wait_for_reloads(daemons, seen + 2)
    return wall, cpu, peak


def handed_apply(daemons: DaemonLab, pid: int, ns: str, config: Path, text: str) -> tuple[float, float, float]:
    """(wall s, CPU s, peak RSS MB) of `markroute apply` of the config of the daemon PID with TEXT in its set
    file: the CLI process hands the apply to the daemon and prints its answer. CPU: the CLI's and the daemon's
    (`process_cpu`) while the CLI ran; peak: the larger of the two. Then back to one prefix, untimed."""
    set_file = config.parent / "big.txt"
    seen = daemons.logs[-1].read_text().count("reloaded:")
    set_file.write_text(text)
    wall, cpu, peak, _ = handed_cli(pid, ns, config)
    daemon_peak = int(Path(f"/proc/{pid}/status").read_text().split("VmHWM:")[1].split()[0]) / 1024
    set_file.write_text(ONE_PREFIX)
    os.kill(pid, signal.SIGHUP)
    wait_for_reloads(daemons, seen + 2)
    return wall, cpu, max(peak, daemon_peak)


def handed_cli(pid: int, ns: str, config: Path) -> tuple[float, float, float, str]:
    """`cli`'s figures for `markroute apply` of CONFIG, which the daemon PID must take over; the CPU
    is the CLI's plus the daemon's while the CLI ran (`process_cpu`)."""
    before = process_cpu(pid)
    wall, cpu, peak, output = cli(ns, "apply", "-c", str(config))
    if not output.startswith(f"applied by markroute run (pid {pid})"):
        raise RuntimeError(f"the apply was not handed to the daemon: {output}")
    return wall, cpu + process_cpu(pid) - before, peak, output


def process_cpu(pid: int) -> float:
    """CPU seconds of every thread of PID so far and of the children it waited for (an nft process
    apply may run), as the other contenders' CPU includes their children.

    The threads' time comes from each one's schedstat, in nanoseconds: /proc/PID/stat counts whole
    clock ticks of 10 ms, coarse beside a ~150 ms reload. A thread that ended would be missing
    from schedstat but not from the ticks, so the two must agree within two ticks per thread; the
    children's time (cutime, cstime) exists in ticks only.
    """
    tick = 1 / os.sysconf("SC_CLK_TCK")
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    tasks = list(Path(f"/proc/{pid}/task").iterdir())
    threads = sum(int((task / "schedstat").read_text().split()[0]) for task in tasks) / 1e9
    ticked = sum(map(int, fields[11:13])) * tick
    if abs(ticked - threads) > 2 * tick * len(tasks) + 0.001 * ticked:
        raise RuntimeError(f"daemon {pid}: its threads' schedstat ({threads:.3f} s) and its ticks "
                           f"({ticked:.3f} s) disagree: a thread ended?")
    return threads + sum(map(int, fields[13:15])) * tick


def wait_for_reloads(daemons: DaemonLab, count: int, timeout: float = 120.0) -> None:
    """Until the daemon's log holds COUNT "reloaded:" lines; fails with the log if it never does."""
    deadline = time.monotonic() + timeout
    while daemons.logs[-1].read_text().count("reloaded:") < count:
        if time.monotonic() > deadline:
            raise RuntimeError(f"the daemon did not reload; its log:\n{daemons.log()[-3000:]}")
        time.sleep(0.002)


def peers(runs: int, sizes: list[int]) -> None:
    """The CLI apply beside nft -f, ipset restore and the kernel-only insert of the same set, for each of SIZES."""
    results: dict[tuple[int, str], list[tuple[float, float, float]]] = {}
    shuffle = random.Random(15)
    load = Path("/proc/loadavg").read_text().split()[:3]
    with tempfile.TemporaryDirectory() as directory, Lab() as lab:
        tmp = Path(directory)
        ns, config = apply_router(lab, tmp, PEER_CONFIG)
        resident = resident_router(lab, tmp)
        for size in sizes:
            prefixes = spaced_prefixes(size)
            (tmp / "big.txt").write_text("\n".join(prefixes) + "\n")
            text = (tmp / "big.txt").read_text()
            (tmp / "set.nft").write_text(
                "table inet nftpeer {\n  set big { type ipv4_addr; flags interval; elements = { "
                + ", ".join(prefixes) + " } }\n}\n")
            (tmp / "set.ipset").write_text(
                f"create big hash:net family inet maxelem {2 * size}\n" + "".join(f"add big {p}\n" for p in prefixes))
            empty_set = "table inet kernelonly { set big { type ipv4_addr; flags interval; }; }"

            def markroute_apply() -> tuple[float, float, float]:
                with inside(ns):
                    down(ns)
                return cli(ns, "apply", "-c", str(config))[:3]

            def nft_file() -> tuple[float, float, float]:
                result = child(["ip", "netns", "exec", ns, "nft", "-f", str(tmp / "set.nft")])[:3]
                lab.run(ns, ["nft", "delete", "table", "inet", "nftpeer"])
                return result

            def ipset_restore() -> tuple[float, float, float]:
                result = child(["ip", "netns", "exec", ns, "ipset", "restore", "-file", str(tmp / "set.ipset")])[:3]
                lab.run(ns, ["ipset", "destroy", "big"])
                return result

            def kernel_only() -> tuple[float, float, float]:
                lab.nft(ns, empty_set)
                _, _, peak, output = child([sys.executable, str(HERE / "kernel_batch.py"), ns, "kernelonly", "big",
                                            str(tmp / "big.txt")])
                lab.run(ns, ["nft", "delete", "table", "inet", "kernelonly"])
                wall, cpu = (float(x) for x in output.split())
                return wall, cpu, peak

            with resident_daemon(*resident, text) as (reload, handed):
                contenders: list[tuple[str, Callable[[], tuple[float, float, float]]]] = [
                    (CLI_APPLY, markroute_apply), ("nft -f", nft_file), ("ipset restore", ipset_restore),
                    ("kernel-only insert", kernel_only), (RESIDENT, reload), (HANDED, handed)]
                for _ in range(runs):
                    shuffle.shuffle(contenders)
                    for name, run in contenders:
                        results.setdefault((size, name), []).append(run())
            with inside(ns):
                down(ns)
    publish(f"Apply vs peers: {' and '.join(f'{n:,}' for n in sizes)} prefixes", peer_report(results, runs, load))


def peer_report(results: dict[tuple[int, str], list[tuple[float, float, float]]], runs: int, load: list[str]) -> str:
    text = (
        "The same set of distinct /24s (every other one from 11.0.0.0, so nothing merges: N prefixes are N "
        f"intervals) loaded six ways, in a new random order each round; {runs} rounds; median (min-max). The "
        "first four into an empty lab namespace, each a child process. markroute: the whole CLI `apply` of a "
        "config whose one policy uses the set file (interpreter, reading and validating the file, compiling, the "
        "table, rules, routes and sysctls); `nft -f`: a file with one table holding the set; `ipset restore`: a hash:net set; "
        "kernel-only: the element batch markroute sends, built before the clock starts (`benchmarks/kernel_batch.py`), "
        "its wall and CPU time are the batch's send and commit only (the kernel works on it in the sending thread), "
        "its memory the whole child's. CPU of the others: the whole process and its children. The fifth, "
        f"{RESIDENT}: `markroute run` for the same config in its own router namespace, started once per size with "
        "one prefix in the set file and reloaded to all the prefixes and back once, untimed; each round the file "
        "gets all the prefixes and the daemon a SIGHUP; its CPU (every thread's schedstat, in ns, and any child "
        "it waited for) from just before the signal until its log says \"reloaded:\" "
        "(reading and merging the file, compiling, the element update over netlink with its journal, the state "
        "record); the daemon's probes (ICMP to both gateways every 0.1 s) run meanwhile and their CPU is inside "
        "the figure; its wall time ends when the log line is seen, polled every 2 ms (so up to ~2 ms late); its peak "
        f"RSS is the daemon's VmHWM. The sixth, {HANDED}: the CLI `apply` of that daemon's own config, which "
        "hands the apply to the daemon and prints its answer; its wall time is the CLI process's, its CPU the CLI "
        "process's plus the daemon's over that time, its peak RSS the larger. "
        "Switching back to one prefix is waited for, not timed. Ratios are paired "
        "within a round; with other work on the machine CPU time is the steadier figure (a process waiting for "
        f"a CPU counts in wall time only). Load average at the start: {' '.join(load)}.\n\n"
        "| prefixes | what | wall | CPU | peak RSS |\n|---|---|---|---|---|\n"
    )
    for (size, name), samples in results.items():
        walls, cpus, peaks = ([s[i] for s in samples] for i in range(3))
        text += f"| {size:,} | {name} | {ms(walls)} | {ms(cpus)} | {max(peaks):.0f} MB |\n"
    text += "\n| prefixes | paired ratio | median (min-max) |\n|---|---|---|\n"
    for size in sorted({size for size, _ in results}):
        for ours, label in ((CLI_APPLY, "markroute apply"), (RESIDENT, "markroute run SIGHUP"),
                            (HANDED, "markroute apply handed to markroute run")):
            for index, what in ((0, "wall"), (1, "CPU")):
                timed = [s[index] for s in results[(size, ours)]]
                for name in ("kernel-only insert", "nft -f", "ipset restore"):
                    paired = [a / b for a, b in zip(timed, (s[index] for s in results[(size, name)]))]
                    text += (f"| {size:,} | {label} / {name} ({what}) | {statistics.median(paired):.2f} "
                             f"({min(paired):.2f}-{max(paired):.2f}) |\n")
    return text


def timeline(runs: int) -> None:
    """Where the CLI apply of 100,000 distinct prefixes spends its wall and CPU time, stage by stage."""
    load = Path("/proc/loadavg").read_text().split()[:3]
    rounds: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as directory, Lab() as lab:
        tmp = Path(directory)
        ns, config = apply_router(lab, tmp, PEER_CONFIG)
        (tmp / "big.txt").write_text("\n".join(spaced_prefixes(PREFIXES)) + "\n")
        for _ in range(runs):
            with inside(ns):
                down(ns)
            wall, cpu, _, output = child([sys.executable, str(HERE / "apply_timeline.py"), ns, str(config)])
            found = json.loads(output.strip().splitlines()[-1])
            lab.nft(ns, "table inet kernelonly { set big { type ipv4_addr; flags interval; }; }")
            kernel = [float(x) for x in child([sys.executable, str(HERE / "kernel_batch.py"), ns, "kernelonly", "big",
                                               str(tmp / "big.txt")])[3].split()]
            lab.run(ns, ["nft", "delete", "table", "inet", "kernelonly"])
            rounds.append({"wall": wall * 1000, "cpu_outside": cpu * 1000, "kernel": kernel, **found})
        with inside(ns):
            down(ns)
    publish("Where a CLI apply of 100,000 prefixes spends its time", timeline_report(rounds, load))


def timeline_report(rounds: list[dict[str, Any]], load: list[str]) -> str:
    def cell(samples: list[float]) -> str:
        return f"{statistics.median(samples):,.0f} ({min(samples):,.0f}-{max(samples):,.0f})"

    rows = [("the whole process, from outside (interpreter start to exit)", "0", cell([r["wall"] for r in rounds]),
             cell([r["cpu_outside"] for r in rounds])),
            ("imports of every module apply uses (after the interpreter started)", "0", cell([r["imports"]["wall"] for r in rounds]),
             cell([r["imports"]["cpu"] for r in rounds]))]
    stages: dict[str, list[dict[str, Any]]] = {}
    for found in rounds:
        for stage in found["stages"]:
            stages.setdefault(stage["stage"], []).append(stage)
    for label, picked in sorted(stages.items(), key=lambda item: statistics.median(s["start"] for s in item[1])):
        rows.append((label, cell([s["start"] for s in picked]), cell([s["wall"] for s in picked]),
                     cell([s["cpu"] for s in picked])))
    rows.append(("the nft processes apply and the neighbour check run (their CPU)", "", "",
                 cell([r["children"] for r in rounds])))
    rows.append(("the rest: the interpreter's start before the script and its exit after the command",
                 cell([r["end"] for r in rounds]), cell([r["wall"] - r["end"] for r in rounds]),
                 cell([r["cpu_outside"] - r["cpu"] - r["children"] for r in rounds])))
    rows.append(("kernel-only insert of the same batch, same round (`kernel_batch.py`)", "",
                 cell([r["kernel"][0] * 1000 for r in rounds]), cell([r["kernel"][1] * 1000 for r in rounds])))
    return (
        f"The CLI `apply` of the peers section's config with {PREFIXES:,} distinct /24s onto an empty lab namespace, "
        f"run by `benchmarks/apply_timeline.py` in a child process; {len(rounds)} rounds; median (min-max), ms. "
        "Start: ms since the script started (the interpreter's own start-up, ~20 ms, comes before); a stage's "
        "CPU is its thread's. Stages nest as their names say. Load average at the start: "
        f"{' '.join(load)}.\n\n| stage | start | wall | CPU |\n|---|---|---|---|\n"
        + "".join(f"| {a} | {b} | {c} | {d} |\n" for a, b, c, d in rows)
    )


ADDED_SET_CONFIG = CONFIG.replace("sets:\n", "sets:\n  direct: {file: direct.txt}\n").replace(
    "policies:\n", 'policies:\n  - {name: direct, to: "@direct", via: isp_a}\n')


def own(runs: int) -> None:
    prefixes = random_prefixes(PREFIXES)
    changed = prefixes[500:] + random_prefixes(500, seed=99, network="100.64.0.0/10", lengths=(24, 24))
    small = random_prefixes(5_000, seed=3)
    small_changed = small[10:] + random_prefixes(10, seed=98, network="100.64.0.0/10", lengths=(24, 24))
    rows: list[tuple[str, str, str, str]] = []
    with tempfile.TemporaryDirectory() as directory, Lab() as lab:
        tmp = Path(directory)
        ns, config = apply_router(lab, tmp, CONFIG)

        def use(lines: list[str]) -> None:
            (tmp / "big.txt").write_text("\n".join(lines) + "\n")

        (tmp / "direct.txt").write_text("198.51.100.0/24\n")
        walls: dict[str, list[float]] = {"fresh": [], "unchanged": [], "change": [], "policy": [], "added": [],
                                         "dropped": []}
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
            for what, text in (("added", ADDED_SET_CONFIG), ("dropped", CONFIG)):  # a set and its policy, beside the big set
                config.write_text(text)
                wall, _, _, output = cli(ns, "apply", "-c", str(config))
                walls[what].append(wall)
                paths[what] = output.splitlines()[0]
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
        ("a policy with a one-prefix set of its own added beside the 100,000-prefix set (CLI)", ms(walls["added"]),
         f"`{paths['added']}`", ""),
        ("that policy and its set dropped again (CLI)", ms(walls["dropped"]), f"`{paths['dropped']}`", ""),
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


ADDED = PEER_CONFIG.replace("sets:\n", "sets:\n  direct: {file: direct.txt}\n") + \
    '  - {name: direct, to: "@direct", via: isp_a}\n'  # a policy with a one-prefix set of its own


def reapply_handed(lab: Lab, tmp: Path, size: int, runs: int) -> str:
    """Table rows: the policy of ADDED added and dropped by `markroute apply` handed to a resident
    `markroute run` holding SIZE prefixes, with the big set file unchanged and rewritten alike."""
    tmp.mkdir()
    ns, config = apply_router(lab, tmp, PEER_CONFIG, (f"h{len(str(size))}", f"hpeer{len(str(size))}"),
                              answering=True)
    (tmp / "direct.txt").write_text("198.51.100.0/24\n")
    big, big_file = "\n".join(spaced_prefixes(size)) + "\n", tmp / "big.txt"

    def write_list(text: str = big) -> None:
        big_file.write_text(text)
        then = time.time() - 60  # older than the daemon's racy window: kept between reloads
        os.utime(big_file, (then, then))

    write_list(ONE_PREFIX)  # the daemon starts small: a thread of its first apply that ended would upset `process_cpu`
    daemons = DaemonLab(SimpleNamespace(rtr=ns), tmp)
    kinds = (("the list unchanged", False), ("the list rewritten alike (read again)", True))
    results: dict[str, list[tuple[float, float, float, str]]] = {}
    try:
        pid = daemons.start(config).pid
        write_list()
        os.kill(pid, signal.SIGHUP)
        wait_for_reloads(daemons, 1)
        for _ in range(runs):
            for kind, rewrite in kinds:
                for what, text in (("added", ADDED), ("dropped", PEER_CONFIG)):
                    config.write_text(text)
                    if rewrite:
                        write_list()
                    results.setdefault(f"{what}, {kind}", []).append(handed_cli(pid, ns, config))
    finally:
        daemons.close()
    rows = ""
    for what, samples in results.items():
        said = "; ".join(samples[-1][3].splitlines()[1:-1])
        rows += (f"| {size:,} | handed to markroute run: the policy and its set {what} | "
                 f"{ms([s[0] for s in samples])} | {ms([s[1] for s in samples])} | "
                 f"{max(s[2] for s in samples):.0f} MB (the CLI) | `{said}` |\n")
    return rows


def reapply(runs: int, sizes: list[int]) -> None:
    """The CLI apply of a changed config beside a big set: a policy with a one-prefix set of its own
    added, then dropped again, onto the config of `--part peers` applied with SIZES prefixes; then the
    same with 1,000 of the big set's prefixes replaced by others in the same apply, and put back."""
    rows = ""
    load = Path("/proc/loadavg").read_text().split()[:3]
    with tempfile.TemporaryDirectory() as directory, Lab() as lab:
        tmp = Path(directory)
        ns, config = apply_router(lab, tmp, PEER_CONFIG)
        (tmp / "direct.txt").write_text("198.51.100.0/24\n")
        for size in sizes:
            big = "\n".join(spaced_prefixes(size)) + "\n"
            changed = "\n".join(spaced_prefixes(size)[1000:] + spaced_prefixes(size + 1000)[size:]) + "\n"
            (tmp / "big.txt").write_text(big)
            with inside(ns):
                down(ns)
            config.write_text(PEER_CONFIG)
            cli(ns, "apply", "-c", str(config))
            changes = (("added", ADDED, big), ("dropped", PEER_CONFIG, big),
                       ("added, and 1,000 of the big set's prefixes replaced", ADDED, changed),
                       ("dropped, and the big set's prefixes put back", PEER_CONFIG, big))
            results: dict[str, list[tuple[float, float, float, str]]] = {what: [] for what, _, _ in changes}
            for _ in range(runs):
                for what, text, contents in changes:
                    config.write_text(text)
                    (tmp / "big.txt").write_text(contents)
                    results[what].append(cli(ns, "apply", "-c", str(config)))
            for what, samples in results.items():
                said = "; ".join(samples[-1][3].splitlines()[:-1])  # every change, not the closing count
                rows += (f"| {size:,} | the policy and its set {what} | {ms([s[0] for s in samples])} | "
                         f"{ms([s[1] for s in samples])} | {max(s[2] for s in samples):.0f} MB | `{said}` |\n")
        with inside(ns):
            down(ns)
        for size in sizes:
            rows += reapply_handed(lab, tmp / f"handed{size}", size, runs)
    publish("Apply of a changed config beside a big set", (
        "The config of \"Apply vs peers\" (one policy sending a set of SIZE distinct /24s through isp_b) applied "
        "onto an empty lab namespace, then, in turn, a policy with a one-prefix set of its own added (after the "
        "big set's) and dropped again, then both again with 1,000 of the big set's prefixes replaced by "
        "others in the same apply and put back: the whole CLI `apply` each time, as a child process (peak RSS with its nft "
        f"children); {runs} rounds; median (min-max). The rows \"handed to markroute run\" add and drop the "
        "same policy with `markroute apply` handed to a resident daemon of that config (its CPU: the CLI's and "
        "the daemon's while the CLI ran): with the big set file unchanged, which the daemon does not read again "
        "(`config.sets.SetFiles`), and rewritten with the same prefixes before each apply (so read again; dated "
        f"a minute back, as a list written earlier). Load average at the start: {' '.join(load)}.\n\n"
        "| prefixes | change | wall | CPU | peak RSS | what apply did |\n|---|---|---|---|---|---|\n" + rows))


if __name__ == "__main__":
    main()
