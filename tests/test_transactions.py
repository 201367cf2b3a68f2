"""apply and down as transactions on a real kernel: interrupted anywhere, a namespace is as
before the call or as after it, byte for byte; one writer at a time.

The fault-injection tests use the test hook of `markroute.kernel.interrupt`
(MARKROUTE_FAULT=N:SIGNAL sends the process SIGNAL at its Nth point between two kernel
steps: every journal line, every step, the state file written and renamed). SIGTERM,
SIGINT and SIGHUP must roll the apply back (exit 1, "put back") or, past its commit, let it
complete (exit 0); after SIGKILL the next `down` must undo what the dead apply did (the
journal) and remove everything, original sysctls included, leaving no file behind.

A snapshot is `nft -j list ruleset` (handles and counter values dropped: a table or chain
put back by a rollback is a new kernel object), `ip -j rule`, `ip -j route show table
all`, every net sysctl, and the files of the namespace's state directory (state.json without
its time stamp and nf_tables generation, which differ between two applies of one config).
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from kernelhelp import KERNEL, REPO, TWO_UPLINKS, markroute, router, view, write_config  # noqa: F401

from markroute.compile import compile_plan
from markroute.config import load_model
from markroute.kernel import KernelError, nft, state
from markroute.kernel.apply import ApplyFailed, apply
from markroute.kernel.netns import inside
from markroute.kernel.rpdb import Rpdb
from markroute.lab import RouterLab
from markroute.values import BOUND_TABLE_OFFSET

pytestmark = KERNEL
POINTS = 20
PREFIXES = 1000
ONE_UPLINK = """
uplinks:
  isp0:
    interface: wan0
    gateway: 10.0.0.1
    nat: masquerade
policies:
  - name: server-via-isp0
    to: {server}
    via: isp0
"""
SETS = "sets:\n  servers: {file: servers.txt}\n"


def prefixes(tmp_path: Path, name: str, first: int) -> None:
    """PREFIXES /24s of 10.64.0.0/10, every other one from the FIRST on (so none merge)."""
    lines = [f"10.{64 + (n >> 8) % 64}.{n & 255}.0/24" for n in range(2 * first, 2 * (first + PREFIXES), 2)]
    (tmp_path / name).write_text("\n".join(lines) + "\n")


def snapshot(r: RouterLab) -> dict[str, Any]:
    seen = view(r.lab, r.rtr)
    seen["nftables"] = nft.normalise(seen["nftables"])
    files: dict[str, Any] = {}
    directory = state.directory(r.rtr)
    if directory.exists():
        for path in sorted(directory.iterdir()):
            if path.name == state.STATE_RECORD:
                recorded = json.loads(path.read_text())
                recorded.pop("applied_at")
                recorded.pop("nft_generation")
                files[path.name] = recorded
            else:
                files[path.name] = path.read_bytes()
    seen["files"] = files
    return seen


def faulted(config: str, netns: str, at: int, signal_name: str) -> subprocess.CompletedProcess[str]:
    """`apply -c CONFIG` sent SIGNAL_NAME at its fault point AT (0: never)."""
    return faulted_command(["apply", "-c", config, "--netns", netns], at, signal_name)


def faulted_command(argv: list[str], at: int, signal_name: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(REPO), MARKROUTE_FAULT=f"{at}:{signal_name}")
    return subprocess.run([sys.executable, "-m", "markroute", *argv],
                          capture_output=True, text=True, env=env, timeout=120, check=False)


def fault_points(result: subprocess.CompletedProcess[str]) -> int:
    return len(fault_labels(result))


def fault_labels(result: subprocess.CompletedProcess[str]) -> list[str]:
    prefix = "markroute: fault point "
    return [line.split(": ", 2)[2] for line in result.stderr.splitlines() if line.startswith(prefix)]


def scenario(router: RouterLab, tmp_path: Path, before_config: str | None, after_config: str) -> None:  # noqa: F811
    """Interrupt `apply AFTER_CONFIG` (from BEFORE_CONFIG applied, or from nothing) at POINTS random points."""
    r = router
    pristine = snapshot(r)

    def reset() -> None:
        if before_config is not None:
            result = markroute("apply", "-c", before_config, "--netns", r.rtr)
            assert result.returncode == 0, result.stderr

    reset()
    before = snapshot(r)
    uninterrupted = faulted(after_config, r.rtr, 0, "TERM")
    assert uninterrupted.returncode == 0, uninterrupted.stderr
    after = snapshot(r)
    assert after != before
    total = fault_points(uninterrupted)
    assert total >= 5, uninterrupted.stderr
    seed = int(time.time())
    pick = random.Random(seed)
    seen = {"rolled back": 0, "completed": 0, "killed": 0}
    at_before = False
    status_checked = False
    for _ in range(POINTS):
        if not at_before:
            if before_config is None:
                assert markroute("down", "--netns", r.rtr).returncode == 0
            else:
                reset()
        at = pick.randint(1, total)
        signal_name = pick.choice(["TERM", "INT", "HUP", "KILL", "KILL"])
        where = f"seed {seed}: {signal_name} at point {at} of {total}"
        result = faulted(after_config, r.rtr, at, signal_name)
        assert "Traceback" not in result.stderr, where + result.stderr
        if signal_name == "KILL":
            assert result.returncode == -9, where + result.stderr
            seen["killed"] += 1
            if (state.directory(r.rtr) / state.JOURNAL).exists() and not status_checked:
                report = json.loads(markroute("status", "--netns", r.rtr, "--json").stdout)
                assert "was cut short before its commit" in report["drift"][0], (where, report)
                status_checked = True
            cleanup = markroute("down", "--netns", r.rtr)
            assert cleanup.returncode == 0, where + cleanup.stderr
            assert snapshot(r) == pristine, where
            assert not state.directory(r.rtr).exists(), where
            at_before = before_config is None
        elif result.returncode == 0:
            assert "after the apply had committed" in result.stderr, where + result.stderr
            seen["completed"] += 1
            assert snapshot(r) == after, where
            at_before = False
        else:
            assert result.returncode == 1, where + result.stderr
            assert f"interrupted by SIG{signal_name}" in result.stderr and "put back" in result.stderr, where
            seen["rolled back"] += 1
            assert snapshot(r) == before, where
            at_before = True
    assert seen["killed"] + seen["rolled back"] > 0, seen


def test_interrupted_first_apply_leaves_nothing_or_everything(router: RouterLab, tmp_path: Path) -> None:  # noqa: F811
    """A first apply with a set (its table filled in a background thread): interrupted anywhere."""
    prefixes(tmp_path, "servers.txt", 0)
    config = write_config(tmp_path, TWO_UPLINKS.format(server="'@servers'") + SETS)
    scenario(router, tmp_path, None, config)


def test_interrupted_set_change_is_before_or_after(router: RouterLab, tmp_path: Path) -> None:  # noqa: F811
    """Only the set's contents change (one element transaction)."""
    prefixes(tmp_path, "servers.txt", 0)
    prefixes(tmp_path, "other.txt", 500)
    text = TWO_UPLINKS.format(server="'@servers'") + SETS
    first = write_config(tmp_path, text, "first.yaml")
    second = write_config(tmp_path, text.replace("servers.txt", "other.txt"), "second.yaml")
    scenario(router, tmp_path, first, second)


def test_interrupted_policy_change_is_before_or_after(router: RouterLab, tmp_path: Path) -> None:  # noqa: F811
    """A policy moved to a new uplink: its sysctls, routes and rules go in, the chains are rewritten."""
    prefixes(tmp_path, "servers.txt", 0)
    first = write_config(tmp_path, ONE_UPLINK.format(server="'@servers'") + SETS, "first.yaml")
    second = write_config(tmp_path, TWO_UPLINKS.format(server="'@servers'") + SETS, "second.yaml")
    scenario(router, tmp_path, first, second)


def test_interrupted_set_addition_is_before_or_after(router: RouterLab, tmp_path: Path) -> None:  # noqa: F811
    """A policy with a set of its own added beside the first set: the chains rewritten and the new
    set added in one transaction, the first set left in place (`nft.table_rewrite`)."""
    prefixes(tmp_path, "servers.txt", 0)
    prefixes(tmp_path, "other.txt", 500)
    server = TWO_UPLINKS.format(server="'@servers'")
    first = write_config(tmp_path, server + SETS, "first.yaml")
    other = "  - {name: other-via-isp0, to: '@other', via: isp0}\n"
    second = write_config(tmp_path, server + other + SETS + "  other: {file: other.txt}\n", "second.yaml")
    assert markroute("apply", "-c", first, "--netns", router.rtr).returncode == 0
    assert "rewritten (add set other_v4)" in faulted(second, router.rtr, 0, "TERM").stdout
    assert markroute("down", "--netns", router.rtr).returncode == 0
    scenario(router, tmp_path, first, second)


def test_interrupted_policy_and_set_change_is_before_or_after(router: RouterLab, tmp_path: Path) -> None:  # noqa: F811
    """A policy moved to a new uplink and its set's contents changed in one apply: the elements
    are updated over netlink, then the chains rewritten, two transactions one journal undoes."""
    prefixes(tmp_path, "servers.txt", 0)
    prefixes(tmp_path, "other.txt", 500)
    first = write_config(tmp_path, ONE_UPLINK.format(server="'@servers'") + SETS, "first.yaml")
    second = write_config(tmp_path, (TWO_UPLINKS.format(server="'@servers'") + SETS).replace("servers.txt", "other.txt"),
                          "second.yaml")
    assert markroute("apply", "-c", first, "--netns", router.rtr).returncode == 0
    both = faulted(second, router.rtr, 0, "TERM").stdout
    assert "nftables sets of inet markroute: servers_v4" in both and "chains of inet markroute rewritten" in both, both
    assert markroute("down", "--netns", router.rtr).returncode == 0
    scenario(router, tmp_path, first, second)


def test_parallel_down_and_applies_never_hold_the_lock_twice(router: RouterLab, tmp_path: Path) -> None:  # noqa: F811
    """`down`, `apply A` and `apply B` at once (A and B use different routing tables and rule
    bands, so two writers at once would leave both): whatever order the lock gives them, the namespace is
    then exactly one of them, with no drift, and `down` leaves nothing but the namespace's own."""
    r = router
    pristine = view(r.lab, r.rtr)
    first = write_config(tmp_path, TWO_UPLINKS.format(server=r.server), "a.yaml")
    second = write_config(tmp_path, TWO_UPLINKS.format(server=r.server_alt)
                          + "settings: {table_base: 300, rule_priority: 20000}\n", "b.yaml")
    env = dict(os.environ, PYTHONPATH=str(REPO))
    for round_ in range(3):
        commands = [["down"], ["apply", "-c", first], ["apply", "-c", second]]
        random.shuffle(commands)
        running = [subprocess.Popen([sys.executable, "-m", "markroute", *argv, "--netns", r.rtr], env=env,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for argv in commands]
        for process in running:
            _, err = process.communicate(timeout=60)
            assert process.returncode == 0, err
        seen = view(r.lab, r.rtr)
        bands = {rule["priority"] // 10000 for rule in seen["rules"] if rule.get("protocol") == "77"}
        tables = {int(route["table"]) % BOUND_TABLE_OFFSET >= 300  # a bound table goes with its uplink's table
                  for route in seen["routes"] if route.get("protocol") == "77"}
        assert len(bands) <= 1 and len(tables) <= 1, (round_, commands, bands, tables)
        result = markroute("status", "--netns", r.rtr, "--json")
        report = json.loads(result.stdout)
        assert report["drift"] == [] or report["drift"] == ["markroute is not applied in this namespace"], report
        assert markroute("down", "--netns", r.rtr).returncode == 0
        assert view(r.lab, r.rtr) == pristine
        assert not state.directory(r.rtr).exists()


def test_a_second_writer_waits_then_names_the_holder(router: RouterLab, tmp_path: Path) -> None:  # noqa: F811
    """While another process holds the namespace's lock, a writer waits (apply succeeds once it is
    free) or, past its wait, fails naming the holder's pid and command; the lock file is the same
    file throughout (never removed while held)."""
    r = router
    config = write_config(tmp_path, TWO_UPLINKS.format(server=r.server))
    holder_code = (
        "import sys, time\n"
        "from markroute.kernel import state\n"
        f"with state.locked({r.rtr!r}, 'test holder'):\n"
        "    print('held', flush=True)\n"
        "    time.sleep(float(sys.argv[1]))\n"
    )
    env = dict(os.environ, PYTHONPATH=str(REPO))
    holder = subprocess.Popen([sys.executable, "-c", holder_code, "3"], env=env, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        lock = state.directory(r.rtr) / state.LOCK
        inode = lock.stat().st_ino
        with pytest.raises(KernelError) as refused:
            with state.locked(r.rtr, "second", wait=0.3):
                pass
        assert f"pid {holder.pid} (test holder)" in str(refused.value)
        assert lock.stat().st_ino == inode
        started = time.monotonic()
        result = markroute("apply", "-c", config, "--netns", r.rtr)
        assert result.returncode == 0, result.stderr
        assert holder.poll() is not None, "apply went in while the lock was held"
        assert time.monotonic() - started > 0.5
    finally:
        holder.kill()
        holder.wait()


def wait_until_noting_signals(pid: int, timeout: float = 30.0) -> None:
    """Until process PID catches SIGTERM (`interrupt.noted` is in force: SIGINT is noted, not fatal).

    A fixed sleep raced the command's start-up on a loaded machine (click's "Aborted!")."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = Path(f"/proc/{pid}/status").read_text()
        caught = int(next(line.split()[1] for line in status.splitlines() if line.startswith("SigCgt:")), 16)
        if caught & (1 << (signal.SIGTERM - 1)):
            return
        time.sleep(0.02)
    raise AssertionError(f"process {pid} never caught SIGTERM")


def test_sigint_while_waiting_for_the_lock_changes_nothing(router: RouterLab, tmp_path: Path) -> None:  # noqa: F811
    r = router
    config = write_config(tmp_path, TWO_UPLINKS.format(server=r.server))
    env = dict(os.environ, PYTHONPATH=str(REPO))
    holder = subprocess.Popen(
        [sys.executable, "-c", "import time\nfrom markroute.kernel import state\n"
         f"with state.locked({r.rtr!r}, 'test holder'):\n    print('held', flush=True)\n    time.sleep(30)\n"],
        env=env, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        before = view(r.lab, r.rtr)
        waiting = subprocess.Popen([sys.executable, "-m", "markroute", "apply", "-c", config, "--netns", r.rtr],
                                   env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        wait_until_noting_signals(waiting.pid)
        waiting.send_signal(signal.SIGINT)
        _, err = waiting.communicate(timeout=30)
        assert waiting.returncode == 1 and "interrupted by SIGINT while waiting for the lock" in err, err
        assert f"pid {holder.pid} (test holder)" in err and "Traceback" not in err and "Aborted" not in err
        assert view(r.lab, r.rtr) == before
    finally:
        holder.kill()
        holder.wait()


def test_a_foreign_commit_during_an_apply_is_not_hidden_by_the_generation(
    router: RouterLab, tmp_path: Path, monkeypatch: pytest.MonkeyPatch  # noqa: F811
) -> None:
    """Another process adds a rule to markroute's table right after apply's own commit (the window
    between apply's last transaction and its reading of the table and of nf_tables' generation):
    apply must not record that table as its own (before, the next apply said "already up to date"
    and `status` no drift, the foreign rule adopted). It fails, rolls back, and the next apply goes in."""
    r = router
    one = write_config(tmp_path, ONE_UPLINK.format(server=r.server), "one.yaml")
    two = write_config(tmp_path, TWO_UPLINKS.format(server=r.server), "two.yaml")
    assert markroute("apply", "-c", one, "--netns", r.rtr).returncode == 0
    before = snapshot(r)
    model, diagnostics = load_model(two)
    assert model is not None, diagnostics
    plan = compile_plan(model)
    chain = next(obj["chain"]["name"] for obj in plan.nft if "chain" in obj)
    real = nft.run_batch

    def then_an_intruder(commands: Any, *args: Any, **kwargs: Any) -> None:
        real(commands, *args, **kwargs)
        monkeypatch.setattr(nft, "run_batch", real)
        r.lab.run(r.rtr, ["nft", "insert", "rule", "inet", "markroute", chain, "meta", "mark", "0x5eed", "counter"])

    monkeypatch.setattr(nft, "run_batch", then_an_intruder)
    with inside(r.rtr), pytest.raises(ApplyFailed, match="changed by another process while apply ran"):
        apply(plan, r.rtr)
    monkeypatch.setattr(nft, "run_batch", real)
    assert snapshot(r) == before
    again = markroute("apply", "-c", two, "--netns", r.rtr)
    assert again.returncode == 0 and "already up to date" not in again.stdout, again.stdout
    assert "0x00005eed" not in r.lab.run(r.rtr, ["nft", "list", "table", "inet", "markroute"]).stdout
    result = markroute("status", "--netns", r.rtr, "--json", "-c", two)
    assert result.returncode == 0 and json.loads(result.stdout)["drift"] == []


def test_killed_while_renaming_the_state_or_stopped_after_the_commit(router: RouterLab, tmp_path: Path) -> None:  # noqa: F811
    """The two points around the commit, every time: SIGKILL with the new state file written but
    not yet renamed leaves its temporary file, which the next `down` removes with everything
    else; SIGTERM just after the rename lets the apply complete (exit 0, and it says so)."""
    r = router
    prefixes(tmp_path, "servers.txt", 0)
    config = write_config(tmp_path, TWO_UPLINKS.format(server="'@servers'") + SETS)
    pristine = snapshot(r)
    labels = fault_labels(faulted(config, r.rtr, 0, "TERM"))
    after = snapshot(r)
    assert markroute("down", "--netns", r.rtr).returncode == 0
    renaming = labels.index("state.json written, not yet renamed") + 1
    killed = faulted(config, r.rtr, renaming, "KILL")
    assert killed.returncode == -9
    assert [p.name for p in state.directory(r.rtr).glob(".state.json.*")], "the temporary file is left"
    assert markroute("down", "--netns", r.rtr).returncode == 0
    assert snapshot(r) == pristine and not state.directory(r.rtr).exists()
    late = faulted(config, r.rtr, labels.index("committed: state.json renamed") + 1, "TERM")
    assert late.returncode == 0 and "SIGTERM came after the apply had committed" in late.stderr, late.stderr
    assert snapshot(r) == after


def test_interrupted_down_completes_or_is_finished_by_the_next(router: RouterLab, tmp_path: Path) -> None:  # noqa: F811
    """`down` is not rolled back: SIGTERM, SIGINT or SIGHUP at any point between its removals let
    it complete (exit 0, saying so); after SIGKILL the next `down` finishes the job."""
    r = router
    config = write_config(tmp_path, TWO_UPLINKS.format(server=r.server))
    pristine = snapshot(r)
    assert markroute("apply", "-c", config, "--netns", r.rtr).returncode == 0
    total = fault_points(faulted_command(["down", "--netns", r.rtr], 0, "TERM"))
    assert total >= 4 and snapshot(r) == pristine
    pick = random.Random()
    for signal_name in ("TERM", "INT", "HUP", "KILL", "KILL"):
        assert markroute("apply", "-c", config, "--netns", r.rtr).returncode == 0
        at = pick.randint(1, total)
        result = faulted_command(["down", "--netns", r.rtr], at, signal_name)
        if signal_name == "KILL":
            assert result.returncode == -9
            assert markroute("down", "--netns", r.rtr).returncode == 0
        else:
            assert result.returncode == 0, result.stderr
            assert f"SIG{signal_name} came while down was removing: it completed" in result.stderr
        assert snapshot(r) == pristine, (signal_name, at)
        assert not state.directory(r.rtr).exists()


def test_a_commit_elsewhere_during_an_apply_is_not_recorded_as_ours(
    router: RouterLab, tmp_path: Path, monkeypatch: pytest.MonkeyPatch  # noqa: F811
) -> None:
    """nf_tables' generation counts everyone's transactions: if it moved by more than apply's own
    commits, apply records none, so the next apply lists the table instead of trusting it."""
    r = router
    config = write_config(tmp_path, TWO_UPLINKS.format(server=r.server))
    model, diagnostics = load_model(config)
    assert model is not None, diagnostics
    real = nft.run_batch

    def then_another_table(commands: Any, *args: Any, **kwargs: Any) -> None:
        real(commands, *args, **kwargs)
        monkeypatch.setattr(nft, "run_batch", real)
        r.lab.run(r.rtr, ["nft", "add", "table", "inet", "someone_else"])

    with inside(r.rtr):
        apply(compile_plan(model), r.rtr)
        recorded = state.load_applied(r.rtr)
        assert recorded is not None and recorded.nft_generation is not None
        assert markroute("down", "--netns", r.rtr).returncode == 0
        monkeypatch.setattr(nft, "run_batch", then_another_table)
        apply(compile_plan(model), r.rtr)
    recorded = state.load_applied(r.rtr)
    assert recorded is not None and recorded.nft_generation is None


def test_a_foreign_rule_added_while_apply_runs_is_reported(
    router: RouterLab, tmp_path: Path, monkeypatch: pytest.MonkeyPatch  # noqa: F811
) -> None:
    """The RPDB is read again before the commit: a rule someone adds in markroute's band (with its
    protocol) between apply's first read and its writes is reported by apply, and `status` shows
    it as drift instead of the apply recording it silently."""
    r = router
    config = write_config(tmp_path, TWO_UPLINKS.format(server=r.server))
    model, diagnostics = load_model(config)
    assert model is not None, diagnostics
    plan = compile_plan(model)
    real = Rpdb.add_rule

    def then_an_intruder(self: Rpdb, rule: Any) -> None:
        real(self, rule)
        monkeypatch.setattr(Rpdb, "add_rule", real)
        r.lab.run(r.rtr, ["ip", "rule", "add", "priority", str(plan.rule_priority + 2), "fwmark", "0x5eed",
                          "lookup", "main", "protocol", "77"])

    monkeypatch.setattr(Rpdb, "add_rule", then_an_intruder)
    with inside(r.rtr):
        report = apply(plan, r.rtr)
    assert any("changed by another process while apply ran" in warning for warning in report.warnings)
    result = markroute("status", "--netns", r.rtr, "--json")
    drift = json.loads(result.stdout)["drift"]
    assert result.returncode == 3 and any("unexpected ip rule" in line and "0x5eed" in line for line in drift), drift
