"""The daemon: apply the config, then keep it true until stopped.

Start-up: the uplinks' states are taken from the daemon's record when there is one
(a restart, even after SIGKILL, then installs exactly what is already there and
disturbs nothing), interfaces that are missing or down make their uplinks down at
once, and the plan for that health is applied like `markroute apply` would. Then one
thread serves everything in a `Reactor`: probe sockets, the netlink listener, timers
and signals.

A health change (`Transition`) is acted on in the same loop turn: the chains that
depend on health are rewritten in one nftables transaction and the flows of uplinks
that went down are deleted from conntrack (`failover`). Transitions of one turn share
one transaction. A change of the system (a link back, a new address) is followed by a
resync: `apply` of the installed plan, which puts back routes the kernel removed with
a link and follows addresses, and leaves the table alone.

Signals: SIGTERM and SIGINT stop the daemon and leave the rules in place (so a
restart or an upgrade does not interrupt traffic) unless `--down-on-exit`; SIGHUP
reloads the config and applies the difference, keeping the state of every uplink
whose definition did not change. An invalid config on reload, or one whose plan the
kernel refuses, is logged and ignored: the previous config and its plan stay in force.
`markroute apply` of the daemon's config file is the same reload, asked over the
control socket (`control`), and answered with what it did.

Every write holds the namespace's lock (`state.locked`), like `markroute apply` and
`down`; a failover first checks that nobody else wrote since it last did (`untouched`:
the same state.json, nf_tables' generation unmoved) and goes through apply if someone did.

Records (`kernel.state`): the daemon writes only its own files, `daemon.json` (the
uplinks' states) and `table.json` (what it changed on top of the last apply, through
`TableRecorder`); `state.json` is written by the applies it runs, like any other. A
`state.json` it did not leave means someone else applied: it applies its own config
again.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import selectors
import signal
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from types import FrameType
from typing import Any

from markroute.compile import UplinkAvailability, compile_plan
from markroute.daemon import churn, dnsmasq, failback, follow, logs
from markroute.daemon.churn import ChurnLog
from markroute.daemon.control import Answer, ControlServer, Request
from markroute.daemon.failback import FailbackClock
from markroute.daemon.failover import (
    TableRecorder,
    availability_of,
    chain_batch,
    changed_chains,
    move_flows,
)
from markroute.daemon.hamove import move_when_master
from markroute.daemon.hooks import Hooks
from markroute.daemon.metrics import Exposed, MetricsServer
from markroute.daemon.monitor import UplinkMonitor, probe_targets
from markroute.daemon.netlink import LinkWatcher
from markroute.daemon.reactor import Reactor, Timer
from markroute.daemon.resolver import DomainResolver
from markroute.daemon.uplinkstate import State, Transition, UplinkHealth
from markroute.diagnostics import Diagnostic
from markroute.kernel import (
    EnvironmentProblem,
    KernelError,
    cgroupsets,
    digest,
    libnft,
    nft,
    nftnetlink,
    state,
)
from markroute.kernel.apply import apply
from markroute.kernel.down import down
from markroute.kernel.gateways import describe as describe_reason
from markroute.kernel.links import Link, links
from markroute.kernel.rpdb import Rpdb
from markroute.kernel.state import DaemonRecord, UplinkRecord
from markroute.kernel.waiting import (
    NeedsGateway,
    current_survey,
    refuse_missing_gateways,
)
from markroute.model import Model, Uplink
from markroute.plan import Plan
from markroute.probes.method import Egress

HOUSEKEEPING = 1.0  # seconds between record updates and hook reaping
RESYNC_DELAY = 0.1  # netlink events come in bursts: one resync per burst
RETRY = 1.0
FAILOVER_LOCK_WAIT = 0.5  # a failover waits this long for an apply holding the lock, then retries after RETRY


Loader = Callable[[], tuple[Model | None, list[Diagnostic]]]


@dataclass(frozen=True)
class Options:
    """How `markroute run` was started; `load` reads the config again on SIGHUP (the daemon
    does not import config: commands/run.py hands it the loader)."""

    load: Loader
    config: str  # the config file's absolute path: `markroute apply` of this file is handed to the daemon
    netns: str | None
    metrics: tuple[str, int] | None = None
    down_on_exit: bool = False


@dataclass(frozen=True)
class RulesEvent:
    """A change of the rules `follow` made, logged by its caller once the flows moved too."""

    message: str
    fields: dict[str, Any]


def _same_file(one: str, other: str) -> bool:
    """Whether two paths name one file (links and relative spellings included); the same path if neither exists."""
    try:
        return os.path.samefile(one, other)
    except (OSError, ValueError):  # ValueError: a NUL in a path
        return os.path.abspath(one) == os.path.abspath(other)


def _identity(uplink: Uplink) -> tuple[object, ...]:
    """What must stay the same on reload for an uplink to keep its health."""
    return (uplink.interface, uplink.mark, uplink.gateway, uplink.gateway6, uplink.check)


class Daemon:
    def __init__(self, options: Options, model: Model, log: logging.Logger) -> None:
        self.options = options
        self.netns = options.netns
        self.model = model
        self.log = log
        self.reactor = Reactor(self.internal_error)
        self.monitors: dict[str, UplinkMonitor] = {}
        self.recorder = TableRecorder(self.reactor, self.netns, self.log.error)
        self.hooks = Hooks(model.settings.on_change, self.netns, log)
        self.domains = DomainResolver(log)  # domain sets the daemon fills itself (dns: markroute)
        self.installed: Plan | None = None
        self.installed_availability = UplinkAvailability()
        self.unmoved: frozenset[str] = frozenset()  # uplinks down whose flows are still to be deleted
        self.nominal = ""  # digest of the config's plan with every uplink up (`TableRecorder`)
        self.nominal_model: Model | None = None  # the model `nominal` was computed for
        self.pending: list[Transition] = []
        self.declared: tuple[float, float] | None = None  # when the first of `pending` was decided: clock, CPU time
        self.news: list[Transition] = []  # for on_change, in order (`UplinkHealth.news`)
        self.act_timer: Timer | None = None
        self.release_timer: Timer | None = None
        self.failback = FailbackClock()
        self.resync_timer: Timer | None = None
        self.link_usable: dict[str, bool | None] = {}  # None: the interface does not exist
        self.follower = follow.Follower()  # waiting uplinks and learned next hops (`gateway: auto`)
        self.rule_changes = 0
        self.started = time.time()
        self.saved: DaemonRecord | None = None
        self.state_seen: tuple[int, int] | None = None
        self.generation: int | None = None  # nf_tables' generation our last write left (`untouched`)
        self.exposed: Exposed | None = None
        self.signals: list[int] = []
        self.stopping = False
        self.wakeup: tuple[socket.socket, socket.socket] | None = None
        self.watcher: LinkWatcher | None = None
        self.metrics: MetricsServer | None = None
        self.control = ControlServer(self.reactor, self.netns, self.on_request, self.refused)
        self.churn = ChurnLog(log)
        self.cgroups_present: set[str] | None = None  # configured cgroups that existed at the last look
        # the table, its cgroup sets and their cgroups' ids at the last look (`cgroupsets.ids`)
        self.cgroup_ids: tuple[str, dict[str, tuple[str, ...]], dict[str, int | None]] | None = None
        self.nft_session: libnft.Session | None = None  # failover batches without an nft process (`libnft`)

    # -- life cycle --------------------------------------------------------------------

    def run(self) -> int:
        """Serve until SIGTERM/SIGINT; the exit code. Start-up failures raise KernelError."""
        if self.options.metrics:
            host, port = self.options.metrics
            try:
                self.metrics = MetricsServer(host, port, self.current, self.log)
            except OSError as exc:
                raise EnvironmentProblem(f"cannot serve metrics on {host}:{port}: {exc.strerror or exc}") from exc
        self.catch_signals()  # a stop request during start-up waits for the loop, never cuts an apply short
        self.control.open()  # an apply asked for during start-up is answered once the loop runs
        self.nft_session = libnft.open_session()
        nftnetlink.keep_batch_socket()  # a reload's element batch is not followed by the kernel's wait on close
        if self.nft_session is None:
            self.log.info("libnftables not found: failovers run nft as a process (10-30 ms more each)")
        previous = state.load_daemon_record(self.netns, self.log.warning)
        interfaces = self.read_links()
        self.look(self.model)
        self.build_monitors(previous.uplinks if previous else {}, interfaces)
        self.install()
        self.log.info("markroute run: %d uplinks, %s", len(self.monitors), self.describe())
        self.watcher = LinkWatcher(self.reactor, self.on_link, self.on_change, self.on_lost, self.on_removed)
        self.relink()  # what changed between the first look and the watcher's first event
        self.refresh_egress(start=True)
        for name in self.follower.waiting:
            self.monitors[name].stop()  # nothing to probe until it is ready
        if self.metrics:
            self.metrics.start()
            self.log.info("metrics on http://%s:%d/metrics", *self.metrics.address)
        self.reactor.call_later(HOUSEKEEPING, self.housekeeping)
        self.save_record()
        try:
            self.reactor.run()
        finally:
            self.shutdown()
        return 0

    def internal_error(self, exc: Exception) -> None:
        """A step failed in a way nothing expected: say so (with the traceback) and go on."""
        self.log.error("internal error, continuing: %r", exc, exc_info=exc)

    def describe(self) -> str:
        parts = []
        for name, monitor in self.monitors.items():
            how = (f"{monitor.check.method} {', '.join(monitor.targets)} every {monitor.check.interval:g} s"
                   if monitor.probed else "link state only")
            parts.append(f"{name} {self.uplink_states()[name]} ({how})")
        return "; ".join(parts)

    def shutdown(self) -> None:
        self.stopping = True
        for monitor in self.monitors.values():
            monitor.stop()
        if self.watcher is not None:
            self.watcher.close()
        if self.metrics is not None:
            self.metrics.close()
        self.control.close()
        self.recorder.flush()
        if self.nft_session is not None:
            self.nft_session.close()
        self.domains.stop()
        if self.options.down_on_exit:
            report = down(self.netns)
            for line in report.changes:
                self.log.info("down: %s", line)
            for line in report.warnings + report.errors:
                self.log.warning("down: %s", line)
            self.log.info("stopped; markroute removed")
        else:
            self.save_record()
            self.log.info("stopped; the rules stay in place (markroute down removes them)")

    def catch_signals(self) -> None:
        reader, writer = socket.socketpair()
        reader.setblocking(False)
        writer.setblocking(False)
        self.wakeup = (reader, writer)
        signal.set_wakeup_fd(writer.fileno())
        for number in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(number, self.on_signal)
        self.reactor.watch(reader, selectors.EVENT_READ, self.handle_signals)

    def on_signal(self, number: int, frame: FrameType | None) -> None:
        self.signals.append(number)

    def handle_signals(self) -> None:
        assert self.wakeup is not None
        try:
            while self.wakeup[0].recv(64):
                pass
        except BlockingIOError:
            pass
        numbers, self.signals = self.signals, []
        for number in numbers:
            if number == signal.SIGHUP:
                self.reload()
            else:
                self.log.info("%s received: stopping", signal.Signals(number).name)
                self.reactor.stop()

    # -- uplinks -----------------------------------------------------------------------

    def read_links(self) -> dict[str, Link]:
        with Rpdb() as rpdb:
            return links(rpdb)

    def build_monitors(self, seen: dict[str, UplinkRecord], interfaces: dict[str, Link],
                       keep: dict[str, UplinkMonitor] | None = None) -> None:
        """A monitor per uplink: kept ones as they are, others from the record or fresh."""
        self.monitors = {}
        for name, uplink in self.model.uplinks.items():
            if keep and name in keep:
                keep[name].uplink = uplink
                self.monitors[name] = keep[name]
                continue
            check, targets = probe_targets(uplink, self.follower.next_hops(name))
            last = seen.get(name)
            health = UplinkHealth(
                name, check if targets else None,
                state=last.state if last and last.state != "waiting" else "unknown",  # waiting: read afresh
                since=last.since if last else None,
                transitions=last.transitions if last else 0,
            )
            monitor = UplinkMonitor(self.reactor, uplink, health, self.on_transition, self.on_news,
                                    self.follower.next_hops(name))
            self.monitors[name] = monitor
            link = interfaces.get(uplink.interface)
            self.link_usable[uplink.interface] = link.usable if link else None
            monitor.link(bool(link and link.usable))

    def refresh_egress(self, start: bool = False) -> None:
        """Point every monitor's probes at its interface as it is now (index, addresses)."""
        with Rpdb() as rpdb:
            interfaces = links(rpdb)
            for monitor in self.monitors.values():
                egress = self.egress(monitor.uplink, interfaces.get(monitor.uplink.interface), rpdb)
                if start:
                    monitor.start(egress)
                else:
                    monitor.rebind(egress)

    @staticmethod
    def egress(uplink: Uplink, link: Link | None, rpdb: Rpdb) -> Egress | None:
        index = rpdb.ifindex(uplink.interface)
        if link is None or index is None:
            return None
        sources: dict[int, str] = {}
        for version, address, _ in sorted(link.addresses, key=lambda a: ipaddress.ip_address(a[1]).is_link_local):
            sources.setdefault(version, address)
        return Egress(uplink.interface, index, uplink.mark, link.mac, sources)

    # -- health changes ----------------------------------------------------------------

    def on_transition(self, transition: Transition) -> None:
        if transition.uplink in self.follower.waiting and "waiting" not in (transition.old, transition.new):
            return  # probes and link of a waiting uplink: it is out of use already
        if self.declared is None:
            self.declared = (self.reactor.now(), time.thread_time())
        self.log_transition(transition)
        self.pending.append(transition)
        if self.act_timer is None:
            self.act_timer = self.reactor.call_at(self.reactor.now(), self.act)

    def on_news(self, news: Transition) -> None:
        """A known state changed: `on_change` runs once the rules reflect it (in `act`)."""
        if news.uplink in self.follower.waiting and "waiting" not in (news.old, news.new):
            return  # the link of a waiting uplink: it is out of use already
        self.news.append(news)
        if self.act_timer is None:
            self.act_timer = self.reactor.call_at(self.reactor.now(), self.act)

    def log_transition(self, transition: Transition) -> None:
        level = logging.INFO if transition.new == "up" else logging.WARNING
        reason = f" ({transition.reason})" if transition.reason else ""
        logs.event(self.log, level, f"uplink {transition.uplink}: {transition.old} -> {transition.new}{reason}",
                   event="state", uplink=transition.uplink, old=transition.old, new=transition.new,
                   reason=transition.reason)

    def uplink_states(self) -> dict[str, State]:
        waiting = self.follower.waiting
        return {name: "waiting" if name in waiting else monitor.health.state for name, monitor in self.monitors.items()}

    def act(self) -> None:
        """Make the rules follow the uplinks' states: one nft transaction, then the flows.

        Under the namespace's lock, like any writer; a busy lock (an apply running) is
        tried again shortly. Before it writes, it checks that what is installed is still
        what it left (`untouched`): if anyone else wrote meanwhile, the chains it would
        rewrite may be another config's, so the config's plan for the uplinks' states is
        applied instead, which reads the live table first.

        The rules event is logged once the flows moved, with the daemon's own reaction time:
        `reaction_ms` from the first transition of the turn to the flows deleted (`batch_ms` of
        it the nft transaction), `reaction_cpu_ms` the CPU time this thread spent meanwhile (the
        rest is waiting for a CPU on a busy machine). The records are written after that
        (`save_record`, and the table's at the next turn: `TableRecorder`), none with an fsync.
        """
        self.act_timer = None
        assert self.installed is not None
        transitions, self.pending = self.pending, []
        declared, self.declared = self.declared, None
        now = self.reactor.now()
        for transition in transitions:
            self.failback.note(transition, now)
        availability = self.availability(now)
        wanted = compile_plan(self.model, availability)
        self.unmoved = (self.unmoved | (availability.down - self.installed_availability.down)) & availability.down
        ending = sorted(failback.with_destination(self.model, availability, self.unmoved)
                        | failback.returning(self.model, self.installed_availability, availability))
        moved = f"; flows of {', '.join(ending)} moved" if ending else ""
        try:
            with state.locked(self.netns, "markroute run (failover)", wait=FAILOVER_LOCK_WAIT):
                rules = self.follow(wanted, availability, moved)
                if self.model.settings.ha is None:
                    move_flows((self.model.uplinks[name].mark for name in ending), self.model.settings.mark_mask)
                elif ending:  # an HA pair: only the master ends flows, or the deletions reach the peer
                    move_when_master(self.reactor, ending, {n: u.mark for n, u in self.model.uplinks.items()},
                                     self.model.settings.mark_mask, lambda name: self.uplink_states().get(name) == "down",
                                     self.netns, self.log)
            self.unmoved -= set(ending)
        except KernelError as exc:
            self.log.error("cannot act on the uplinks' states: %s; trying again in %g s", exc, RETRY)
            self.pending = transitions + self.pending
            self.declared = declared
            self.act_timer = self.reactor.call_later(RETRY, self.act)
            return
        if rules is not None:
            clock, cpu = declared or (None, None)
            logs.event(self.log, logging.INFO, rules.message, **rules.fields,
                       reaction_ms=None if clock is None else f"{(self.reactor.now() - clock) * 1000:.1f}",
                       reaction_cpu_ms=None if cpu is None else f"{(time.thread_time() - cpu) * 1000:.1f}")
        self.schedule_release(now)
        self.save_record()
        news, self.news = self.news, []
        for item in news:
            self.hooks.run(item)

    def availability(self, now: float) -> UplinkAvailability:
        """What the compiler may use: the uplinks' states, and the failback holds still running."""
        return replace(availability_of(self.uplink_states()), held=self.failback.held(self.model, now))

    def schedule_release(self, now: float) -> None:
        """Act again when the next failback hold ends (the group may then prefer its member again)."""
        if self.release_timer is not None:
            self.release_timer.cancel()
            self.release_timer = None
        wait = self.failback.next_release(self.model, now)
        if wait is not None:
            self.release_timer = self.reactor.call_later(wait + 0.01, self.released)

    def released(self) -> None:
        self.release_timer = None
        if self.act_timer is None:
            self.act_timer = self.reactor.call_at(self.reactor.now(), self.act)

    def follow(self, wanted: Plan, availability: UplinkAvailability, moved: str) -> RulesEvent | None:
        """Install WANTED (the plan for AVAILABILITY): chains rewritten in one transaction if nobody
        else wrote since we did, else through apply (`act`). Under the lock. What changed, for the
        log (None: nothing did, or it was logged already)."""
        assert self.installed is not None
        if not self.untouched():
            self.log.warning("rules: the installed ruleset was changed by another process since this daemon "
                             "last wrote it: applying the config for the uplinks' states%s", moved)
            self.install_plan(wanted, availability)
            return None
        down = ",".join(sorted(availability.down)) or "none"
        try:
            commands = chain_batch(self.installed, wanted)
        except ValueError:  # a reload is being applied: the new config's plan goes in whole
            self.install_plan(wanted, availability)
            return RulesEvent(f"rules: applied the new config for the uplinks' states{moved}",
                              {"event": "failover", "down": down, "moved": ",".join(sorted(self.unmoved)) or None})
        rules = None
        if commands:
            started = self.reactor.now()
            before = nftnetlink.generation()
            nft.run_batch(commands, self.nft_session)
            after = nftnetlink.generation()
            self.generation = after if after == before + 1 else None
            self.rule_changes += 1
            chains = changed_chains(commands)
            self.recorder.rewritten(wanted, chains, self.generation, self.nominal)
            rules = RulesEvent(f"rules: rewrote {', '.join(chains)} in one transaction{moved}",
                               {"event": "failover", "down": down, "chains": ",".join(chains),
                                "moved": ",".join(sorted(self.unmoved)) or None,
                                "batch_ms": f"{(self.reactor.now() - started) * 1000:.1f}"})
        self.installed, self.installed_availability = wanted, availability
        return rules

    def untouched(self) -> bool:
        """Whether the kernel and the records are as this daemon left them: the same state.json
        (nobody applied) and nf_tables' generation where its own last transaction left it (nobody
        committed anything since, in any table: then the live table need not be listed)."""
        return (state.written(self.netns) == self.state_seen and self.generation is not None
                and nftnetlink.generation() == self.generation)

    def install(self) -> tuple[list[str], list[str]]:
        """Apply the config's plan for the current uplink states, like `markroute apply`; its changes and warnings."""
        availability = self.availability(self.reactor.now())
        return self.install_plan(compile_plan(self.model, availability), availability)

    def install_plan(self, plan: Plan, availability: UplinkAvailability) -> tuple[list[str], list[str]]:
        """Apply PLAN, compiled for AVAILABILITY; the one compile of an install is the caller's.
        Returns the changes made and the warnings (as `markroute apply` would print them).

        The lock is held until the records say what this apply left (`note_state`), so no
        other apply can slip in between unnoticed."""
        with state.locked(self.netns, "markroute run"):
            self.recorder.flush()  # apply reads the record
            report = apply(plan, self.netns, following=True)
            for change in report.changes:
                self.log.info("apply: %s", change)
            for warning in report.warnings:
                self.log.debug("apply: %s", warning)
            self.installed, self.installed_availability = plan, availability
            self.note_nominal(plan, availability)
            self.recorder.stamp(self.nominal)
            self.recorder.adopt(plan, report.recorded)
            self.note_state(report.nft_generation)
        self.domains.update(self.model)
        synced = dnsmasq.sync(self.model)  # domain sets filled by dnsmasq: its nftset= lines
        for line in synced.changes:
            self.log.info("apply: %s", line)
        for line in synced.warnings:
            self.log.warning("%s", line)
        return report.changes + synced.changes, report.warnings + synced.warnings

    def note_nominal(self, plan: Plan, availability: UplinkAvailability) -> None:
        """`nominal` for the current model: PLAN's own digest when every uplink is up, else compiled once per model."""
        if self.nominal_model is self.model:
            return
        nominal = plan if availability == UplinkAvailability() else compile_plan(self.model)
        self.nominal, self.nominal_model = digest.plan_digest(nominal), self.model

    # -- following the system ----------------------------------------------------------

    def on_link(self, interface: str, usable: bool | None) -> None:
        """An uplink interface changed: usable (up with carrier), not usable, or gone (None)."""
        if interface not in self.link_usable or self.link_usable[interface] == usable:
            return
        self.link_usable[interface] = usable
        self.log.info("link %s %s", interface, "is up" if usable else "is gone" if usable is None else "is down")
        for monitor in self.monitors.values():
            if monitor.uplink.interface == interface:
                monitor.link(bool(usable))
        self.follower.forget()  # a link down and up again takes markroute's routes with it: always apply
        self.schedule_resync()

    def on_change(self) -> None:
        self.schedule_resync()

    def on_removed(self, removals: list[tuple[int, str]]) -> None:
        """Someone removed markroute's rules or routes: say who once, put them back now."""
        foreign = [(port, what) for port, what in removals if not churn.own(port)]
        senders = {port: churn.sender(port) for port, _ in foreign}
        for port, what in foreign:
            self.churn.note(senders[port], what)
        if foreign:
            self.follower.forget()  # the uplinks' readiness did not change, but the removed must go back
            self.schedule_resync()

    def on_lost(self) -> None:
        self.log.warning("netlink events were lost: reading the links again")
        self.follower.forget()
        self.relink()
        self.schedule_resync()

    def relink(self) -> None:
        """Compare every uplink interface with the kernel, as if each had sent an event."""
        interfaces = self.read_links()
        for interface in list(self.link_usable):
            link = interfaces.get(interface)
            self.on_link(interface, link.usable if link else None)

    def schedule_resync(self, delay: float = RESYNC_DELAY) -> None:
        if self.resync_timer is None:
            self.resync_timer = self.reactor.call_later(delay, self.resync)

    def resync(self) -> None:
        """Converge routes, rules and sysctls to the installed plan."""
        self.resync_timer = None
        if not self.stopping:
            self.converge()

    def converge(self) -> None:
        assert self.installed is not None
        try:
            if not self.follow_kernel():
                return  # nothing apply depends on changed (a DHCP renewal)
            self.log.debug("resync: the system changed; applying the installed plan")
            with state.locked(self.netns, "markroute run (resync)"):
                self.recorder.flush()  # apply reads the record
                report = apply(self.installed, self.netns, following=True)
                self.recorder.stamp(self.nominal)
                self.recorder.adopt(self.installed, report.recorded)
                self.note_state(report.nft_generation)
        except KernelError as exc:
            self.follower.forget()
            self.log.warning("resync failed: %s; trying again in %g s", exc, RETRY)
            self.schedule_resync(RETRY)
            return
        for change in report.changes:
            self.log.info("resync: %s", change)
        self.refresh_egress()

    def retire(self, names: list[str]) -> None:
        """Take uplinks a reload changes or removes out of service under the running config first:
        their chains lead elsewhere and their connections end before the new config points their
        table at a new next hop, which must not see traffic before it answers its first probes.
        A writer like `act`: under the lock, through `follow`."""
        carrying = [name for name in names if self.monitors[name].health.state not in ("down", "unknown")]
        if not carrying or self.installed is None:
            return
        states = {**self.uplink_states(), **{name: "down" for name in carrying}}
        availability = availability_of(states)  # type: ignore[arg-type]
        try:
            with state.locked(self.netns, "markroute run (reload)", wait=FAILOVER_LOCK_WAIT):
                rules = self.follow(compile_plan(self.model, availability), availability, "")
                move_flows((self.model.uplinks[name].mark for name in carrying), self.model.settings.mark_mask)
        except KernelError as exc:
            self.log.error("reload: cannot take %s out of service first: %s", ", ".join(carrying), exc)
            return
        if rules is not None:
            logs.event(self.log, logging.INFO, rules.message, **rules.fields)
        self.log.info("reload: %s out of service until probed again", ", ".join(carrying))

    def look(self, model: Model) -> None:
        """Read MODEL's uplinks' readiness without acting on it (start, reload); refuse an uplink needing a gateway."""
        plan = compile_plan(model)
        survey = current_survey(plan)
        refuse_missing_gateways(plan, survey)
        self.follower.observe(survey)

    def follow_kernel(self) -> bool:
        """Act on what changed in the uplinks' readiness (`follow`); False when nothing did.

        Uplinks that begin waiting stop being probed and leave their groups; uplinks
        ready again are probed again, through a fresh monitor aimed at the next hop when
        it changed (probes bound to the new index and address by `refresh_egress`);
        every change is one transition, so the chains move in one transaction and
        `on_change` runs once.
        """
        assert self.installed is not None
        before = dict(self.follower.waiting)
        news = self.follower.observe(current_survey(self.installed))
        if news is None:
            return False
        for name, reason in news.waiting.items():
            monitor = self.monitors[name]
            monitor.stop()
            old = "waiting" if name in before else monitor.health.state
            self.follow_transition(follow.waiting_transition(name, old, reason))
        for name in (*news.ready, *(n for n in news.moved if n not in news.ready)):
            monitor = self.monitors[name]
            old = "waiting" if name in news.ready else monitor.health.state
            usable = bool(self.link_usable.get(monitor.uplink.interface))
            self.monitors[name] = follow.resume(self.reactor, monitor, self.follower.next_hops(name),
                                                name in news.moved, usable, self.on_transition)
            self.follow_transition(follow.back_transition(self.monitors[name], old, self.follower,
                                                          news.moved.get(name)))
        return True

    def follow_transition(self, transition: Transition) -> None:
        """A change `follow` found: the rules follow it, and `on_change` hears it (unless it is no verdict yet)."""
        self.on_transition(transition)
        if transition.new != "unknown":
            self.on_news(transition)

    def on_request(self, request: Request) -> Answer:
        """`markroute apply` asked over the control socket: a reload when it names this daemon's config file."""
        mine = self.options.config
        if not _same_file(request.config, mine):
            return self.refused(f"markroute run (pid {os.getpid()}) keeps {mine} applied in this namespace and "
                                f"would apply it again over {request.config}: change {mine} and apply that, "
                                "or stop markroute run first")
        if request.force:
            return self.refused("markroute run does not take over others' routes, rules or table (--force): "
                                "stop it, apply --force, then start it again")
        return self.reload("markroute apply")

    def refused(self, why: str) -> Answer:
        self.log.warning("markroute apply refused: %s", why)
        return Answer("refused", os.getpid(), self.options.config, [why])

    def reload(self, reason: str = "SIGHUP") -> Answer:
        """Read the config file again and install it (`reinstall`); what happened, for whoever asked."""
        model, diagnostics = self.options.load()
        rendered = [diagnostic.render() for diagnostic in diagnostics]
        if model is None:
            for line in rendered:
                self.log.error("reload: %s", line)
            self.log.error("reload: the config is invalid; still running the previous one")
            return Answer("invalid", os.getpid(), self.options.config, rendered)
        try:
            self.look(model)
        except NeedsGateway as exc:
            self.log.error("reload: %s; still running the previous config", exc)
            return Answer("failed", os.getpid(), self.options.config,
                          [*rendered, f"{exc}; markroute run goes on with the previous config"])
        return self.reinstall(model, rendered, reason)

    def reinstall(self, model: Model, rendered: list[str], reason: str) -> Answer:
        """Switch to MODEL once its plan is installed: a plan the kernel refuses leaves the previous
        config, its plan and its monitors in force, so failover goes on as before (logged once).
        RENDERED: the config's warnings, passed on in the answer."""
        old_model, old_monitors, old_links = self.model, self.monitors, dict(self.link_usable)
        old_uplinks = {name: monitor.uplink for name, monitor in old_monitors.items()}
        keep = {
            name: monitor for name, monitor in old_monitors.items()
            if name in model.uplinks and _identity(model.uplinks[name]) == _identity(monitor.uplink)
        }
        self.retire([name for name in old_monitors if name not in keep])
        self.model = model
        self.build_monitors({}, self.read_links(), keep)
        usable_before = set(self.model.uplinks) - self.installed_availability.down
        try:
            changes, warnings = self.install()
        except KernelError as exc:
            for name, uplink in old_uplinks.items():
                old_monitors[name].uplink = uplink
            self.model, self.monitors, self.link_usable = old_model, old_monitors, old_links
            self.log.error("reload: %s; still running the previous config and its rules", exc)
            return Answer("failed", os.getpid(), self.options.config,
                          [*rendered, f"{exc}; markroute run goes on with the previous config and its rules"])
        unknown = sorted(usable_before & self.installed_availability.down)
        try:
            move_flows((self.model.uplinks[name].mark for name in unknown), self.model.settings.mark_mask)
        except KernelError as exc:
            self.log.error("reload: cannot end the connections of %s: %s", ", ".join(unknown), exc)
        for name, monitor in old_monitors.items():
            if name not in keep:
                monitor.stop()
        self.hooks.argv = model.settings.on_change
        self.refresh_egress(start=False)
        for monitor in self.monitors.values():
            if monitor.ticker is None and monitor.probed:
                monitor.start(monitor.egress)
        logs.event(self.log, logging.INFO, f"reloaded: {self.describe()}", event="reload", reason=reason)
        self.save_record()
        return Answer("applied" if changes else "unchanged", os.getpid(), self.options.config,
                      [*rendered, *(f"markroute: warning: {line}" for line in warnings)], self.notes(), changes)

    def notes(self) -> list[str]:
        """What an apply's answer says of the uplinks: the rules it installed follow their states, not the config alone."""
        waiting = self.follower.waiting
        lines = [f"waiting: {name} ({describe_reason(why)})" for name, why in waiting.items()]
        for name, health in self.uplink_states().items():
            if health in ("down", "unknown"):
                lines.append(f"{name}: {health} (probed by markroute run: out of service until it answers again)")
        return lines

    # -- records -----------------------------------------------------------------------

    def housekeeping(self) -> None:
        if self.stopping:
            return
        self.reactor.call_later(HOUSEKEEPING, self.housekeeping)
        self.hooks.reap()
        self.save_record()
        self.keep_cgroups()
        if self.recorder.idle and self.resync_timer is None and state.written(self.netns) != self.state_seen:
            self.log.warning("another markroute command changed what is applied: applying the running config "
                             "again for the uplinks' current states (change the config with `markroute apply` "
                             "or SIGHUP, which this daemon carries out)")
            self.reassert()

    def keep_cgroups(self) -> None:
        """Every second: the cgroup sets hold the configured cgroups that exist now (`kernel/cgroupsets.py`).

        A change is logged once per cgroup that appeared or went; our own transaction leaves
        `untouched` true if nobody else committed before it."""
        installed = self.installed
        sets = cgroupsets.configured(installed.nft) if installed is not None else {}
        if installed is None or not sets:
            return
        ours = self.generation is not None and nftnetlink.generation() == self.generation
        now = (installed.table_name, sets, cgroupsets.ids(sets))
        if ours and now == self.cgroup_ids:
            return  # no cgroup came, went or was re-created, and nobody wrote since our last look
        try:
            with state.locked(self.netns, "markroute run"):
                present = cgroupsets.keep(installed.table_name, sets)
        except KernelError as exc:
            self.log.error("cannot update the cgroup sets: %s", exc)
            return
        if ours:
            self.generation = nftnetlink.generation()
        self.cgroup_ids = now
        before = self.cgroups_present
        self.cgroups_present = present
        configured = sorted({path for paths in sets.values() for path in paths})
        for path in configured:
            if before is None and path not in present:
                self.log.warning("cgroup %s does not exist (yet): its policies match nothing until it does", path)
            elif before is not None and (path in present) != (path in before):
                self.log.info("cgroup %s %s", path, "appeared: its policies match it" if path in present
                              else "is gone: its policies match nothing until it is back")

    def reassert(self) -> None:
        try:
            self.install()
        except KernelError as exc:
            self.log.error("cannot apply: %s", exc)
            self.note_state()  # tried: do not retry every second; the next change of the file will
            return
        self.refresh_egress()

    def note_state(self, generation: int | None = None) -> None:
        """Remember which state.json our own apply left (another one means someone else applied)
        and nf_tables' generation after it (None: unknown, the next failover goes through apply)."""
        self.state_seen = state.written(self.netns)
        self.generation = generation

    def save_record(self) -> None:
        current = DaemonRecord(
            pid=os.getpid(),
            started=self.started,
            rule_changes=self.rule_changes,
            uplinks={name: follow.shown(m.health.snapshot(), self.follower.waiting.get(name)).record(
                m.probed, m.bytes_per_day) for name, m in self.monitors.items()},
        )
        if self.installed is not None:
            self.exposed = Exposed(current, self.installed, self.follower.survey.uplinks if self.follower.survey else {})
        if current == self.saved:
            return
        try:
            state.save_daemon_record(self.netns, current)
            self.saved = current
        except KernelError as exc:
            self.log.error("%s", exc)

    def current(self) -> Exposed:
        """For the metrics thread: the last snapshot (replaced whole, never changed in place)."""
        assert self.exposed is not None
        return self.exposed
