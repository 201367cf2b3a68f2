"""The write-ahead undo log of an apply: how to take back each step, on disk before the step runs.

Netlink has no transactions, so apply makes its own. Before its first change apply
opens the journal (`Journal.begin`: the file `journal` in the namespace's state
directory, naming the state.json in force); before each step it appends how to undo
that step (`Journal.will`, an `Undo`), and after the step a line saying it is done
(`Journal.did`). A failure or an interrupt undoes the done steps newest first
(`rollback`); an undo that fails is reported and the others still run. The commit is
the new state.json (`state.save`); then the journal goes (`close`).

A process that dies (SIGKILL, a crash) leaves the file. The next apply or down holds
the lock and calls `recover` first: if state.json is still the one the journal named,
that apply never committed, and every step it wrote down is undone, newest first:
the done ones as they are, the one in flight (written, not marked done: it may or may
not have happened) only as far as it did. Every undo is safe either way: rules and
routes are looked for first, a sysctl is put back only while it still holds the value
apply wrote (kernel/restore.py), nftables batches set a whole table or chain, and an element update that never happened is refused whole.

Undos are data (`Undo`), not closures, so the same code undoes a step in the process
that made it and in the next one, from the file. Format 2 writes the packed IPv4
intervals of a set update as the state record writes a set's elements (base64 of the
big-endian words, `AddressElements.packed_text`): 800 kB for 100,000 intervals instead
of 2.4 MB of [first, last] pairs, which took a reload to 100,000 prefixes ~45 ms to write.
Format 1, those pairs, is still read: a journal an older version left after a crash.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import IO, Any, cast

from markroute.kernel import KernelError, dynsets, nft, nftnetlink, restore, state
from markroute.kernel.rpdb import Rpdb, route_key
from markroute.plan import IpRule, Route
from markroute.plan.nftjson import AddressElements, compact_json
from markroute.values import Interval

FORMAT = 2
READABLE_FORMATS = (1, FORMAT)  # format 1 wrote packed IPv4 intervals as [first, last] pairs: still read


@dataclass(frozen=True)
class Undo:
    """How to take back one step: `action` with its `args` (see `perform`); `what` names the step."""

    what: str
    action: str
    args: dict[str, Any]

    @classmethod
    def sysctl(cls, what: str, path: str, value: str, written: str) -> Undo:
        """Put VALUE back into PATH, but only while it still holds WRITTEN (`restore.undo`)."""
        return cls(what, "sysctl", {"path": path, "value": value, "written": written})

    @classmethod
    def rule(cls, what: str, present: bool, rule: IpRule) -> Undo:
        """Make RULE present (it was deleted) or absent (it was added)."""
        return cls(what, "add_rule" if present else "delete_rule", {"rule": asdict(rule)})

    @classmethod
    def route(cls, what: str, present: bool, route: Route) -> Undo:
        return cls(what, "add_route" if present else "delete_route", {"route": asdict(route)})

    @classmethod
    def nft_batch(cls, what: str, commands: list[dict[str, Any]]) -> Undo:
        return cls(what, "nft_batch", {"commands": commands})

    @classmethod
    def table_replace(cls, what: str, table: str, objects: list[dict[str, Any]]) -> Undo:
        """Put the table back as OBJECTS say, keeping the live elements of dynamic sets (`dynsets`)."""
        return cls(what, "replace_table", {"table": table, "objects": objects})

    @classmethod
    def set_update(cls, what: str, table: str, changes: list[nftnetlink.SetChange]) -> Undo:
        return cls(what, "set_update", {"table": table, "changes": [asdict(change) for change in changes]})

    def to_json(self) -> dict[str, Any]:
        """The journal line; ARGS are plain JSON data already, so not copied (`asdict` would copy
        every object of a 10,000-policy table's batch: ~0.8 s)."""
        return {"undo": {"what": self.what, "action": self.action, "args": self.args}}


def perform(undo: Undo, rpdb: Rpdb | None) -> None:
    """Take back one step, whether or not it got as far as the kernel (module doc).

    RPDB is None only when apply failed before it had a routing socket (and so before
    any rule or route step)."""
    args = undo.args
    if rpdb is None and undo.action in ("add_rule", "delete_rule", "add_route", "delete_route"):
        raise KernelError("no routing socket to undo it with")
    if undo.action == "sysctl":
        restore.undo(args["path"], args["value"], args["written"])
    elif undo.action in ("add_rule", "delete_rule") and rpdb is not None:
        rule = IpRule(**args["rule"])
        present = rule in rpdb.own_rules()
        if undo.action == "add_rule" and not present:
            rpdb.add_rule(rule)
        elif undo.action == "delete_rule" and present:
            rpdb.delete_rule(rule)
    elif undo.action in ("add_route", "delete_route") and rpdb is not None:
        route = Route(**args["route"])
        present = route_key(route) in {route_key(r) for r in rpdb.own_routes()}
        if undo.action == "add_route" and not present:
            rpdb.add_route(route)
        elif undo.action == "delete_route" and present:
            rpdb.delete_route(route)
    elif undo.action == "nft_batch":
        nft.run_batch(args["commands"])
    elif undo.action == "replace_table":
        dynsets.replace_table(args["table"], args["objects"])
    elif undo.action == "set_update":
        nftnetlink.update(args["table"], [
            nftnetlink.SetChange(c["name"], c["version"], _intervals(c["version"], c["removed"]),
                                 _intervals(c["version"], c["added"]))
            for c in args["changes"]
        ])
    else:
        raise KernelError(f"journal: unknown undo {undo.action!r}")


def _intervals(version: int, written: Any) -> Sequence[Interval]:
    """A set update's intervals as the undo holds them: in this process as they were made; from the
    file packed text (format 2, IPv4) or [first, last] pairs (IPv6, and IPv4 in format 1)."""
    if isinstance(written, str):
        try:
            return AddressElements.from_packed_text(version, written).intervals
        except ValueError as exc:  # binascii.Error too
            raise KernelError(f"journal: a set update's packed intervals are damaged ({exc})") from None
    if isinstance(written, list):
        return tuple(map(tuple, written))
    return cast(Sequence[Interval], written)


@dataclass
class _Entry:
    undo: Undo
    done: bool = False


class Journal:
    """The journal of one apply in this process (module doc); held under the namespace's lock."""

    def __init__(self, netns: str | None, handle: IO[str]) -> None:
        self.netns = netns
        self.handle = handle
        self.entries: list[_Entry] = []

    @classmethod
    def begin(cls, netns: str | None) -> Journal:
        """Open the journal before the first change; it names the state.json in force."""
        assert state.holds_lock(netns)
        written = state.written(netns)
        header = {"format": FORMAT, "pid": os.getpid(), "state": list(written) if written else None}
        return cls(netns, state.start_journal(netns, header))

    def will(self, undo: Undo) -> int:
        """Write down how to undo the step about to run; its number, for `did`."""
        self._line(undo.to_json())
        self.entries.append(_Entry(undo))
        return len(self.entries) - 1

    def did(self, number: int) -> None:
        """The step numbered NUMBER is done."""
        self.entries[number].done = True
        self._line({"done": number})

    def _line(self, data: dict[str, Any]) -> None:
        # flushed, not synced: /run is in memory, so a power loss takes the kernel state with it
        try:
            self.handle.write(compact_json(data) + "\n")
            self.handle.flush()
        except OSError as exc:
            raise KernelError(f"cannot write the journal in {state.directory(self.netns)}: {exc.strerror}") from exc

    def rollback(self, rpdb: Rpdb | None) -> list[str]:
        """Undo every done step, newest first; the messages of the undos that failed."""
        problems: list[str] = []
        for entry in reversed(self.entries):
            if entry.done:
                _undo(entry.undo, rpdb, problems)
        self.entries = []
        return problems

    def close(self) -> None:
        """The apply committed or was rolled back: the journal goes."""
        self.handle.close()
        state.remove_journal(self.netns)


@dataclass(frozen=True)
class Recovery:
    """What `recover` found and did: the pid of the apply that died, the steps undone, the undos that failed."""

    pid: int
    committed: bool
    undone: list[str]
    problems: list[str]

    def messages(self) -> list[str]:
        if self.committed:
            return [f"an apply (pid {self.pid}) was cut short just after it committed: its journal was removed"]
        lines = [f"an apply (pid {self.pid}) was cut short: undid its {len(self.undone)} steps"]
        return lines + [f"could not undo {problem}" for problem in self.problems]


def recover(netns: str | None) -> Recovery | None:
    """Finish what an apply that died left (module doc): under the lock, before anything else."""
    assert state.holds_lock(netns)
    state.remove_leftovers(netns)
    lines = state.read_journal(netns)
    if lines is None:
        return None
    header = lines[0] if lines and lines[0].get("format") in READABLE_FORMATS else {}
    written = state.written(netns)
    pid = int(header.get("pid", 0))
    if header and header.get("state") != (list(written) if written else None):
        state.remove_journal(netns)
        return Recovery(pid, True, [], [])
    entries: list[_Entry] = []
    for line in lines[1:]:
        if "undo" in line:
            entries.append(_Entry(Undo(**line["undo"])))
        elif "done" in line and 0 <= line["done"] < len(entries):
            entries[line["done"]].done = True
    undone: list[str] = []
    problems: list[str] = []
    with Rpdb() as rpdb:
        for entry in reversed(entries):
            if entry.done:
                _undo(entry.undo, rpdb, problems)
            else:
                try:
                    perform(entry.undo, rpdb)
                except KernelError:
                    pass  # the step in flight never reached the kernel: its undo is refused, nothing to do
            undone.append(entry.undo.what)
    state.remove_journal(netns)
    return Recovery(pid, False, undone, problems)


def _undo(undo: Undo, rpdb: Rpdb | None, problems: list[str]) -> None:
    try:
        perform(undo, rpdb)
    except KernelError as exc:
        problems.append(f"{undo.what}: {exc}")
