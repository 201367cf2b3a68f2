"""Acting on a health change: rewrite the few chains that depend on it, move the dead uplink's flows.

Only the `via_<uplink>` and `group_<name>` chains depend on `UplinkAvailability` (see the compiler),
so a health change never replaces the table: `chain_batch` compares the installed plan
with the one compiled for the new health and emits one nftables batch that flushes and
refills exactly the chains whose rules differ (and adds or deletes a chain only the new
health needs, such as the last resort's mark chain). Sets, counters and every other
chain are left alone, and the batch is one kernel transaction: no packet ever sees half
a failover.

Then the connections whose ct mark names an uplink that just went down are deleted,
by mark and mask, through netlink (`conntrack.delete_by_mark`): their next packet is a
new connection and takes whatever the rewritten chains now say. Connections of every
other uplink, and unmarked ones, are not touched. The order matters: chains first, so
a deleted flow can never be re-marked for the dead uplink.

`TableRecorder` keeps the record `markroute status` and the next apply compare against
in step, in the daemon's own file (`state.amend`: state.json stays apply's). It composes
the record from what it knows instead of listing the table after the daemon's own
transaction, and writes it once the flows moved: nothing between an uplink declared
down and its flows moved lists a table, spawns more than the one `nft` of the batch, or
waits for a disk (BENCHMARKS.md, "Daemon reaction").
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from markroute.compile import UplinkAvailability
from markroute.daemon.reactor import Reactor, Timer
from markroute.daemon.uplinkstate import DEGRADED_WEIGHT, State
from markroute.kernel import KernelError, conntrack, digest, nft, state
from markroute.plan import Plan
from markroute.plan.nftjson import FAMILY, json_default

Obj = dict[str, Any]


def availability_of(states: Mapping[str, State]) -> UplinkAvailability:
    """The compiler's view of the uplinks' states."""
    return UplinkAvailability(
        down=frozenset(name for name, current in states.items() if current in ("down", "unknown", "waiting")),
        weight_factor={name: DEGRADED_WEIGHT for name, current in states.items() if current == "degraded"},
    )


def _parts(plan: Plan) -> tuple[dict[str, Obj], dict[str, list[Obj]], list[Obj]]:
    """Chain objects by name, rules by chain, and everything else (table, sets)."""
    chains: dict[str, Obj] = {}
    rules: dict[str, list[Obj]] = {}
    others: list[Obj] = []
    for obj in plan.nft:
        if "chain" in obj:
            chains[obj["chain"]["name"]] = obj
        elif "rule" in obj:
            rules.setdefault(obj["rule"]["chain"], []).append(obj)
        else:
            others.append(obj)
    return chains, rules, others


def chain_batch(installed: Plan, wanted: Plan) -> list[Obj]:
    """The nft commands that turn INSTALLED's table into WANTED's by rewriting whole chains.

    Raises ValueError when the plans differ in more than chains and their rules: that
    is a config change, which needs `apply`, not a failover.
    """
    old_chains, old_rules, old_others = _parts(installed)
    new_chains, new_rules, new_others = _parts(wanted)
    if installed.table_name != wanted.table_name or old_others != new_others or any(
        old_chains[name] != new_chains[name] for name in old_chains.keys() & new_chains.keys()
    ):
        raise ValueError("the plans differ in more than chain rules")
    commands: list[Obj] = [{"add": new_chains[name]} for name in new_chains if name not in old_chains]
    for name in new_chains:
        if old_rules.get(name, []) != new_rules.get(name, []):
            if name in old_chains:
                commands.append({"flush": {"chain": _chain_ref(wanted.table_name, name)}})
            commands += [{"add": rule} for rule in new_rules.get(name, [])]
    for name in old_chains:
        if name not in new_chains:
            commands.append({"flush": {"chain": _chain_ref(wanted.table_name, name)}})
            commands.append({"delete": {"chain": _chain_ref(wanted.table_name, name)}})
    return commands


def _chain_ref(table: str, name: str) -> Obj:
    return {"family": FAMILY, "table": table, "name": name}


def changed_chains(commands: Iterable[Obj]) -> list[str]:
    """Names of the chains a batch rewrites, adds or deletes, for the log."""
    names: list[str] = []
    for command in commands:
        for body in command.values():
            if "chain" in body and body["chain"]["name"] not in names:
                names.append(body["chain"]["name"])
    return names


def move_flows(marks: Iterable[int], mask: int) -> None:
    """Delete the connections of uplinks that went down (their marks), and only theirs."""
    for mark in marks:
        conntrack.delete_by_mark(mark, mask)


@dataclass(frozen=True)
class Rewrite:
    """Chains the daemon rewrote to PLAN's, and what the record of it needs (`TableRecorder.rewritten`)."""

    plan: Plan
    chains: frozenset[str]
    generation: int | None
    nominal: str
    amends: tuple[int, int] | None


class TableRecorder:
    """Keeps the daemon's record of the table (`table.json`) in step with its own chain rewrites,
    without listing the table.

    The record must say what nft would list (`status` and the next apply compare the live
    listing with it), and nft lists some rules in a form of its own (a mark set under a mask
    comes back with another constant). Listing the table after every rewrite cost a process
    per failover, and its set elements would cost seconds; instead the record is composed:
    the table as the last apply recorded it (`adopt`, read from the state), with each
    rewritten chain replaced by its new rules, every rule in the form nft listed that same
    rule at an apply (`forms`, learnt chain by chain from the plan and its listing) or, for a
    rule no apply held, as written. The health-dependent chains hold nfproto matches, gotos,
    numgen maps and accepts, which nft lists as written (tests/test_daemon_record.py compares
    `status` after failovers of every kind).

    `rewritten` only notes a rewrite (under the lock, with the state.json in force); `flush`
    composes and writes the record at the next loop turn, once the flows moved, and before
    anything that applies (resync, reload, exit), which reads it. Should another apply have
    written a new state.json meanwhile, the record is dropped (`state.amend`). `forms` only
    grows with rules the config ever had, and never goes stale: how nft lists a rule
    depends on the rule alone. `plan_digest` is the digest of the config's plan with every
    uplink up (`nominal`), so `markroute status -c FILE` keeps comparing against the config,
    not the health.
    """

    def __init__(self, reactor: Reactor, netns: str | None, on_error: Callable[[str], None]) -> None:
        self.reactor = reactor
        self.netns = netns
        self.on_error = on_error
        self.listing: list[Obj] = []  # the live table as nft lists it (`nft.normalise`), set elements included
        self.forms: dict[str, Obj] = {}  # a plan object (rule or chain, as `_key`) -> how nft listed it
        self.pending: list[Rewrite] = []  # rewrites not recorded yet, in order
        self.timer: Timer | None = None

    @property
    def idle(self) -> bool:
        """Whether the record on disk is up to date."""
        return not self.pending

    def adopt(self, plan: Plan, recorded: state.State | None) -> None:
        """After an apply of PLAN: the table as RECORDED now (the apply's own record, `ApplyReport.recorded`:
        not read back from disk), and the listed form of PLAN's rules and chains."""
        self.flush()
        self.listing = recorded.nft_listing if recorded is not None else []
        planned = _plain(obj for obj in plan.nft if _chain_of(obj) is not None)
        listed_chains = {obj["chain"]["name"]: obj for obj in self.listing if "chain" in obj}
        listed_rules = _rules_by_chain(self.listing)
        for name, rules in _rules_by_chain(planned).items():
            listed = listed_rules.get(name, [])
            if len(listed) == len(rules) and all(rule["rule"].get("comment") == form["rule"].get("comment")
                                                for rule, form in zip(rules, listed)):
                self.forms.update((_key(rule), form) for rule, form in zip(rules, listed))
        for obj in planned:
            if "chain" in obj and obj["chain"]["name"] in listed_chains:
                self.forms[_key(obj)] = listed_chains[obj["chain"]["name"]]

    def rewritten(self, plan: Plan, chains: Iterable[str], generation: int | None, nominal: str) -> None:
        """CHAINS of PLAN were just rewritten in one transaction, which left nf_tables at GENERATION
        (None: someone else committed too). Called under the lock, so the state.json in force now
        is the one the record amends; the record itself is made and written by `flush`."""
        self.pending.append(Rewrite(plan, frozenset(chains), generation, nominal, state.written(self.netns)))
        if self.timer is None:
            self.timer = self.reactor.call_at(self.reactor.now(), self.flush)

    def flush(self) -> None:
        """Record the pending rewrites (`table.json`, no fsync: see `state.amend`)."""
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        pending, self.pending = self.pending, []
        for rewrite in pending:
            wanted = _plain(obj for obj in rewrite.plan.nft if _chain_of(obj) in rewrite.chains)
            kept = [obj for obj in self.listing if _chain_of(obj) not in rewrite.chains]
            self.listing = nft.normalise(kept + [self.forms.get(_key(obj), obj) for obj in wanted])
        if not pending:
            return
        last = pending[-1]
        table = state.TableRewrite(digest.nft_digest(last.plan), self.listing, last.generation)
        try:
            state.amend(self.netns, last.nominal, table, last.amends)
        except KernelError as exc:
            self.on_error(f"cannot record the nftables table: {exc}")

    def stamp(self, nominal: str) -> None:
        """After an apply of a health plan: record the config's digest (see the class doc)."""
        self.flush()
        state.amend(self.netns, nominal)


def _chain_of(obj: Obj) -> str | None:
    """The chain a chain or rule object is or belongs to (None for tables and sets)."""
    if "chain" in obj:
        return str(obj["chain"]["name"])
    if "rule" in obj:
        return str(obj["rule"]["chain"])
    return None


def _plain(objects: Iterable[Obj]) -> list[Obj]:
    """Plan objects as plain JSON values (anonymous sets' elements as nft lists them), like a listing's."""
    return [json.loads(json.dumps(obj, default=json_default)) for obj in objects]


def _key(obj: Obj) -> str:
    return json.dumps(nft.normalise([obj])[0], sort_keys=True)


def _rules_by_chain(objects: Iterable[Obj]) -> dict[str, list[Obj]]:
    rules: dict[str, list[Obj]] = {}
    for obj in objects:
        if "rule" in obj:
            rules.setdefault(obj["rule"]["chain"], []).append(obj)
    return rules
