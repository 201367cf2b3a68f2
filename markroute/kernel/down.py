"""Removing what markroute installed, and nothing else.

The state file says what that is. Without it (a lost /run, a crashed first apply) the
fallback still only touches what is provably markroute's: the table `inet markroute`,
ip rules with protocol 77 inside the priority band, and protocol-77 routes in the
tables those rules looked up. The table goes first so nothing is marked any more,
then the rules, so no packet is sent to a table that is being emptied, then the
routes; sysctls go back to the values found before markroute changed them, unless
someone else has changed them since, and forwarding is never turned off
(`markroute.kernel.restore` says why).

An apply that was killed before its commit is undone first (`journal.recover`), so
its sysctls go back too. Down holds the namespace's lock and, once it has the lock,
always completes: SIGINT, SIGTERM and SIGHUP are noted and reported after it
(`commands/down.py`). Down killed outright is finished by the next down: every step
removes only what is still there.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial

from markroute.kernel import (
    KernelError,
    interrupt,
    journal,
    nft,
    nftnetlink,
    restore,
    state,
)
from markroute.kernel import netns as namespaces
from markroute.kernel.apply import route_text, rule_text
from markroute.kernel.rpdb import Rpdb, route_key
from markroute.model import Settings
from markroute.plan import BAND_WIDTH, TABLE_NAME, IpRule, Route
from markroute.values import BOUND_TABLE_OFFSET


@dataclass
class DownReport:
    changes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


def down(netns: str | None = None, rule_priority: int | None = None, force: bool = False) -> DownReport:
    """Remove markroute from the current namespace; RULE_PRIORITY helps only when the state is lost.

    Without a record, the table `inet markroute` may be someone else's: only FORCE
    removes it. A damaged record stops `down` unless FORCE, which then removes what is
    provably markroute's, as if the record were lost, and says which sysctls it cannot
    put back.
    """
    report = DownReport()
    with state.locked(netns, "markroute down"):
        recovery = journal.recover(netns)
        if recovery is not None:
            report.warnings += recovery.messages()
        salvaged: state.Salvage | None = None
        try:
            recorded = state.load(netns, report.warnings.append)
        except state.DamagedState as exc:
            if not force:
                raise
            report.warnings.append(f"{exc}; removing what markroute installed without it")
            salvaged = state.salvage(netns)
            if salvaged is None:
                report.warnings.append("the sysctls markroute changed are left as they are: their original values "
                                       "were in the damaged record (see `markroute plan` for which ones)")
            recorded = None
        with Rpdb() as rpdb:
            live_rules = rpdb.own_rules()
            live_routes = rpdb.own_routes()
            if recorded is None:
                rules, routes = _leftovers(live_rules, live_routes, rule_priority or Settings().rule_priority)
                table = TABLE_NAME
            else:
                installed_rules = set(recorded.rules)
                installed_routes = {route_key(r) for r in recorded.routes}
                rules = [r for r in live_rules if r in installed_rules]
                routes = [r for r in live_routes if route_key(r) in installed_routes]
                table = recorded.table_name
            if recorded is not None or force:
                _attempt(report, partial(_drop_table, table, report), None)
            elif nftnetlink.table_exists(table):
                report.errors.append(f"nftables table inet {table} is left in place: markroute has no record of "
                                     "installing it (another program's?); `markroute down --force` removes it")
            for rule in rules:
                _attempt(report, partial(rpdb.delete_rule, rule), f"- rule {rule_text(rule)}")
            for route in sorted(routes, key=lambda r: r.gateway is None):
                _attempt(report, partial(rpdb.delete_route, route), f"- route {route_text(route)}")
        sysctls = recorded or salvaged
        if sysctls is not None:
            for path, original in sysctls.sysctls_original.items():
                applied = sysctls.sysctls_applied.get(path)
                _attempt(report, partial(_restore_sysctl, path, original, applied, report), None)
        if not report.errors:
            state.remove(netns)
    return report


def forget_vanished(netns: str) -> bool:
    """Forget the record of namespace NETNS if the namespace itself is gone; whether there was one.

    A namespace deleted without `down` took markroute's table, rules, routes and
    sysctls with it, so nothing is left to remove but its record under /run/markroute
    (which would otherwise stay until the next boot), and the journal and temporary
    files of an apply cut short there.
    """
    directory = state.directory(netns)
    if namespaces.path(netns).exists() or not any((directory / name).exists()
                                                  for name in (state.STATE_RECORD, state.JOURNAL)):
        return False
    with state.locked(netns, "markroute down"):
        state.remove(netns)
        state.remove_journal(netns)  # what an apply cut short there changed went with the namespace
        state.remove_leftovers(netns)
    return True


def _leftovers(rules: list[IpRule], routes: list[Route], priority: int) -> tuple[list[IpRule], list[Route]]:
    """markroute's rules in the band and its routes in the tables they look up, with each
    fwmark table's bound table (whose `from` rule may be missing: main's default source has none)."""
    band = range(priority, priority + BAND_WIDTH)
    ours = [r for r in rules if r.priority in band]
    tables = {r.table for r in ours if r.table is not None}
    tables |= {r.table + BOUND_TABLE_OFFSET for r in ours if r.table is not None and r.fwmark is not None}
    return ours, [r for r in routes if r.table in tables]


def _drop_table(name: str, report: DownReport) -> None:
    if nftnetlink.table_exists(name):
        nft.delete_table(name)
        report.changes.append(f"nftables table inet {name} deleted")


def _restore_sysctl(path: str, original: str, applied: str | None, report: DownReport) -> None:
    decision = restore.restore(path, original, applied)
    if decision.message is not None:
        (report.changes if decision.action == "restore" else report.warnings).append(decision.message)


def _attempt(report: DownReport, step: Callable[[], None], change: str | None) -> None:
    """Run one removal; a failure is recorded and the others still run. No signal stops down
    between two (`interrupt.fault_point`: only the test hook)."""
    try:
        step()
    except KernelError as exc:
        report.errors.append(str(exc))
    else:
        if change is not None:
            report.changes.append(change)
    interrupt.fault_point(f"down: {change or 'a removal'}")
