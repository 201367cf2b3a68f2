"""What a first apply records of its new table, listed early or once after the hook-in.

The new table's sets and the chains without a hook go in in the background before the
base chains hook it in. While the apply still has work of its own (here a MEANWHILE that
waits for it) the filling thread lists them too, and after the hook-in only the base
chains are listed; when the apply already waits for the fill, the whole table is listed
once after the hook-in. Either way the record must be exactly what nft lists of the
whole table (drift and the daemon compare against it), a later change by someone else
must still show as drift, and a commit by someone else while the apply ran must not be
taken for ours.
"""

from __future__ import annotations

import json
import shutil
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from kernelhelp import KERNEL, TWO_UPLINKS, markroute, router, view, write_config  # noqa: F401
from test_nft_load import CASES
from test_nft_load import config_path as case_path

from markroute.compile import compile_plan
from markroute.config import load_model
from markroute.kernel import nft, state
from markroute.kernel.apply import ApplyFailed, NewTable, _base_chains_pay, apply
from markroute.kernel.down import down
from markroute.kernel.netns import inside
from markroute.lab import Lab, RouterLab
from markroute.plan import Plan

pytestmark = KERNEL
EXTRA = """
  - {name: to-doc, to: 198.51.100.0/24, dport: 443, via: isp1}
  - {name: from-lan, from: 192.0.2.0/25, via: isp0}
  - {name: listed, to: "@servers", via: isp1}
sets:
  servers: {file: servers.txt}
"""


def config(tmp_path: Path, server: str) -> str:
    (tmp_path / "servers.txt").write_text(f"{server}\n203.0.113.0/24\n")
    return write_config(tmp_path, TWO_UPLINKS.format(server=server).rstrip("\n") + EXTRA)


def plan_of(path: str) -> Plan:
    model, diagnostics = load_model(path)
    assert model is not None, diagnostics
    return compile_plan(model)


def listed(plan: Plan) -> list[dict[str, Any]]:
    """What nft lists of the whole table now, as apply records it (elements left out)."""
    return nft.normalise(nft.table_structure(plan.table_name) or [])


def recorded(ns: str) -> list[dict[str, Any]]:
    record = state.load(ns)
    assert record is not None
    return nft.without_elements(record.nft_listing)


def status_drift(ns: str) -> tuple[int, list[str]]:
    result = markroute("status", "--netns", ns, "--json")
    return result.returncode, json.loads(result.stdout)["drift"]


def a_chain_without_hook(plan: Plan) -> str:
    return next(obj["chain"]["name"] for obj in nft.hooked(plan.nft)[0] if "chain" in obj)


def has_base_chains(listing: list[dict[str, Any]] | None) -> bool:
    return any("hook" in obj["chain"] for obj in listing or [] if "chain" in obj)


class Listings:
    """`nft.table_structure` counted, each call noting whether the base chains were in yet; `busy` is a
    MEANWHILE for apply that keeps its main thread busy until the filling thread has listed the table."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.real = nft.table_structure
        self.hooked: list[bool] = []
        self.listed = threading.Event()
        monkeypatch.setattr(nft, "table_structure", self.counted)

    def counted(self, name: str, *args: Any) -> Any:
        listing = self.real(name, *args)
        self.hooked.append(has_base_chains(listing))
        self.listed.set()
        return listing

    def busy(self) -> None:
        assert self.listed.wait(60), "the filling thread did not list the table while the apply was busy"


def apply_waiting_early(monkeypatch: pytest.MonkeyPatch) -> Callable[[], None]:
    """Make the filling thread finish loading only once the main thread waits for it: nothing left to
    overlap. Returns a check that this happened."""
    waiting = threading.Event()
    real_wait, real_batch = NewTable.wait, nft.run_batch

    def wait(self: NewTable) -> None:
        waiting.set()
        real_wait(self)

    def run_batch(commands: Any, *args: Any, **kwargs: Any) -> None:
        real_batch(commands, *args, **kwargs)
        if kwargs.get("loading") is not None:  # the chains' batch, handed over (`NewTable.loading`)
            assert waiting.wait(60), "the apply never waited for the fill"

    monkeypatch.setattr(NewTable, "wait", wait)
    monkeypatch.setattr(nft, "run_batch", run_batch)
    return lambda: None if waiting.is_set() else pytest.fail("the apply never waited for the fill")


def test_first_apply_records_the_whole_table_as_listed_and_drift_is_still_seen(
    router: RouterLab, tmp_path: Path, monkeypatch: pytest.MonkeyPatch  # noqa: F811
) -> None:
    r = router
    plan = plan_of(config(tmp_path, r.server))
    listings = Listings(monkeypatch)
    with inside(r.rtr):
        assert apply(plan, r.rtr, meanwhile=listings.busy).changed
        assert listings.hooked == [False]  # once, before the base chains went in: not read back after
        monkeypatch.setattr(nft, "table_structure", listings.real)
        assert recorded(r.rtr) == listed(plan)
    assert_drift_is_seen(r, plan)


def test_a_first_apply_with_nothing_left_to_overlap_lists_the_table_once_after_the_hook_in(
    router: RouterLab, tmp_path: Path, monkeypatch: pytest.MonkeyPatch  # noqa: F811
) -> None:
    """The main thread waits before the chains are in: the thread lists nothing, the whole table is
    listed once after the hook-in (no chain alone), and the record is still what nft lists."""
    r = router
    plan = plan_of(config(tmp_path, r.server))
    listings = Listings(monkeypatch)
    chains: list[str] = []
    real_chains = nft.list_chains
    monkeypatch.setattr(nft, "list_chains", lambda table, names: chains.extend(names) or real_chains(table, names))
    waited = apply_waiting_early(monkeypatch)
    with inside(r.rtr):
        assert apply(plan, r.rtr).changed
        waited()
        assert listings.hooked == [True] and chains == []
        monkeypatch.setattr(nft, "table_structure", listings.real)
        assert recorded(r.rtr) == listed(plan)
    assert_drift_is_seen(r, plan)


def assert_drift_is_seen(r: RouterLab, plan: Plan) -> None:
    assert any("hook" in obj["chain"] for obj in recorded(r.rtr) if "chain" in obj)
    assert status_drift(r.rtr) == (0, [])
    chain = a_chain_without_hook(plan)
    r.lab.run(r.rtr, ["nft", "add", "rule", "inet", "markroute", chain, "counter"])
    code, drift = status_drift(r.rtr)
    assert code == 3 and any(f"rules of chain {chain} were changed" in d for d in drift), drift
    r.lab.run(r.rtr, ["nft", "add", "rule", "inet", "markroute", "prerouting", "counter"])
    assert any("rules of chain prerouting were changed" in d for d in status_drift(r.rtr)[1])


def test_a_set_bigger_than_the_rules_lists_the_table_not_the_chains(
    router: RouterLab, tmp_path: Path, monkeypatch: pytest.MonkeyPatch  # noqa: F811
) -> None:
    """nft fetches every set element to list one chain: with more elements than rules the
    whole table without elements is listed instead, once, after the hook-in (not early in the
    filling thread too), no chain alone, and what is recorded is still what nft lists."""
    r = router
    path = config(tmp_path, r.server)
    (tmp_path / "servers.txt").write_text("".join(f"10.{k >> 8}.{k & 255}.0/24\n" for k in range(0, 2000, 2)))
    plan = plan_of(path)
    chains: list[str] = []
    real = nft.list_chains

    def counted(table: str, names: Any) -> Any:
        chains.extend(names)
        return real(table, names)

    monkeypatch.setattr(nft, "list_chains", counted)
    with inside(r.rtr):
        assert apply(plan, r.rtr).changed
        assert chains == []
        assert recorded(r.rtr) == listed(plan)
    assert status_drift(r.rtr) == (0, [])
    r.lab.run(r.rtr, ["nft", "add", "rule", "inet", "markroute", "prerouting", "counter"])
    assert any("rules of chain prerouting were changed" in d for d in status_drift(r.rtr)[1])


def test_someone_elses_commit_during_a_first_apply(
    router: RouterLab, tmp_path: Path, monkeypatch: pytest.MonkeyPatch  # noqa: F811
) -> None:
    """Another table changed meanwhile: the whole table is listed again and recorded. Our own
    table changed after its early listing: nothing of it is recorded, the apply is undone."""
    r = router
    plan = plan_of(config(tmp_path, r.server))
    real = nft.list_chains
    listings = Listings(monkeypatch)

    def meanwhile(command: list[str]) -> Any:
        def listing(table: str, names: Any) -> list[dict[str, Any]]:
            r.lab.run(r.rtr, command)
            return real(table, names)
        return listing

    monkeypatch.setattr(nft, "list_chains", meanwhile(["nft", "add", "table", "inet", "someone_else"]))
    with inside(r.rtr):
        apply(plan, r.rtr, meanwhile=listings.busy)
        assert listings.hooked == [False, True]  # listed early, then again whole
        assert recorded(r.rtr) == listed(plan)
    assert status_drift(r.rtr) == (0, [])

    assert markroute("down", "--netns", r.rtr).returncode == 0
    fresh = view(r.lab, r.rtr)
    chain = a_chain_without_hook(plan)
    listings.listed.clear()
    monkeypatch.setattr(nft, "list_chains", meanwhile(["nft", "add", "rule", "inet", "markroute", chain, "counter"]))
    with inside(r.rtr), pytest.raises(ApplyFailed, match="changed by another process"):
        apply(plan, r.rtr, meanwhile=listings.busy)
    assert view(r.lab, r.rtr) == fresh
    assert state.load(r.rtr) is None


@pytest.mark.parametrize("case", CASES)
def test_every_example_records_what_nft_lists_whichever_way_it_was_listed(
    case: str, tmp_path: Path, lab: Lab, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every example config and test_nft_load's (every match key, 5,000-prefix sets, merged runs, a
    shifted mask), applied first onto an empty namespace: listed early (where that can pay) and
    listed once after the hook-in, the record is what nft lists, byte for byte the same both ways."""
    model, diagnostics = load_model(str(case_path(case, tmp_path)))
    assert model is not None, [d.render() for d in diagnostics]
    plan = compile_plan(model)
    ns = lab.add_ns("a10")
    records: list[str] = []
    try:
        with inside(ns):
            for early in (True, False):
                if early and not _base_chains_pay(plan):
                    continue  # the thread never lists such a table early
                listings = Listings(monkeypatch)
                waited = None if early else apply_waiting_early(monkeypatch)
                assert apply(plan, ns, meanwhile=listings.busy if early else None).changed
                assert listings.hooked == [not early]
                if waited is not None:
                    waited()
                monkeypatch.undo()
                assert recorded(ns) == listed(plan)
                written = json.loads((state.directory(ns) / state.STATE_RECORD).read_text())
                records.append(json.dumps([written["nft_listing"], written["nft_elements"]]))
                down(ns)
    finally:
        shutil.rmtree(state.directory(ns), ignore_errors=True)
    assert len(set(records)) == 1
