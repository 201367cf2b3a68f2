"""Installing a plan: converge the kernel to it, or leave everything as it was.

The order never leaves traffic without a path:

1. sysctls (the values found are recorded, so `down` can put them back);
2. routes of the uplink tables (default routes plus main's connected routes), so a
   table is complete before any rule points at it;
3. new ip rules;
4. the nftables table, swapped in one transaction (conntrack is untouched, so
   connections whose uplink mark did not change keep flowing); when only the
   contents of sets changed, just the added and removed elements, in one transaction
   and without re-creating anything; when chains and rules changed, those, in one
   transaction, the sets (maybe 100,000 elements) left alone, their changed elements
   (if any) sent just before in a transaction of their own. A new table is built
   in three transactions: the table, its empty sets and the chains without a hook with
   their rules, then the sets' elements (`nftnetlink`, much faster than nft for 100,000
   prefixes), then the base chains: no packet sees the table before the last one hooks
   it in, complete. On a first apply the first two start before step 1, in a thread
   (`NewTable`): nft and the kernel work while Python does;
5. stale ip rules, then stale routes, then sysctls no longer wanted go back.

Only what differs is touched, so applying the same config twice changes nothing.

An apply is a transaction. It holds the namespace's lock (`state.locked`) throughout;
before its first change it opens a journal on disk and writes down how to undo each
step before taking it (`journal`). Any failure, and SIGINT, SIGTERM or SIGHUP (noted
by `interrupt`, obeyed between steps), undoes every completed step and raises
`ApplyFailed`; the new state.json is the commit, after which a signal no longer stops
it. An apply killed outright leaves the journal, and the next apply or down undoes
what it did before doing anything else (`journal.recover`). An uplink that waits
(`kernel.gateways`: interface missing or down, no address or next hop yet) gets no
routes and a warning instead of a failure; `gateway: auto` uplinks get their default
route via the next hop the kernel knows now.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Literal

from markroute.kernel import (
    KernelError,
    cgroupsets,
    digest,
    dynsets,
    foreign,
    ha,
    interrupt,
    journal,
    nft,
    nftnetlink,
    restore,
    state,
    sysctl,
)
from markroute.kernel.gateways import Survey, missing_text, survey, waiting_text
from markroute.kernel.journal import Journal, Undo
from markroute.kernel.links import Link, link_state, links
from markroute.kernel.rpdb import Rpdb, route_key
from markroute.kernel.state import State
from markroute.plan import FAMILY_NAMES, IpRule, Plan, Route, Sysctl, resolve
from markroute.plan.nftjson import is_cgroup_set, set_elements
from markroute.values import interval_changes


@dataclass
class ApplyReport:
    changes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    nft_generation: int | None = None  # as recorded: None when someone else committed during the apply
    waiting: dict[str, str] = field(default_factory=dict)  # uplink -> why it waits (a `kernel.gateways.REASONS` key)
    #: The record in force after the apply (written by it, or the one it found when nothing changed):
    #: the daemon keeps it rather than reading back 100,000 elements it just wrote (`TableRecorder.adopt`).
    recorded: State | None = field(default=None, repr=False)

    @property
    def changed(self) -> bool:
        return bool(self.changes)


@dataclass(frozen=True)
class TableChange:
    """How apply brings the nftables table to the plan (`_Apply.table_change` says which and why).

    `before`: the table to put back if it is replaced (None: there was none to put back).
    """

    how: Literal["hook_new", "keep", "update_sets", "rewrite", "create", "replace"]
    before: list[dict[str, object]] | None = None


class ApplyFailed(KernelError):
    """Apply failed and was rolled back; `undo_problems` lists what could not be put back."""

    def __init__(self, cause: str, undo_problems: list[str]) -> None:
        self.cause = cause
        self.undo_problems = undo_problems
        if undo_problems:
            message = f"apply failed: {cause}; rolling back left problems: " + "; ".join(undo_problems)
        else:
            message = f"apply failed: {cause}; everything was put back as it was"
        super().__init__(message)


def apply(
    plan: Plan, netns: str | None = None, force: bool = False, following: bool = False, nominal: str | None = None,
    meanwhile: Callable[[], None] | None = None,
) -> ApplyReport:
    """Converge the kernel of the current namespace to PLAN; NETNS only names the state file.

    Under the namespace's lock: first what an apply that died left is undone
    (`journal.recover`), then the journal of this one is opened (module doc).
    Others' routes and rules where markroute's go, or a table of markroute's name it
    has no record of, stop apply (`foreign`) unless FORCE.

    FOLLOWING (the daemon, which follows the system): a fixed gateway that is not on its
    link (renumbered under it) makes its uplink wait instead of failing the whole apply.
    NOMINAL: the digest recorded as the applied config when PLAN is that config compiled
    with waiting uplinks down (`kernel.waiting.apply_model`), so `status -c FILE` still
    compares with the config; by default PLAN's own.

    MEANWHILE: work of the caller's that reads the system but needs nothing from the
    apply (the CLI's neighbour check): run while the kernel inserts a new table's set
    elements in the background, where Python would otherwise only wait (issue 15), or
    after the apply when there is no such wait.
    """
    with state.locked(netns, "markroute apply"):
        recovery = journal.recover(netns)
        previous = state.load(netns)
        with Rpdb() as rpdb:
            in_the_way = foreign.in_the_way(plan, previous, rpdb)
            if in_the_way and not force:
                raise KernelError(foreign.refusal(in_the_way))
            adopted = foreign.adopt(in_the_way, rpdb)
        log = Journal.begin(netns)
        report = ApplyReport(warnings=(recovery.messages() if recovery else []) + adopted + list(plan.warnings))
        applying = _Apply(plan, netns, previous, log, report, following, nominal, meanwhile)
        report = applying.run()
        ha.restore_hold(plan, netns)  # a new table's hold sets are empty: the role decides
    applying.while_filling()  # if no fill was waited for
    return report


def rule_text(rule: IpRule) -> str:
    return f"{FAMILY_NAMES[rule.version]} {rule.text()}"


def route_text(route: Route) -> str:
    return f"{FAMILY_NAMES[route.version]} {route.text()}"


def _base_chains_pay(plan: Plan) -> bool:
    """Whether listing just the base chains (`nft.list_chains`) costs less than the whole table without
    its elements (`nft.table_structure`).

    nft 1.0.6 fills its cache with every set element for `list chain`, even with `-t`
    (~5 µs of CPU each, per process: 0.5 s at 100,000 prefixes), while the terse table
    listing skips elements but returns every rule (~60 µs each with the parsing here:
    0.6 s at 10,000 policies). So many rules and few elements list the base chains, a
    big set lists the table.
    """
    rules = sum(1 for obj in plan.nft if "rule" in obj)
    elements = sum(len(set_elements(obj["set"])) for obj in plan.nft if "set" in obj and not is_cgroup_set(obj["set"]))
    return elements < rules


class NewTable:
    """A new table made ready before anything hooks it in: the table, its empty sets and the chains
    without a hook with their rules, then the sets' elements, and maybe what nft lists of all that (`listing`).

    Loading 100,000 prefixes keeps the kernel busy for ~0.3 s, and nft parsing and listing
    10,000 policy chains ~1 s, with Python's lock released, so a first apply does it in a
    thread (`start`) while it sets sysctls, routes and rules, none of which touches
    nf_tables. The table has no base chain until `_Apply.create_table` adds them, so no
    packet sees it half filled.
    """

    def __init__(self, plan: Plan) -> None:
        self.plan = plan
        self.thread: threading.Thread | None = None
        self.error: BaseException | None = None
        # as nft listed it, elements and base chains left out; only where that pays (`_base_chains_pay`)
        self.listing: list[dict[str, object]] | None = None
        self.loading = threading.Event()  # the chains are built and with nft, or the fill stopped (`handed_over`)
        self.awaited = threading.Event()  # the apply has nothing left to do but wait for the fill (`wait`)

    def fill(self) -> None:
        """Load the table without its base chains; list it too while the apply still has work of its own.

        The chains go in with the table and its empty sets, before the elements: the apply
        waits until that batch is with nft (`handed_over`), not for the elements too
        (100,000 prefixes: 0.2 s).

        Listed early, only the base chains are listed after the hook-in; with nothing left
        to overlap, one listing of the whole table after the hook-in costs less than that
        (two listings, the second three nft processes reading every rule).
        """
        name = self.plan.table_name
        sets = [obj["set"] for obj in self.plan.nft if "set" in obj and not is_cgroup_set(obj["set"])]
        skeleton = [obj for obj in self.plan.nft if "table" in obj] + nft.without_elements({"set": body} for body in sets)
        skeleton += [obj for obj in self.plan.nft if "set" in obj and is_cgroup_set(obj["set"])]  # resolved by nft.run_batch
        nft.run_batch(({"add": obj} for obj in skeleton + nft.hooked(self.plan.nft)[0]), loading=self.loading)
        loads: list[nftnetlink.SetChange] = []
        for body in sets:
            elements = set_elements(body)
            if elements.intervals:
                loads.append(nftnetlink.SetChange(body["name"], elements.version, added=elements.intervals))
        nftnetlink.update(name, loads)
        if _base_chains_pay(self.plan) and not self.awaited.is_set():  # else the table is listed whole after the hook-in
            self.listing = nft.table_structure(name)

    def start(self) -> None:
        self.thread = threading.Thread(target=self._fill_in_background, name="markroute-sets", daemon=True)
        self.thread.start()

    def _fill_in_background(self) -> None:
        try:
            self.fill()
        except BaseException as exc:  # handed to the main thread by `wait`
            self.error = exc
        finally:
            self.loading.set()

    def handed_over(self) -> None:
        """Until a started fill has built its big batch and handed it to nft (or stopped).

        Building 10,000 chains' JSON takes the thread ~0.15 s of Python; shared with the
        apply's own Python work the batch reached nft 0.2 s later, and nft's load is the
        longest step of a first apply. The apply's own work fits in nft's time after it.
        """
        if self.thread is not None:
            self.loading.wait()

    def wait(self) -> None:
        """Until a started fill is done; its failure is raised here."""
        self.awaited.set()
        if self.thread is not None:
            self.thread.join()
        if self.error is not None:
            raise self.error

    def settle(self) -> None:
        """Until a started fill has stopped, whatever it got to: before the table can be removed again."""
        if self.thread is not None:
            self.thread.join()


class _Apply:
    def __init__(
        self, plan: Plan, netns: str | None, previous: State | None, log: Journal, report: ApplyReport,
        following: bool = False, nominal: str | None = None, meanwhile: Callable[[], None] | None = None,
    ) -> None:
        self.plan = plan
        self.meanwhile = meanwhile  # `apply`'s MEANWHILE, until run (`while_filling`)
        self.following = following
        self.nominal = nominal
        self.netns = netns
        self.previous = previous
        self.rpdb: Rpdb | None = None
        self.new_table: NewTable | None = None
        self.report = report
        self.journal = log
        self.nft_digest = ""  # `digest.nft_digest(plan)`, worked out by `run` while a new table fills
        self.generation = 0  # nf_tables' generation before our first transaction
        self.commits = 0  # this process's commit count then (`nftnetlink.commits`)
        self.plan_shape: nft.Shape | None = None  # `nft.shape` of the plan, if `create_table` worked it out early

    def run(self) -> ApplyReport:
        """The steps in the module doc's order, then the commit; everything undone on failure or interrupt.

        On a first apply (no record, no table) the new table starts filling in the
        background at once (`NewTable.start`: sets, elements, chains without a hook),
        while sysctls, routes and rules go in.
        """
        try:
            interrupt.point("lock held, journal open")
            self.generation, self.commits = nftnetlink.generation(), nftnetlink.commits()
            if self.previous is None and not nftnetlink.table_exists(self.plan.table_name):
                self.adopt(NewTable(self.plan), start=True).handed_over()
            self.nft_digest = digest.nft_digest(self.plan)
            rpdb = Rpdb()
        except BaseException as exc:
            self.roll_back(exc)
            raise
        with rpdb:
            self.rpdb = rpdb
            try:
                self.converge(rpdb)
            except BaseException as exc:
                self.roll_back(exc)
                raise
        self.journal.close()
        return self.report

    def converge(self, rpdb: Rpdb) -> None:
        interfaces = links(rpdb)
        now = survey(rpdb, self.plan.uplinks, link_state(rpdb, interfaces), self.following)
        rules, resolved = resolve(self.plan, now.links)
        routes = self.usable_routes(resolved, interfaces, now)
        sysctls = self.usable_sysctls(interfaces)
        originals = self.set_sysctls(sysctls)
        live_rules = set(rpdb.own_rules())
        live_routes = {route_key(r): r for r in rpdb.own_routes()}
        wanted_routes = {route_key(r): r for r in routes}
        for route in sorted(routes, key=lambda r: r.gateway is not None):
            if route_key(route) not in live_routes:
                self.add_route(route)
        for rule in rules:
            if rule not in live_rules:
                self.add_rule(rule)
        listing = self.swap_table()
        recorded_rules = set(self.previous.rules) if self.previous else set()
        recorded_routes = {route_key(r) for r in self.previous.routes} if self.previous else set()
        stale_rules = live_rules & recorded_rules - set(rules)
        for rule in sorted(stale_rules, key=lambda r: r.priority, reverse=True):
            self.delete_rule(rule)
        stale = [r for k, r in live_routes.items() if k in recorded_routes and k not in wanted_routes]
        for route in sorted(stale, key=lambda r: r.gateway is None):
            self.delete_route(route)
        self.restore_unwanted_sysctls(sysctls, originals)
        self.check_rpdb(rpdb, live_rules - stale_rules | set(rules),
                        (set(live_routes) - {route_key(r) for r in stale}) | set(wanted_routes))
        self.record(rules, routes, sysctls, originals, listing)

    def roll_back(self, cause: BaseException) -> None:
        """Undo every completed step (the journal) and drop the journal; a kernel failure (or an
        interrupt) is then raised as `ApplyFailed`, anything else as it is."""
        if self.new_table is not None:
            self.new_table.settle()
        try:
            problems = self.journal.rollback(self.rpdb)
        finally:
            self.journal.close()
        if isinstance(cause, KernelError):
            raise ApplyFailed(str(cause), problems) from cause

    def check_rpdb(self, rpdb: Rpdb, rules: set[IpRule], routes: set[tuple[object, ...]]) -> None:
        """Read the rules and routes again just before the commit: a change by someone else while
        apply ran (between its first read and its writes) is reported, not silently recorded."""
        live_rules = set(rpdb.own_rules())
        live_routes = {route_key(r) for r in rpdb.own_routes()}
        if live_rules != rules or live_routes != routes:
            self.report.warnings.append(
                "markroute's ip rules or routes were changed by another process while apply ran; "
                "`markroute status` shows the drift, `markroute apply` again converges"
            )

    # -- what can be installed here ---------------------------------------------------

    def usable_routes(self, routes: tuple[Route, ...], interfaces: dict[str, Link], now: Survey) -> list[Route]:
        """Routes whose interface is up; none for an uplink IP version that cannot have its default route now.

        A waiting uplink (`kernel.gateways`: interface missing or down, no address, no
        next hop known yet) is reported, not an error: everything else is installed.
        """
        skipped: set[tuple[int, int]] = set()
        for uplink in self.plan.uplinks:
            readiness = now.uplinks[uplink.name]
            skipped |= {(table, version) for table in uplink.tables for version, _ in readiness.missing}
            if readiness.reason is not None:
                closed = any(rule.action != "lookup" and rule.fwmark == uplink.mark for rule in self.plan.rules)
                self.report.waiting[uplink.name] = readiness.reason
                self.report.warnings.append(waiting_text(uplink.name, uplink.interface, readiness.reason, closed))
            elif readiness.missing:
                self.report.warnings.append(missing_text(uplink.name, uplink.interface, readiness.missing))
        return [r for r in routes if (r.table, r.version) not in skipped and r.dev in interfaces and interfaces[r.dev].up]

    def usable_sysctls(self, interfaces: dict[str, Link]) -> list[Sysctl]:
        usable: list[Sysctl] = []
        for item in self.plan.sysctls:
            interface = sysctl.interface_of(item.path)
            if interface is not None and interface not in interfaces:
                self.report.warnings.append(f"sysctl {item.name} skipped: interface {interface} does not exist")
            elif sysctl.exists(item.path):
                usable.append(item)
            else:
                self.report.warnings.append(f"sysctl {item.name} skipped: this kernel does not have it")
        return usable

    # -- steps ------------------------------------------------------------------------

    def set_sysctls(self, sysctls: list[Sysctl]) -> dict[str, str]:
        """Set each wanted value; return the original values to keep (the first ones found)."""
        originals = dict(self.previous.sysctls_original) if self.previous else {}
        for item in sysctls:
            current = sysctl.read(item.path)
            if current == item.value:
                continue
            change = f"sysctl {item.name}: {current} -> {item.value}"
            self.step(partial(sysctl.write, item.path, item.value),
                      Undo.sysctl(change, item.path, current, item.value), change)
            originals.setdefault(item.path, current)
        return originals

    def restore_unwanted_sysctls(self, sysctls: list[Sysctl], originals: dict[str, str]) -> None:
        """Sysctls an earlier apply changed that this plan no longer sets go back to their originals."""
        if self.previous is None:
            return
        wanted = {item.path for item in sysctls}
        for path, applied in self.previous.sysctls_applied.items():
            original = originals.get(path)
            if path in wanted or original is None or not sysctl.exists(path):
                continue
            originals.pop(path)
            decision = restore.decide(path, original, applied, sysctl.read(path))
            if decision.action == "keep" and decision.message is not None:
                self.report.warnings.append(decision.message)
            elif decision.action == "restore" and decision.message is not None:
                self.step(partial(sysctl.write, path, original),
                          Undo.sysctl(decision.message, path, applied, original), decision.message)

    def add_route(self, route: Route) -> None:
        assert self.rpdb is not None
        change = f"+ route {route_text(route)}"
        self.step(partial(self.rpdb.add_route, route), Undo.route(change, False, route), change)

    def delete_route(self, route: Route) -> None:
        assert self.rpdb is not None
        change = f"- route {route_text(route)}"
        self.step(partial(self.rpdb.delete_route, route), Undo.route(change, True, route), change)

    def add_rule(self, rule: IpRule) -> None:
        assert self.rpdb is not None
        change = f"+ rule {rule_text(rule)}"
        self.step(partial(self.rpdb.add_rule, rule), Undo.rule(change, False, rule), change)

    def delete_rule(self, rule: IpRule) -> None:
        assert self.rpdb is not None
        change = f"- rule {rule_text(rule)}"
        self.step(partial(self.rpdb.delete_rule, rule), Undo.rule(change, True, rule), change)

    def step(self, do: Callable[[], None], undo: Undo, change: str) -> None:
        """Write down how to undo a change, make it, mark it done, report it; a noted signal stops it
        at either side (`interrupt.point`)."""
        number = self.journal.will(undo)
        interrupt.point(f"before: {change}")
        do()
        self.journal.did(number)
        self.report.changes.append(change)
        interrupt.point(f"after: {change}")

    def swap_table(self) -> list[dict[str, object]]:
        """Bring the table to the plan the way `table_change` picks; return its listing as `nft.normalise` gives it.

        Updating sets or rewriting the table can still be refused (someone changed the table
        behind our back, or a set both have changed its elements too, `nft.table_rewrite`): the
        whole table is then replaced, with the recorded table to go back to.
        """
        change = self.table_change()
        previous = self.previous
        if change.how == "keep":
            assert previous is not None
            return previous.nft_listing
        if change.how in ("hook_new", "create"):
            self.create_table()
            return self.live_listing()
        if change.how == "update_sets":
            assert previous is not None
            updated = self.update_sets(previous)
            if updated is not None:
                return updated
        elif change.how == "rewrite":
            assert previous is not None
            if self.rewrite(previous):
                return self.live_listing()
        name = self.plan.table_name
        before = change.before
        what = f"nftables table inet {name} replaced"  # dynsets: dynamic sets' live elements are carried over
        back = (Undo.nft_batch(what, nft.deletion(name)) if before is None
                else Undo.table_replace(what, name, nft.loadable(before)))
        self.step(partial(dynsets.replace_table, name, self.plan.nft), back, what)
        return self.live_listing()

    def table_change(self) -> TableChange:
        """How to bring the table to the plan, from the record and the live table.

        * `hook_new`: a first apply's `NewTable` is filling already: hook it in;
        * `keep`: the plan's table is unchanged and so is the live one: if nobody
          committed an nf_tables transaction since the last apply (the generation it
          recorded) the table is as recorded; otherwise the live table, elements
          included, is checked against the record;
        * `update_sets`: the live structure is as recorded and only set contents differ;
        * `rewrite`: the live structure is as recorded and more than set contents differ: one
          transaction rewrites the chains and adds or drops sets, keeping the sets both have;
        * `create`: there is no table;
        * `replace`: anything else; `before` is the table to roll back to (None: delete).

        Set elements are listed only for the unchanged check or when the live table is
        not what the last apply left (the listing of 100,000 elements takes nft seconds):
        otherwise the record says what to roll back to. The structure is not listed either
        when nobody committed since the last apply (nft takes ~0.6 s to list 10,000 policies'
        chains and rules).
        """
        name = self.plan.table_name
        previous = self.previous
        if self.new_table is not None:
            return TableChange("hook_new")
        if previous is not None and previous.nft_digest == self.nft_digest:
            if previous.nft_generation == nftnetlink.generation():
                return TableChange("keep")
            before = nft.list_table(name)
            if before is None:
                return TableChange("create")
            if nft.normalise(before) == previous.nft_listing:
                return TableChange("keep")
            return TableChange("replace", before)
        if previous is None or previous.nft_generation != nftnetlink.generation():
            structure = nft.table_structure(name)
            if structure is None:
                return TableChange("create")
            if previous is None or nft.normalise(structure) != nft.without_elements(previous.nft_listing):
                return TableChange("replace", nft.list_table(name))
        if digest.same_structure(previous.nft_digest, self.nft_digest):
            return TableChange("update_sets", previous.nft_listing)
        return TableChange("rewrite", previous.nft_listing)

    def adopt(self, new_table: NewTable, start: bool) -> NewTable:
        """Make NEW_TABLE the one to hook in, and removed again by a rollback, however far it got;
        START: fill it in the background (else the caller fills it in line)."""
        self.new_table = new_table
        change = f"nftables table inet {self.plan.table_name} created"
        number = self.journal.will(Undo.nft_batch(change, nft.deletion(self.plan.table_name)))
        interrupt.point(f"before: {change}")
        if start:
            new_table.start()
        self.journal.did(number)  # done or not, its undo (delete the table) is right
        return new_table

    def live_listing(self) -> list[dict[str, object]]:
        """The table as nft lists it now, without asking for its elements: the plan's complete it.

        What is recorded is what the next apply and `status` compare against, so a listing
        that is not the plan's shape (someone changed the table between our commit and this
        read) must not be recorded: the apply fails and is rolled back instead. A new table
        listed before its base chains went in (`NewTable.listing`: the cheaper listing, by
        `_base_chains_pay`, and the apply still had work of its own then) needs only those
        listed now, when nobody else has committed since this apply began (nf_tables'
        generation moved by exactly our commits); otherwise the whole table is listed.
        """
        name = self.plan.table_name
        listed = self.new_table.listing if self.new_table is not None else None
        if listed is not None:
            listed = listed + nft.list_chains(name, [o["chain"]["name"] for o in nft.hooked(self.plan.nft)[1] if "chain" in o])
            if nftnetlink.generation() != self.generation + nftnetlink.commits() - self.commits:
                listed = None  # someone else committed meanwhile: what was listed early may not be the table now
        listing = nft.normalise(listed if listed is not None else nft.table_structure(name) or [])
        if nft.shape(listing) != (self.plan_shape or nft.shape(self.plan.nft)):
            raise KernelError(f"nftables table inet {self.plan.table_name} was changed by another process "
                              "while apply ran; run apply again")
        return nft.with_elements(listing, self.plan.nft)

    def create_table(self) -> None:
        """A new table (`NewTable`, maybe filled already), then the base chains that hook it in.

        Until the last transaction no chain is hooked, so packets never see a set or chain
        half filled; a failure in any step removes the table again (the journal).
        """
        name = self.plan.table_name
        new_table = self.new_table
        if new_table is None:
            new_table = self.adopt(NewTable(self.plan), start=False)
            new_table.fill()
        else:
            self.while_filling()
        base = [{"add": obj} for obj in nft.hooked(self.plan.nft)[1]]  # these two while the kernel still fills
        self.plan_shape = nft.shape(self.plan.nft)  # for `live_listing`
        new_table.wait()
        interrupt.point(f"sets and chains of inet {name} filled")
        nft.run_batch(base)
        self.report.changes.append(f"nftables table inet {name} created")
        interrupt.point(f"chains of inet {name} hooked in")

    def while_filling(self) -> None:
        """The caller's MEANWHILE (`apply`), once: the kernel inserts elements meanwhile, with Python's lock released."""
        work, self.meanwhile = self.meanwhile, None
        if work is not None:
            work()

    def update_sets(self, previous: State) -> list[dict[str, object]] | None:
        """Add and remove just the elements that changed, in one transaction (`nftnetlink`).

        The live table's structure was found as recorded, so its elements are taken to be
        the recorded ones. A refused update (someone changed the set behind our back)
        changes nothing and leads to replacing the table instead (None).
        """
        structure = nft.without_elements(previous.nft_listing)
        if not self.update_elements(previous, None):
            return None
        return nft.with_elements(structure, self.plan.nft)

    def update_elements(self, previous: State, only: set[str] | None) -> bool:
        """Bring the elements of the plan's sets (of ONLY, if given) from the recorded ones to the
        plan's in one netlink transaction, a step of its own; False if the kernel refused it (then
        nothing changed). A set the record lacks gets all its elements."""
        recorded = {obj["set"]["name"]: set_elements(obj["set"]) for obj in previous.nft_listing
                    if "set" in obj and not is_cgroup_set(obj["set"])}
        changes: list[nftnetlink.SetChange] = []
        for obj in self.plan.nft:
            if "set" in obj and not is_cgroup_set(obj["set"]) and (only is None or obj["set"]["name"] in only):
                wanted = set_elements(obj["set"])  # a cgroup set's paths are in the structure's digest
                before = recorded.get(obj["set"]["name"])
                removed, added = interval_changes(before.intervals if before is not None else (), wanted.intervals)
                if removed or added:
                    changes.append(nftnetlink.SetChange(obj["set"]["name"], wanted.version, removed, added))
        if not changes:
            return True
        name = self.plan.table_name
        change = "nftables sets of inet {}: {}".format(name, ", ".join(
            f"{c.name} +{len(c.added)} -{len(c.removed)} elements" for c in changes))
        try:
            self.step(partial(nftnetlink.update, name, changes),
                      Undo.set_update(change, name, [c.inverse() for c in changes]), change)
        except interrupt.Interrupted:
            raise
        except KernelError:
            return False
        return True

    def rewrite(self, previous: State) -> bool:
        """Rewrite every chain, and add or drop sets, in one transaction, leaving the sets both
        configs have alone; whether that could be done (`nft.table_rewrite`).

        A policy edited, or one with a set of its own added, beside a 1,000,000-prefix set:
        nft need not load that set's elements again as a whole-table replace would. When such
        a set's contents changed too, its elements are updated first, over netlink in a
        transaction of their own (`update_elements`), then the chains are rewritten: for the
        moment between the two, packets meet the new elements under the old rules. A
        whole-table replace would be one transaction, but nft would read, check and send
        every element again (seconds and ~1.2 GB at 1,000,000 prefixes).
        """
        if cgroupsets.paths(self.plan.nft) and not digest.same_elements(previous.nft_digest, self.nft_digest):
            return False  # cgroup paths may have changed: the record keeps no elements of cgroup sets to compare
        name = self.plan.table_name
        recorded = nft.loadable(previous.nft_listing)
        kept = nft.kept_sets(recorded, list(self.plan.nft))
        updated = nft.with_elements(recorded, [obj for obj in self.plan.nft if obj.get("set", {}).get("name") in kept])
        forward = nft.table_rewrite(name, updated, list(self.plan.nft))
        back = nft.table_rewrite(name, list(self.plan.nft), updated)
        if forward is None or back is None or not self.update_elements(previous, kept):
            return False
        sets = [f"{verb} set {command[verb]['set']['name']}" for command in forward
                for verb in ("add", "delete") if "set" in command.get(verb, {})]
        change = f"nftables chains of inet {name} rewritten" + (f" ({', '.join(sets)})" if sets else "")
        self.step(partial(nft.run_batch, forward), Undo.nft_batch(change, back), change)
        return True

    def record(
        self,
        rules: tuple[IpRule, ...],
        routes: list[Route],
        sysctls: list[Sysctl],
        originals: dict[str, str],
        listing: list[dict[str, object]],
    ) -> None:
        new = State(
            plan_digest=self.nominal or digest.plan_digest(self.plan, self.nft_digest),
            nft_digest=self.nft_digest,
            table_name=self.plan.table_name,
            mask=self.plan.mask,
            rule_priority=self.plan.rule_priority,
            nft_listing=listing,
            rules=list(rules),
            routes=routes,
            sysctls_original=originals,
            sysctls_applied={item.path: item.value for item in sysctls if item.path in originals},
            uplinks=list(self.plan.uplinks),
            policies=list(self.plan.policies),
            groups=list(self.plan.groups),
            cgroups=cgroupsets.paths(self.plan.nft),
            connection_records=self.plan.connection_records,
            applied_at=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            warnings=self.report.warnings,
            nft_generation=self.generation_after(),
        )
        self.report.nft_generation = new.nft_generation
        if self.report.changed or self.previous is None or replace(new, applied_at=self.previous.applied_at) != self.previous:
            state.save(self.netns, new)
            interrupt.fault_point("committed: state.json renamed")
            self.report.recorded = new
        else:
            self.report.recorded = self.previous

    def generation_after(self) -> int | None:
        """nf_tables' generation now, if it moved by exactly our own commits since before the first
        (else someone else committed meanwhile: None, and the next apply lists the table to check it).
        Unchanged and nothing committed: the recorded one stands, or the one read now."""
        after = nftnetlink.generation()
        ours = nftnetlink.commits() - self.commits
        if after != self.generation + ours:
            return None
        if ours == 0 and self.previous is not None and self.previous.nft_generation not in (None, after):
            return None  # the table was checked against the record (`table_change`) only if it was listed
        return after
