"""Parts of the kernel layer that need no kernel: normalising listings, undo order, drift wording,
and the environment checks every kernel command runs first."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from markroute.cli import main
from markroute.kernel import (
    KernelError,
    journal,
    nft,
    nftnetlink,
    rundir,
    state,
    sysctl,
)
from markroute.kernel.drift import table_differences
from markroute.kernel.state import State
from markroute.values import Interval, Ipv4Intervals

RULE = {
    "rule": {
        "family": "inet", "table": "markroute", "chain": "policies_fwd", "handle": 7, "comment": "policy web",
        "expr": [{"counter": {"packets": 12, "bytes": 900}}, {"goto": {"target": "mark_a"}}],
    }
}
CHAIN = {"chain": {"family": "inet", "table": "markroute", "name": "policies_fwd", "handle": 3}}


def recorded(listing: list[dict[str, object]]) -> State:
    return State("p", "n", "markroute", 0xFF00, 10000, listing, [], [], {}, {}, [], [], "now")


def test_normalise_drops_handles_and_counter_values_but_loadable_keeps_counters() -> None:
    normal = nft.normalise([CHAIN, RULE])
    assert "handle" not in normal[0]["chain"] and "handle" not in normal[1]["rule"]
    assert normal[1]["rule"]["expr"][0] == {"counter": {"packets": 0, "bytes": 0}}
    assert nft.loadable([RULE])[0]["rule"]["expr"][0] == {"counter": {"packets": 12, "bytes": 900}}
    assert nft.rule_counters([CHAIN, RULE]) == [("policy web", 12, 900)]


def test_journal_undoes_done_steps_newest_first_and_reports_failed_undos(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """In the process that made the steps: only the done ones are undone (a step whose
    `do` never returned never happened), newest first, a failing undo reported and the
    others still undone; the file is gone afterwards."""
    monkeypatch.setattr(rundir, "RUN_DIR", tmp_path / "run")
    undone: list[str] = []

    def perform(undo: journal.Undo, rpdb: object) -> None:
        if undo.what == "second":
            raise KernelError("gone")
        undone.append(undo.what)

    monkeypatch.setattr(journal, "perform", perform)
    with state.locked(None, "test"):
        log = journal.Journal.begin(None)
        for what in ("first", "second", "third", "in flight"):
            number = log.will(journal.Undo.sysctl(what, "/proc/sys/none", "0", "1"))
            if what != "in flight":
                log.did(number)
        assert log.rollback(None) == ["second: gone"]
        log.close()
        assert undone == ["third", "first"]
        assert not (state.directory(None) / state.JOURNAL).exists()


def test_recover_undoes_a_dead_apply_but_not_a_committed_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """From the file a killed apply left: every step undone newest first, the one in flight
    tolerantly (its undo may be refused); if state.json was replaced since the journal began,
    the apply committed and nothing is undone. Stale temporary files go too."""
    monkeypatch.setattr(rundir, "RUN_DIR", tmp_path / "run")
    undone: list[tuple[str, bool]] = []

    def perform(undo: journal.Undo, rpdb: object) -> None:
        undone.append((undo.what, undo.what == "in flight"))
        if undo.what == "in flight":
            raise KernelError("refused: it never happened")

    monkeypatch.setattr(journal, "perform", perform)
    monkeypatch.setattr(journal, "Rpdb", NoRpdb)
    with state.locked(None, "test"):
        log = journal.Journal.begin(None)
        log.did(log.will(journal.Undo.sysctl("sysctl", "/proc/sys/none", "0", "1")))
        log.did(log.will(journal.Undo.nft_batch("table", [])))
        log.will(journal.Undo.nft_batch("in flight", []))
        log.handle.write('{"torn')  # the process died mid-line
        log.handle.close()
        (state.directory(None) / ".state.json.999999").write_text("{")
        recovery = journal.recover(None)
        assert recovery is not None and recovery.problems == [] and not recovery.committed
        assert undone == [("in flight", True), ("table", False), ("sysctl", False)]
        assert sorted(p.name for p in state.directory(None).iterdir()) == ["lock"]
        assert journal.recover(None) is None

        undone.clear()
        log = journal.Journal.begin(None)
        log.did(log.will(journal.Undo.nft_batch("table", [])))
        log.handle.close()
        state.write(None, state.STATE_RECORD, {"format": 2})  # the commit
        recovery = journal.recover(None)
        assert recovery is not None and recovery.committed and undone == []


class NoRpdb:
    """Stands in for the routing socket `recover` opens: the undos tested here need none."""

    def __enter__(self) -> NoRpdb:
        return self

    def __exit__(self, *args: object) -> None:
        pass


# A set update's undo as apply journals it: 100,000 IPv4 intervals packed, a few IPv6 ones as tuples.
BIG_V4 = Ipv4Intervals.of((0x0B000000 + 512 * i, 0x0B0000FF + 512 * i) for i in range(100_000))
SMALL_V4 = Ipv4Intervals.of([(0xC6336400, 0xC63364FF), (0xFFFFFF00, 0xFFFFFFFF)])
V6 = ((0x20010DB8 << 96, (0x20010DB8 << 96) + 0xFFFF), (1 << 127, (1 << 128) - 1))
CHANGES = [nftnetlink.SetChange("big_v4", 4, removed=BIG_V4, added=SMALL_V4),
           nftnetlink.SetChange("big_v6", 6, removed=(), added=V6)]


def sent_updates(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, list[nftnetlink.SetChange]]]:
    """Every `nftnetlink.update` the journal's undos make, with the changes as given (no kernel)."""
    sent: list[tuple[str, list[nftnetlink.SetChange]]] = []
    monkeypatch.setattr(nftnetlink, "update", lambda table, changes: sent.append((table, list(changes))))
    monkeypatch.setattr(journal, "Rpdb", NoRpdb)
    return sent


def as_pairs(changes: list[nftnetlink.SetChange]) -> list[tuple[str, int, list[Interval], list[Interval]]]:
    """CHANGES comparable whatever holds their intervals (packed, tuples)."""
    return [(c.name, c.version, list(map(tuple, c.removed)), list(map(tuple, c.added))) for c in changes]


def test_a_journaled_set_update_is_written_packed_and_recovered_as_it_was(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A reload to 100,000 prefixes journals the undo of its element update: the IPv4 intervals go
    to the file as packed text (8 bytes each, base64), not [first, last] pairs; an apply killed after
    the update leaves a journal from which `recover` sends exactly the intervals the undo held."""
    monkeypatch.setattr(rundir, "RUN_DIR", tmp_path / "run")
    sent = sent_updates(monkeypatch)
    with state.locked(None, "test"):
        log = journal.Journal.begin(None)
        log.did(log.will(journal.Undo.set_update("nftables sets of inet markroute", "markroute", CHANGES)))
        log.handle.close()  # the process died before its commit
        text = (state.directory(None) / state.JOURNAL).read_text()
        header, undo, done = (json.loads(line) for line in text.splitlines())
        assert header["format"] == journal.FORMAT == 2 and done == {"done": 0}
        written = undo["undo"]["args"]["changes"]
        assert isinstance(written[0]["removed"], str) and isinstance(written[0]["added"], str)
        assert written[1]["added"] == [list(interval) for interval in V6]
        assert len(text) < 12 * len(BIG_V4)  # base64 of 8 bytes an interval; pairs took ~24
        recovery = journal.recover(None)
    assert recovery is not None and not recovery.committed and recovery.problems == []
    assert [table for table, _ in sent] == ["markroute"]
    assert as_pairs(sent[0][1]) == as_pairs(CHANGES)
    assert isinstance(sent[0][1][0].removed, Ipv4Intervals)  # packed all the way back to the kernel


def test_a_journal_of_the_old_format_is_still_recovered(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A journal an older version (format 1: packed intervals written as [first, last] pairs) left
    when it died: its set update is undone with the same intervals; with state.json replaced since,
    its apply committed and nothing is undone; damaged packed text is a reported problem, no crash."""
    monkeypatch.setattr(rundir, "RUN_DIR", tmp_path / "run")
    sent = sent_updates(monkeypatch)
    old_undo = {"undo": {"what": "sets", "action": "set_update", "args": {"table": "markroute", "changes": [
        {"name": c.name, "version": c.version, "removed": [list(i) for i in c.removed],
         "added": [list(i) for i in c.added]} for c in CHANGES]}}}

    def old_journal(undo: dict[str, object]) -> None:
        written = state.written(None)
        handle = state.start_journal(None, {"format": 1, "pid": os.getpid(),
                                            "state": list(written) if written else None})
        handle.write(json.dumps(undo) + "\n" + json.dumps({"done": 0}) + "\n")
        handle.close()

    with state.locked(None, "test"):
        old_journal(old_undo)
        recovery = journal.recover(None)
        assert recovery is not None and not recovery.committed and recovery.undone == ["sets"]
        assert as_pairs(sent[0][1]) == as_pairs(CHANGES)

        sent.clear()
        old_journal(old_undo)
        state.write(None, state.STATE_RECORD, {"format": 2})  # that apply committed before it died
        recovery = journal.recover(None)
        assert recovery is not None and recovery.committed and sent == []

        damaged = json.loads(json.dumps(old_undo))
        damaged["undo"]["args"]["changes"][0]["removed"] = "not*base64"
        old_journal(damaged)
        recovery = journal.recover(None)
        assert recovery is not None and sent == []
        assert len(recovery.problems) == 1 and "packed intervals are damaged" in recovery.problems[0]


def test_journal_sysctl_undo_puts_back_only_what_apply_wrote(monkeypatch: pytest.MonkeyPatch) -> None:
    """A journaled sysctl undo (rollback or recovery) restores the value apply found only while
    the sysctl still holds the one apply wrote: a neighbour's later value stays (kernel/restore.py)."""
    live = {"net/ipv4/ip_forward": "1", "net/ipv4/conf/all/rp_filter": "2"}
    monkeypatch.setattr(sysctl, "exists", lambda path: path in live)
    monkeypatch.setattr(sysctl, "read", lambda path: live[path])
    monkeypatch.setattr(sysctl, "write", lambda path, value: live.__setitem__(path, value))
    journal.perform(journal.Undo.sysctl("forwarding", "net/ipv4/ip_forward", "0", "1"), None)
    journal.perform(journal.Undo.sysctl("rp_filter", "net/ipv4/conf/all/rp_filter", "1", "0"), None)
    journal.perform(journal.Undo.sysctl("gone", "net/ipv4/conf/eth9/rp_filter", "1", "0"), None)
    assert live == {"net/ipv4/ip_forward": "0", "net/ipv4/conf/all/rp_filter": "2"}


def test_table_differences_name_the_changed_chain() -> None:
    listing = nft.normalise([CHAIN, RULE])
    assert table_differences(recorded(listing), [CHAIN, RULE]) == []
    assert table_differences(recorded(listing), None) == ["nftables table inet markroute is missing"]
    changed = [CHAIN, {"rule": {**RULE["rule"], "expr": [{"accept": None}]}}]
    assert table_differences(recorded(listing), changed) == [
        "nftables table inet markroute: rules of chain policies_fwd were changed"
    ]


@pytest.mark.parametrize("command", ["apply", "down", "status"])
def test_kernel_commands_need_root(command: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr("os.geteuid", lambda: 1000)
    config = tmp_path / "markroute.yaml"
    config.write_text("uplinks:\n  a:\n    interface: eth0\n    gateway: 192.0.2.1\n")
    result = CliRunner().invoke(main, [command] + (["-c", str(config)] if command == "apply" else []))
    assert result.exit_code == 4
    assert "as root" in result.output


def test_kernel_commands_need_nft(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("os.geteuid", lambda: 0)
    monkeypatch.setattr("shutil.which", lambda name: None)
    result = CliRunner().invoke(main, ["down"])
    assert result.exit_code == 4
    assert "nft command is missing" in result.output


def test_entering_something_that_is_not_a_namespace_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """setns(2) is called through ctypes: its refusal must come back as a message, and leave us where we were."""
    from markroute.kernel import EnvironmentProblem, netns

    monkeypatch.setattr(netns, "NETNS_DIR", tmp_path)
    (tmp_path / "plain-file").write_text("")
    before = Path("/proc/self/ns/net").stat().st_ino
    with pytest.raises(EnvironmentProblem, match="cannot enter network namespace 'plain-file': Invalid argument"):
        netns.enter("plain-file")
    with pytest.raises(EnvironmentProblem, match="does not exist"):
        netns.enter("absent")
    assert Path("/proc/self/ns/net").stat().st_ino == before


def test_table_rewrite_keeps_the_sets_both_have_and_adds_or_drops_the_others() -> None:
    """Chains are flushed and their rules added again; a set both sides hold with the same
    elements is not touched (its elements are not loaded again); sets only one side has are
    dropped or added with their elements, after the flush and before the rules that use them."""
    from markroute.plan.nftjson import AddressElements

    table = {"table": {"family": "inet", "name": "markroute"}}
    definition = {"family": "inet", "table": "markroute", "name": "big_v4", "type": "ipv4_addr", "flags": ["interval"]}
    big = {"set": {**definition, "elem": AddressElements(4, [(1, 1), (5, 9)])}}
    old_set = {"set": {**definition, "name": "old_v4", "elem": AddressElements(4, [(2, 2)])}}
    new_set = {"set": {**definition, "name": "new_v4", "elem": AddressElements(4, [(3, 3)])}}
    base = {"chain": {"family": "inet", "table": "markroute", "name": "prerouting", "type": "filter",
                      "hook": "prerouting", "prio": -150, "policy": "accept"}}
    old_only = {"chain": {"family": "inet", "table": "markroute", "name": "via_a"}}
    new_only = {"chain": {"family": "inet", "table": "markroute", "name": "via_b"}}
    rule = {"rule": {"family": "inet", "table": "markroute", "chain": "prerouting", "expr": [{"goto": {"target": "via_b"}}]}}
    current = [table, big, old_set, base, old_only]
    same_big = {"set": {**definition, "elem": AddressElements(4, [(1, 1), (5, 9)])}}

    commands = nft.table_rewrite("markroute", current, [table, same_big, base, new_only, rule])
    assert commands is not None and not any("set" in body or "table" in body for c in commands[:3] for body in c.values())
    assert [next(iter(c)) for c in commands] == ["flush", "flush", "delete", "delete", "add", "add"]
    assert commands[2]["delete"]["chain"]["name"] == "via_a" and commands[3]["delete"] == {
        "set": {"family": "inet", "table": "markroute", "name": "old_v4"}}
    assert commands[4]["add"] == new_only and commands[5]["add"] == rule

    commands = nft.table_rewrite("markroute", current, [table, same_big, old_set, new_set, base, new_only, rule])
    assert commands is not None and {"add": new_set} in commands and not any(
        body.get("name") == "big_v4" for c in commands for body in c.get("add", c.get("delete", {})).values())
    assert commands.index({"add": new_set}) < commands.index({"add": rule})

    moved = {"chain": {**base["chain"], "prio": 0}}
    commands = nft.table_rewrite("markroute", current, [table, same_big, old_set, moved])
    assert commands is not None and {"delete": {"chain": {"family": "inet", "table": "markroute", "name": "prerouting"}}} in commands
    assert commands[-1] == {"add": moved}, "a chain whose hook or priority changed is deleted and added again"

    other_elements = {"set": {**definition, "elem": AddressElements(4, [(1, 1)])}}
    assert nft.table_rewrite("markroute", current, [table, other_elements, base]) is None
    dynamic = {"set": {**definition, "name": "seen_v4", "flags": ["interval", "timeout"], "timeout": 3600}}
    assert nft.table_rewrite("markroute", [*current, dynamic], [table, same_big, base]) is None, "its live elements"
    assert nft.table_rewrite("markroute", current, [{"table": {**table["table"], "flags": ["owner"]}}, same_big]) is None


def test_kept_sets_are_those_both_define_alike_whose_elements_are_the_configs() -> None:
    """A set whose elements differ is kept (apply updates them first); one whose definition
    changed, one only a side has, and one holding run-time elements are not."""
    from markroute.plan.nftjson import AddressElements

    definition = {"family": "inet", "table": "markroute", "type": "ipv4_addr", "flags": ["interval"]}

    def made(name: str, elements: list[tuple[int, int]], **extra: Any) -> dict[str, Any]:
        return {"set": {**definition, "name": name, "elem": AddressElements(4, elements), **extra}}

    current = [made("big_v4", [(1, 1), (5, 9)]), made("flags_v4", [(2, 2)]), made("gone_v4", [(3, 3)]),
               made("seen_v4", [(4, 4)], flags=["interval", "timeout"], timeout=3600)]
    wanted = [made("big_v4", [(1, 1)]), made("flags_v4", [(2, 2)], flags=["interval", "constant"]),
              made("new_v4", [(3, 3)]), made("seen_v4", [(7, 7)], flags=["interval", "timeout"], timeout=3600)]
    assert nft.kept_sets(current, wanted) == {"big_v4"}


def test_normalise_orders_chains_by_name_and_keeps_rule_order() -> None:
    """A rollback that rewrites chains back re-creates some, and nft lists chains as created:
    two listings of the same table must still compare equal, rule order within a chain kept."""
    table = {"table": {"family": "inet", "name": "markroute", "handle": 1}}
    a = {"chain": {"family": "inet", "table": "markroute", "name": "a", "handle": 2}}
    b = {"chain": {"family": "inet", "table": "markroute", "name": "b", "handle": 9}}
    first = {"rule": {"family": "inet", "table": "markroute", "chain": "a", "handle": 4, "expr": [{"accept": None}]}}
    second = {"rule": {"family": "inet", "table": "markroute", "chain": "a", "handle": 5, "expr": [{"drop": None}]}}
    assert nft.normalise([table, a, b, first, second]) == nft.normalise([table, b, a, first, second])
    assert nft.normalise([table, a, first, second]) != nft.normalise([table, a, second, first])
