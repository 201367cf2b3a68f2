"""The intent an admin wrote, validated and resolved: uplinks, groups, policies.

These are plain frozen dataclasses with no reference to YAML or to the kernel: the
compiler turns them into a `Plan`, and tests can build them directly. Positions (`where`)
are kept so that later analyses (shadowed policies, unreachable uplinks) can point at
the line that needs changing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import Literal

from markroute.diagnostics import Where
from markroute.values import AddressList, Interval

SPECIAL_TARGETS = ("main", "unreachable", "blackhole")
RpFilter = Literal["loose", "strict", "off"]
LastResort = Literal["main", "unreachable", "blackhole"]


@dataclass(frozen=True)
class Addresses:
    """A `from`/`to` value; `set_name` is kept when it names exactly one `sets:` entry."""

    addresses: AddressList
    set_name: str | None = None
    dynamic: bool = False  # a `sets:` entry others fill at run time: its elements are unknown here


@dataclass(frozen=True)
class Match:
    """Conditions that all must hold; None means 'any'. `negated` must not hold."""

    src: Addresses | None = None
    dst: Addresses | None = None
    protocols: tuple[int, ...] | None = None
    sports: tuple[Interval, ...] | None = None
    dports: tuple[Interval, ...] | None = None
    iifs: tuple[str, ...] | None = None
    macs: tuple[str, ...] | None = None
    dscps: tuple[int, ...] | None = None
    uids: tuple[int, ...] | None = None  # owner of the local socket (`match/owner.py`)
    gids: tuple[int, ...] | None = None
    cgroups: tuple[str, ...] | None = None  # the local socket's cgroup v2 paths (`match/cgroup.py`)
    local: bool | None = None
    negated: Match | None = None

    @cached_property
    def is_empty(self) -> bool:
        return self == Match()

    @cached_property
    def versions(self) -> frozenset[int]:
        """IP versions this match can apply to, judged by its addresses.

        Both are worked out once per match (issue 15): validation, the shadowed-policy
        check and the compiler ask them of each of 10,000 policies, several times.
        """
        versions = frozenset({4, 6})
        for addresses in (self.src, self.dst):
            if addresses is not None and not addresses.dynamic:
                versions &= addresses.addresses.versions
        if self.protocols is not None:
            if all(p == 1 for p in self.protocols):
                versions &= {4}
            elif all(p == 58 for p in self.protocols):
                versions &= {6}
        return versions


@dataclass(frozen=True)
class DynamicSet:
    """A `sets:` entry whose elements others add at run time (a resolver, a script, `markroute set add`).

    markroute declares it (one kernel set per IP family, `NAME_v4`/`NAME_v6`) and never
    touches its elements; `timeout` (seconds) is the default lifetime of an element added
    without one, None for elements that stay until removed. `domains`: the names whose
    resolved addresses fill it (`markroute.domains`), empty for a plain dynamic set.
    """

    name: str
    where: Where
    timeout: int | None = None
    domains: tuple[str, ...] = ()


@dataclass(frozen=True)
class Nat:
    kind: Literal["none", "masquerade", "snat"] = "none"
    address: str | None = None


@dataclass(frozen=True)
class Inbound:
    policy: Literal["accept", "drop"] = "accept"
    allow: tuple[Match, ...] = ()
    log: PacketLog | None = None  # log each new connection the final drop refuses


@dataclass(frozen=True)
class PacketLog:
    """`log:` on a policy or an inbound drop: a packet log line per new connection it decides.

    Lines go to nfnetlink_log (`markroute log` reads them), rate-limited to `rate` per
    second (0: every one); `prefix` is added in front of markroute's own description.
    """

    prefix: str | None = None
    rate: int = 10


@dataclass(frozen=True)
class HealthCheck:
    """How the daemon probes an uplink; the defaults fail over in well under a second.

    A round of probes starts every `interval`; a round fails when no target answers
    within `timeout`. A dead uplink is declared down `(down - 1) * interval + timeout`
    after the first round that could not be answered, which comes at most one interval
    after the failure: 0.5 to 0.6 s with these defaults, then ~20 ms to rewrite the
    rules (measured flow gaps: BENCHMARKS.md). 0.2/0.2/3 gave 0.6 to 0.8 s, too close to
    one second on a busy machine. A loss burst shorter than `down * interval` (0.4 s)
    does not fail over, and a timeout of 0.2 s still fits the RTT of any terrestrial
    path to a gateway or a nearby target. `up`: 0.5 s of answers before traffic returns.
    Ten small probes a second per target cost about 1 kB/s.
    """

    targets: tuple[str, ...] = ()
    method: str = "icmp"  # a name in markroute.probes.METHODS (config checks it)
    interval: float = 0.1
    timeout: float = 0.2
    down: int = 4
    up: int = 5
    max_loss: float | None = None
    max_rtt: float | None = None
    min_up: int = 1  # targets that must answer for a round to succeed (k of n)
    expect: tuple[str, ...] = ()  # dns: addresses one of which the answer must hold; http: status codes


@dataclass(frozen=True)
class Uplink:
    name: str
    interface: str
    where: Where
    mark: int
    table: int
    gateway: str | None = None
    gateway6: str | None = None
    nat: Nat = Nat()
    ingress: Match | None = None
    inbound: Inbound | None = None
    check: HealthCheck | None = None

    @property
    def versions(self) -> frozenset[int]:
        """IP versions the uplink carries: those with a gateway, or both on a point-to-point link."""
        if self.gateway is None and self.gateway6 is None:
            return frozenset({4, 6})
        return frozenset(v for v, gw in ((4, self.gateway), (6, self.gateway6)) if gw)


@dataclass(frozen=True)
class Failback:
    """How a failover group returns to a recovered member.

    `hold`: seconds a recovered member must stay healthy before it is preferred again
    (None: the uplink state machine's own hysteresis and flap damping only). `flows`:
    `keep` leaves connections on the member they failed over to until they end; `move`
    ends them (by mark) once the preferred member carries traffic again.
    """

    hold: float | None = None
    flows: Literal["keep", "move"] = "keep"


@dataclass(frozen=True)
class Group:
    name: str
    kind: Literal["balance", "failover"]
    members: tuple[tuple[str, int], ...]
    where: Where
    last_resort: LastResort | None = None  # None: settings.last_resort
    failback: Failback = Failback()
    inline: bool = False  # written in a policy's `via: {failover: [...]}`, named after the policy


@dataclass(frozen=True)
class Policy:
    name: str
    match: Match
    via: str
    where: Where
    log: PacketLog | None = None


@dataclass(frozen=True)
class HaSettings:
    """`settings.ha`: this router is one of a keepalived + conntrackd pair (README "HA pair").

    It turns on markroute's hold (new forwarded connections wait while the router is not
    master), conntrack's liberal TCP window tracking (a connection handed back by the peer
    keeps flowing), and makes `markroute run` leave a dead uplink's connections alone
    unless this router is master. `conntrackd`: the daemon's config file, for the
    hand-over steps of `markroute ha` and the sync health `status` shows.
    """

    conntrackd: str | None = None


@dataclass(frozen=True)
class Settings:
    mark_mask: int = 0xFF00
    rule_priority: int = 10000
    table_base: int = 100
    rp_filter: RpFilter = "loose"
    last_resort: LastResort = "main"
    reply_via_ingress: bool = True
    forwarding: bool | None = None
    on_change: tuple[str, ...] = ()  # argv `markroute run` executes on each uplink state change
    ha: HaSettings | None = None
    exec: bool = False  # `markroute exec` may pin commands to an uplink or group (`compile/execs.py`)
    dns: Literal["markroute", "dnsmasq", "none"] = "markroute"  # who fills domain sets (`config/dynamicsets.py`)
    dnsmasq_conf: str | None = None
    dns_server: str | None = None  # whom `markroute run` asks for domain sets (dns: markroute)
    dnsmasq_restart: tuple[str, ...] = ()
    #: Record in each connection which rule decided it (`ct label set`) and keep its bytes and age
    #: (conntrack accounting and timestamps) for `flows` and `explain`. Off, new connections get no
    #: conntrack extension and those two sysctls stay as found (`compile/chains.py` docstring).
    connection_records: bool = True


@dataclass(frozen=True)
class Model:
    uplinks: dict[str, Uplink] = field(default_factory=dict)
    groups: dict[str, Group] = field(default_factory=dict)
    policies: tuple[Policy, ...] = ()
    sets: dict[str, AddressList] = field(default_factory=dict)
    settings: Settings = Settings()
    dynamic_sets: dict[str, DynamicSet] = field(default_factory=dict)

    def target_versions(self, target: str) -> frozenset[int]:
        """IP versions a `via` target can carry (a group: any member's)."""
        if target in self.uplinks:
            return self.uplinks[target].versions
        if target in self.groups:
            versions: frozenset[int] = frozenset()
            for member, _ in self.groups[target].members:
                versions |= self.target_versions(member)
            return versions
        return frozenset({4, 6})

    def last_resort_of(self, group: str) -> LastResort:
        """Where GROUP's traffic goes when no member is usable: its own `last_resort`, else the global one."""
        return self.groups[group].last_resort or self.settings.last_resort

    def uplinks_of(self, target: str) -> list[str]:
        """Every uplink a target can send traffic through, in declaration order."""
        if target in self.uplinks:
            return [target]
        found: list[str] = []
        group = self.groups.get(target)
        for member, _ in group.members if group else ():
            found += [u for u in self.uplinks_of(member) if u not in found]
        return found
