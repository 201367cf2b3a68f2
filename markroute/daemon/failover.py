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
in step, in the daemon's own file (`state.amend`: state.json stays apply's). The
listing runs as a child process watched by the reactor instead of holding up probes
and failovers; it leaves set elements out (`nft -t`: a failover never changes them, and
listing 100,000 of them takes nft seconds), and the plan's elements complete it.
"""

from __future__ import annotations

import json
import os
import selectors
import subprocess
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from markroute.compile import UplinkAvailability
from markroute.daemon.reactor import Reactor
from markroute.daemon.uplinkstate import DEGRADED_WEIGHT, State
from markroute.kernel import KernelError, conntrack, digest, nft, nftnetlink, state
from markroute.plan import Plan
from markroute.plan.nftjson import FAMILY

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


class TableRecorder:
    """Records the live table in the daemon's amendment of the state after it rewrote chains.

    `refresh` (after every rewrite) starts `nft -t -j list table` as a child process; its
    output is read as it comes, and recorded with the new plan's digest and the nf_tables
    generation read before the listing (so the next unchanged apply need not list). A listing
    started before the latest rewrite is thrown away and taken again. `plan_digest`
    is set to the digest of the config's plan with every uplink up (`nominal`), so
    `markroute status -c FILE` keeps comparing against the config, not the health.
    """

    def __init__(self, reactor: Reactor, netns: str | None, on_error: Callable[[str], None]) -> None:
        self.reactor = reactor
        self.netns = netns
        self.on_error = on_error
        self.plan: Plan | None = None
        self.nominal = ""
        self.generation = 0
        self.running: tuple[subprocess.Popen[bytes], int] | None = None
        self.kernel_generation: int | None = None  # nf_tables' generation read just before the listing started
        self.amends: tuple[int, int] | None = None  # the state.json in force when the chains were rewritten
        self.output: list[bytes] = []
        self.waiting: list[Callable[[], None]] = []

    @property
    def idle(self) -> bool:
        return self.running is None and self.plan is None

    def refresh(self, plan: Plan, nominal: str) -> None:
        """After a rewrite of PLAN's chains (under the lock): list the table and record it, against
        the state.json in force now; should another apply write a new one first, the record is dropped."""
        self.amends = state.written(self.netns)
        self.plan = plan
        self.nominal = nominal
        self.generation += 1
        if self.running is None:
            self.start()

    def when_idle(self, callback: Callable[[], None]) -> None:
        """Run CALLBACK once the record is up to date (at once if it is)."""
        if self.idle:
            callback()
        else:
            self.waiting.append(callback)

    def start(self) -> None:
        assert self.plan is not None
        argv = [nft.NFT, "-t", "-j", "list", "table", FAMILY, self.plan.table_name]
        try:
            self.kernel_generation = nftnetlink.generation()
        except KernelError:
            self.kernel_generation = None  # the next apply then lists the table to check it
        process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        assert process.stdout is not None
        os.set_blocking(process.stdout.fileno(), False)
        self.running = (process, self.generation)
        self.output = []
        self.reactor.watch(process.stdout, selectors.EVENT_READ, self.readable)

    def readable(self) -> None:
        assert self.running is not None
        process, generation = self.running
        assert process.stdout is not None
        chunk = process.stdout.read()
        if chunk:
            self.output.append(chunk)
            return
        if chunk is None:  # nothing more for now
            return
        self.reactor.unwatch(process.stdout)
        process.stdout.close()
        error = process.stderr.read().decode(errors="replace").strip() if process.stderr else ""
        if process.stderr:
            process.stderr.close()
        code = process.wait()
        self.running = None
        if generation != self.generation:
            self.start()
            return
        plan, self.plan = self.plan, None
        assert plan is not None
        if code != 0:
            self.on_error(f"cannot list the nftables table to record it: {error or f'nft exited {code}'}")
        else:
            try:
                listing = nft.list_table(plan.table_name, json.loads(b"".join(self.output) or b'{"nftables": []}'))
                self.record(plan, listing or [])
            except (KernelError, ValueError) as exc:
                self.on_error(f"cannot record the nftables table: {exc}")
        waiting, self.waiting = self.waiting, []
        for callback in waiting:
            callback()

    def record(self, plan: Plan, listing: list[Obj]) -> None:
        """Record LISTING as the table now, unless it is not PLAN's shape (`nft.shape`): someone
        else changed the table since the rewrite, and recording it would hide that from `status`."""
        normal = nft.normalise(listing)
        if nft.shape(normal) != nft.shape(plan.nft):
            self.on_error(f"nftables table inet {plan.table_name} was changed by another process: not recorded "
                          "(`markroute status` shows the drift; the next failover applies the config again)")
            return
        table = state.TableRewrite(digest.nft_digest(plan), nft.with_elements(normal, plan.nft), self.kernel_generation)
        state.amend(self.netns, self.nominal, table, self.amends)

    def stamp(self, nominal: str) -> None:
        """After an apply of a health plan: record the config's digest (see the class doc)."""
        self.nominal = nominal
        state.amend(self.netns, nominal)

    def close(self) -> None:
        if self.running is not None:
            process, _ = self.running
            if process.stdout is not None:
                self.reactor.unwatch(process.stdout)
            process.kill()
            process.wait()
            self.running = None
