"""The `Plan`: everything `apply` installs, as data.

One representation serves every consumer: `plan` prints it, the kernel layer installs
and compares it, the simulator interprets it. The nftables part is kept in the list form
libnftables prints for `nft -j list` (table, set, chain, rule objects), and ip rules and
routes render to the objects `ip -j rule` / `ip -j route` print, so a live dump and a
compiled plan have the same shape.

Three parts depend on the running system and are resolved at apply time from the
interfaces' state (`resolve`): main's connected routes are copied into every uplink
table, so marked replies to LAN hosts stay on the LAN, each uplink address gets a
`from ADDR` rule, so unmarked traffic from it (sockets bound to it) leaves through it
(a connection's mark is looked at first), and a `gateway: auto` uplink's default route
goes via the next hop the kernel knows for its interface now. An uplink whose bound
sockets are pinned (`compile.bound`) has a second table, its bound table, that repeats
its IPv4 routes with the realm on the default route; its IPv4 `from` rules look it up.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from markroute.plan.nftjson import plain
from markroute.values import AUTO_GATEWAY

RULE_PROTOCOL = 77  # tags every ip rule and route markroute installs, so it only ever removes its own
# markroute's band of ip rules, from settings.rule_priority on: uplink fwmark rules, then
# the unreachable/blackhole marks, then `from ADDR` rules (after every fwmark rule: a mark decides first)
RESERVED_RULE_OFFSET = 1
SOURCE_RULE_OFFSET = 2
BAND_WIDTH = 3
TABLE_NAME = "markroute"
#: The HA hold's sets by IP version (`compile.ha` writes them, the kernel layer fills and reads
#: them); holding means each holds the whole address space.
HOLD_SETS = {4: "ha_hold", 6: "ha_hold6"}
#: Every address of a version, as the one interval the held sets contain.
EVERYTHING = {4: (0, 2**32 - 1), 6: (0, 2**128 - 1)}
FAMILY_NAMES = {4: "inet", 6: "inet6"}


@dataclass(frozen=True)
class IpRule:
    version: int
    priority: int
    action: Literal["lookup", "unreachable", "blackhole"] = "lookup"
    table: int | None = None
    fwmark: int | None = None
    fwmask: int | None = None
    src: str | None = None

    def to_json(self) -> dict[str, Any]:
        """The object `ip -j rule` prints for this rule."""
        data: dict[str, Any] = {"priority": self.priority}
        if self.src is None:
            data["src"] = "all"
        else:
            network = ipaddress.ip_network(self.src)
            data["src"] = str(network.network_address)
            if network.prefixlen != network.max_prefixlen:
                data["srclen"] = network.prefixlen
        if self.fwmark is not None:
            data["fwmark"] = hex(self.fwmark)
            if self.fwmask is not None and self.fwmask != 0xFFFFFFFF:
                data["fwmask"] = hex(self.fwmask)
        if self.action == "lookup":
            data["table"] = str(self.table)
        else:
            data["action"] = self.action
        data["protocol"] = str(RULE_PROTOCOL)
        return data

    def text(self) -> str:
        parts = [f"{self.priority}:", "from", self.src or "all"]
        if self.fwmark is not None:
            parts += ["fwmark", f"{self.fwmark:#x}/{self.fwmask:#x}" if self.fwmask is not None else f"{self.fwmark:#x}"]
        parts += ["lookup", str(self.table)] if self.action == "lookup" else [self.action]
        return " ".join(parts)


@dataclass(frozen=True)
class Route:
    version: int
    table: int
    dst: str
    dev: str
    gateway: str | None = None
    scope: Literal["universe", "link"] = "universe"
    realm: int | None = None  # IPv4 only: what `meta rtclassid` reads of a packet routed by it (`compile.bound`)

    def to_json(self) -> dict[str, Any]:
        """The object `ip -j route show table all` prints for this route."""
        data: dict[str, Any] = {"dst": self.dst}
        if self.gateway:
            data["gateway"] = self.gateway
        data["dev"] = self.dev
        data["table"] = str(self.table)
        data["protocol"] = str(RULE_PROTOCOL)
        if self.scope == "link":
            data["scope"] = "link"
        if self.realm is not None:
            data["flow"] = {"to": str(self.realm)}
        data["flags"] = []
        return data

    def text(self) -> str:
        via = f" via {self.gateway}" if self.gateway else ""
        scope = " scope link" if self.scope == "link" else ""
        realm = f" realm {self.realm}" if self.realm is not None else ""
        return f"{self.dst}{via} dev {self.dev} table {self.table}{scope}{realm}"


@dataclass(frozen=True)
class Sysctl:
    """A sysctl as its path under /proc/sys, which keeps interface names with dots intact."""

    path: str
    value: str

    @property
    def name(self) -> str:
        return ".".join(part.replace(".", "/") for part in self.path.split("/"))


@dataclass(frozen=True)
class UplinkPlan:
    """What the kernel layer and daemon need to know about an uplink beyond the rules."""

    name: str
    interface: str
    mark: int
    table: int
    versions: tuple[int, ...]
    gateway: str | None
    gateway6: str | None
    source_rules: bool
    #: where IPv4 sockets bound to the uplink's address are routed (`compile.bound`): the uplink's
    #: IPv4 routes again, the default one with the realm. None: not pinned.
    bound_table: int | None = None

    @property
    def tables(self) -> tuple[int, ...]:
        """Every routing table markroute fills for this uplink."""
        return (self.table,) if self.bound_table is None else (self.table, self.bound_table)

    def source_table(self, version: int) -> int:
        """The table a `from ADDRESS` rule of this uplink looks up."""
        return self.bound_table if version == 4 and self.bound_table is not None else self.table

    def copies(self, route: Route) -> list[Route]:
        """ROUTE, which belongs in the uplink's table, as installed: also in the bound table
        (IPv4), where the default route carries the realm that `meta rtclassid` reads."""
        if self.bound_table is None or route.version != 4:
            return [route]
        realm = table_realm(self.table) if route.dst == "default" else None
        return [route, replace(route, table=self.bound_table, realm=realm)]


@dataclass(frozen=True)
class GroupMember:
    """A member (uplink or group) and its configured weight (1 in a failover list)."""

    name: str
    weight: int


@dataclass(frozen=True)
class GroupPlan:
    """A group as configured: `status` shows its members beside what the table reaches now."""

    name: str
    kind: Literal["balance", "failover"]
    members: tuple[GroupMember, ...]


@dataclass(frozen=True)
class Plan:
    mask: int
    rule_priority: int
    nft: tuple[dict[str, Any], ...]
    rules: tuple[IpRule, ...]
    routes: tuple[Route, ...]
    sysctls: tuple[Sysctl, ...]
    uplinks: tuple[UplinkPlan, ...]
    policies: tuple[str, ...]
    groups: tuple[GroupPlan, ...] = ()
    table_name: str = TABLE_NAME
    warnings: tuple[str, ...] = field(default=(), compare=False)
    #: Local policies may re-route the router's unbound traffic and bound sockets are pinned
    #: by realm (`compile.bound`): then main's default source gets no `from` rule (`resolve`).
    pin_bound: bool = False
    #: `settings.connection_records`: the rules record their decisions in the labels (the nft part
    #: and the sysctls show it; kept here for the state record, which `flows` and `explain` read).
    connection_records: bool = True

    def nft_document(self) -> dict[str, Any]:
        """The ruleset in `nft -j list` form; set elements stay `AddressElements` (`json_default` writes them)."""
        return {"nftables": [dict(obj) for obj in self.nft]}

    def to_json(self) -> dict[str, Any]:
        """The whole plan as plain JSON data, set elements written out."""
        return {
            "mark_mask": hex(self.mask),
            "nftables": [plain(obj) for obj in self.nft],
            "rules": [rule.to_json() for rule in self.rules],
            "routes": [route.to_json() for route in self.routes],
            "sysctls": {s.name: s.value for s in self.sysctls},
            "pin_bound_sockets": self.pin_bound,
            "uplinks": [
                {
                    "name": u.name,
                    "interface": u.interface,
                    "mark": hex(u.mark),
                    "table": u.table,
                    "families": [FAMILY_NAMES[v] for v in u.versions],
                    "gateway": u.gateway,
                    "gateway6": u.gateway6,
                    "source_rules": u.source_rules,
                    "bound_table": u.bound_table,
                    "connected_routes": "copied from main at apply",
                }
                for u in self.uplinks
            ],
            "groups": [{"name": g.name, "kind": g.kind, "members": {m.name: m.weight for m in g.members}} for g in self.groups],
        }


@dataclass(frozen=True)
class LinkState:
    """What `resolve` needs from the running system: addresses, main's connected routes, learned next hops.

    `gateways` holds, per interface and IP version, the next hop of a `gateway: auto`
    uplink as learned from the kernel (`kernel.gateways`); None there means on-link
    (a point-to-point link without a peer address). A version missing has no known
    next hop yet, and its uplink table gets no default route.
    """

    addresses: dict[str, tuple[tuple[int, str], ...]]
    connected: tuple[Route, ...]
    #: (IP version, interface) of main's default routes: the source an unbound socket gets is
    #: that interface's address, so no `from ADDRESS` rule pins it (`compile.bound`).
    main_defaults: frozenset[tuple[int, str]] = frozenset()
    #: learned next hops per interface and IP version (`gateway: auto`; None: on-link)
    gateways: dict[str, dict[int, str | None]] = field(default_factory=dict)


def owned_tables(uplinks: Iterable[UplinkPlan]) -> set[int]:
    """Every routing table markroute fills for UPLINKS: theirs and their bound tables."""
    return {table for uplink in uplinks for table in uplink.tables}


def resolve(plan: Plan, links: LinkState) -> tuple[tuple[IpRule, ...], tuple[Route, ...]]:
    """The complete rules and routes for this system: static plan plus the live-derived parts.

    When the plan pins bound sockets (`pin_bound`), no `from ADDRESS` rule is written for an
    address of the interface main's default route leaves by: that is the source an unbound
    socket gets, and such a rule would make its connections look bound
    (`markroute.compile.bound`). Without local policies nothing re-routes unbound traffic,
    and every address keeps its rule (a multihomed host's bound sockets use their interface).
    """
    unbound = {(v, a) for name, found in links.addresses.items() for v, a in found
               if plan.pin_bound and (v, name) in links.main_defaults}
    rules = [r for r in plan.rules if not (r.priority == plan.rule_priority + SOURCE_RULE_OFFSET
                                          and (r.version, r.src) in unbound)]
    routes = list(plan.routes)
    for uplink in plan.uplinks:
        routes += learned_routes(uplink, links)
        if uplink.source_rules:
            for version, address in links.addresses.get(uplink.interface, ()):
                if (version, address) in unbound:
                    continue
                if version in uplink.versions and not ipaddress.ip_address(address).is_link_local:
                    rules.append(IpRule(version, plan.rule_priority + SOURCE_RULE_OFFSET,
                                        table=uplink.source_table(version), src=address))
        for route in links.connected:
            if route.version in uplink.versions:
                routes += uplink.copies(Route(route.version, uplink.table, route.dst, route.dev, None, "link"))
    return ordered_rules(rules), ordered_routes(routes)


REALM_MAX = 0xFFFF  # route realms are 16 bits; an uplink pinned to a larger table gets none


def table_realm(table: int) -> int | None:
    """The realm an uplink's IPv4 default route in its bound table carries (`compile.bound`): its table id, if it fits."""
    return table if table <= REALM_MAX else None


def learned_routes(uplink: UplinkPlan, links: LinkState) -> list[Route]:
    """The default routes of a `gateway: auto` uplink, via the next hops known now (and their bound copies)."""
    learned = links.gateways.get(uplink.interface, {})
    return [
        copy
        for version, gateway in ((4, uplink.gateway), (6, uplink.gateway6))
        if gateway == AUTO_GATEWAY and version in uplink.versions and version in learned
        for copy in uplink.copies(Route(version, uplink.table, "default", uplink.interface, learned[version]))
    ]


def ordered_rules(rules: list[IpRule]) -> tuple[IpRule, ...]:
    """One canonical order, so plans and comparisons with the kernel are deterministic."""
    return tuple(sorted(set(rules), key=_rule_order))


def ordered_routes(routes: list[Route]) -> tuple[Route, ...]:
    return tuple(sorted(set(routes), key=_route_order))


def _rule_order(rule: IpRule) -> tuple[Any, ...]:
    return (rule.priority, rule.version, rule.src or "", rule.fwmark or 0, rule.table or 0, rule.action)


def _route_order(route: Route) -> tuple[Any, ...]:
    return (route.table, route.version, route.dst != "default", route.dst, route.dev)
