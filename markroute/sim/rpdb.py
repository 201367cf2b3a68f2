"""The routing policy database and routing tables, interpreted from `ip -j` shaped objects.

It reproduces the kernel's `fib_rules_lookup` walk: rules in priority order, each
matched on fwmark/mask, from, to, iif, oif, ipproto, ports, tos and uid, inverted by
`not`; `goto`, `nop`, the `unreachable`/`blackhole`/`prohibit` actions, a table lookup
that falls through on no route or a `throw` route, and `suppress_prefixlength` that
rejects a found route and goes on. Tables answer by longest prefix, then metric.

Some tables may be only partly known (offline, nobody knows main's static routes):
a lookup that would need the unknown part raises `Indeterminate` rather than guess.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Any, Callable, NamedTuple

from markroute.sim.datatypes import L4_PROTOCOLS
from markroute.sim.packet import Indeterminate, address_text

TABLE_NAMES = {"255": "local", "254": "main", "253": "default"}
ERROR_ROUTES = {"unreachable", "blackhole", "prohibit"}
DELIVERED = {"local", "broadcast", "multicast", "anycast"}
BITS = {4: 32, 6: 128}
Choose = Callable[[tuple[int, ...], str], int]
Record = list[dict[str, Any]] | None


def table_key(value: Any) -> str:
    """One spelling per table: the kernel's names for 253-255, the number for the rest."""
    text = str(value)
    return TABLE_NAMES.get(text, text)


def family_of(obj: dict[str, Any]) -> int:
    """IP version of an `ip -j` rule or route: its "family" key, else the addresses in it."""
    family = obj.get("family")
    if family in ("inet", 2, "ipv4", 4):
        return 4
    if family in ("inet6", 10, "ipv6", 6):
        return 6
    for key in ("dst", "src", "gateway", "prefsrc", "from"):
        value = obj.get(key)
        if isinstance(value, str) and value not in ("all", "default"):
            return 6 if ":" in value else 4
    for hop in obj.get("nexthops", ()):
        if hop.get("gateway"):
            return 6 if ":" in hop["gateway"] else 4
    raise ValueError(f"cannot tell whether {obj} is IPv4 or IPv6: give it a \"family\" key")


def _prefix(version: int, address: str, length: Any) -> tuple[int, int]:
    if address in ("all", "default"):
        return 0, 0
    if "/" in address:
        network = ipaddress.ip_network(address, strict=False)
        return int(network.network_address), network.prefixlen
    bits = BITS[version]
    plen = int(length) if length is not None else bits
    network = ipaddress.ip_network(f"{address}/{plen}", strict=False)
    return int(network.network_address), plen


def _mask(version: int, plen: int) -> int:
    bits = BITS[version]
    return ((1 << bits) - 1) ^ ((1 << (bits - plen)) - 1)


def _number(value: Any) -> int:
    return value if isinstance(value, int) else int(str(value), 0)


def _port_range(obj: dict[str, Any], name: str) -> tuple[int, int] | None:
    if f"{name}_start" in obj:
        return int(obj[f"{name}_start"]), int(obj.get(f"{name}_end", obj[f"{name}_start"]))
    if name in obj:
        text = str(obj[name])
        first, _, last = text.partition("-")
        return int(first), int(last or first)
    return None


@dataclass(frozen=True)
class IpRuleSpec:
    """One `ip rule`, parsed once into integers."""

    version: int
    priority: int
    action: str
    invert: bool = False
    src: tuple[int, int] = (0, 0)
    dst: tuple[int, int] = (0, 0)
    iif: str | None = None
    oif: str | None = None
    detached: bool = False
    fwmark: int = 0
    fwmask: int = 0
    tos: int = 0
    ipproto: int = 0
    sport: tuple[int, int] | None = None
    dport: tuple[int, int] | None = None
    uid: tuple[int, int] | None = None
    unsupported: str | None = None
    table: str | None = None
    goto: int | None = None
    suppress_prefixlen: int | None = None
    text: str = ""
    src_mask: int = 0
    dst_mask: int = 0
    simple: bool = False  # only fwmark and from: checked inline, the common case

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> IpRuleSpec:
        version = family_of(obj)
        fields: dict[str, Any] = {"version": version, "priority": int(obj.get("priority", 0))}
        fields["invert"] = "not" in obj
        if obj.get("src", "all") != "all":
            fields["src"] = _prefix(version, obj["src"], obj.get("srclen"))
        if obj.get("dst", "all") != "all":
            fields["dst"] = _prefix(version, obj["dst"], obj.get("dstlen"))
        fields["iif"] = obj.get("iif")
        fields["oif"] = obj.get("oif")
        fields["detached"] = "iif_detached" in obj or "oif_detached" in obj
        if "fwmark" in obj:
            fields["fwmark"] = _number(obj["fwmark"])
            fields["fwmask"] = _number(obj.get("fwmask", 0xFFFFFFFF))
        if "tos" in obj or "dsfield" in obj:
            fields["tos"] = _number(obj.get("tos", obj.get("dsfield")))
        if "ipproto" in obj:
            proto = obj["ipproto"]
            if isinstance(proto, int):
                fields["ipproto"] = proto
            else:
                fields["ipproto"] = L4_PROTOCOLS.get(str(proto)) or int(str(proto).removeprefix("ipproto-"))
        fields["sport"] = _port_range(obj, "sport")
        fields["dport"] = _port_range(obj, "dport")
        if "uid_start" in obj:
            fields["uid"] = (int(obj["uid_start"]), int(obj.get("uid_end", obj["uid_start"])))
        for key in ("l3mdev", "tun_id", "suppress_ifgroup", "realms", "nat"):
            if key in obj:
                fields["unsupported"] = key
        if "goto" in obj:
            fields["action"] = "goto"
            fields["goto"] = int(obj["goto"])
        elif obj.get("action") in ("unreachable", "blackhole", "prohibit", "nop"):
            fields["action"] = obj["action"]
        elif "table" in obj or "lookup" in obj:
            fields["action"] = "lookup"
            fields["table"] = table_key(obj.get("table", obj.get("lookup")))
        else:
            fields["action"] = str(obj.get("action", "unknown"))
        if "suppress_prefixlen" in obj:
            fields["suppress_prefixlen"] = int(obj["suppress_prefixlen"])
        spec = cls(**fields)
        simple = not (spec.iif or spec.oif or spec.uid or spec.unsupported or spec.tos or spec.ipproto
                      or spec.sport or spec.dport or spec.dst[1])
        return cls(**{**fields, "text": spec.describe(), "src_mask": _mask(version, spec.src[1]),
                      "dst_mask": _mask(version, spec.dst[1]), "simple": simple})

    def describe(self) -> str:
        """The rule as `ip rule` shows it."""
        parts = [f"{self.priority}:"]
        if self.invert:
            parts.append("not")
        parts += ["from", self._net(self.src, "all")]
        if self.dst[1]:
            parts += ["to", self._net(self.dst, "all")]
        if self.fwmark or self.fwmask:
            parts += ["fwmark", hex(self.fwmark) + ("" if self.fwmask == 0xFFFFFFFF else f"/{self.fwmask:#x}")]
        if self.tos:
            parts += ["tos", hex(self.tos)]
        if self.iif:
            parts += ["iif", self.iif]
        if self.oif:
            parts += ["oif", self.oif]
        if self.ipproto:
            parts += ["ipproto", str(self.ipproto)]
        for name, ports in (("sport", self.sport), ("dport", self.dport)):
            if ports:
                parts += [name, str(ports[0]) if ports[0] == ports[1] else f"{ports[0]}-{ports[1]}"]
        if self.uid:
            parts += ["uidrange", f"{self.uid[0]}-{self.uid[1]}"]
        if self.unsupported:
            parts.append(self.unsupported)
        if self.action == "lookup":
            parts += ["lookup", str(self.table)]
            if self.suppress_prefixlen is not None:
                parts += ["suppress_prefixlength", str(self.suppress_prefixlen)]
        elif self.action == "goto":
            parts += ["goto", str(self.goto)]
        else:
            parts.append(self.action)
        return " ".join(parts)

    def _net(self, net: tuple[int, int], empty: str) -> str:
        value, plen = net
        if not plen:
            return empty
        text = address_text(self.version, value)
        return text if plen == BITS[self.version] else f"{text}/{plen}"


@dataclass(frozen=True)
class Hop:
    dev: str | None
    gateway: int | None
    weight: int = 1


@dataclass(frozen=True)
class RouteSpec:
    """One route of one table, parsed once."""

    version: int
    table: str
    kind: str
    dst: int
    plen: int
    hops: tuple[Hop, ...]
    metric: int = 0
    tos: int = 0
    prefsrc: int | None = None
    dead: bool = False
    text: str = ""
    realm: int = 0  # the route's destination realm (`ip route ... realm N`, JSON "flow": {"to": N})

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> RouteSpec:
        version = family_of(obj)
        dst, plen = _prefix(version, str(obj.get("dst", "default")), None)
        hops: list[Hop] = []
        dead = "dead" in obj.get("flags", ())
        for hop in obj.get("nexthops", ()):
            gateway = int(ipaddress.ip_address(hop["gateway"])) if hop.get("gateway") else None
            if "dead" not in hop.get("flags", ()):
                hops.append(Hop(hop.get("dev"), gateway, int(hop.get("weight", 1))))
        if not obj.get("nexthops"):
            gateway = int(ipaddress.ip_address(obj["gateway"])) if obj.get("gateway") else None
            hops.append(Hop(obj.get("dev"), gateway))
        elif not hops:
            dead = True
        table = table_key(obj.get("table", "main"))
        prefsrc = int(ipaddress.ip_address(obj["prefsrc"])) if obj.get("prefsrc") else None
        return cls(
            version=version,
            table=table,
            kind=str(obj.get("type", "unicast")),
            dst=dst,
            plen=plen,
            hops=tuple(hops),
            metric=int(obj.get("metric", 1024 if version == 6 else 0)),
            tos=_number(obj.get("tos", 0)),
            prefsrc=prefsrc,
            dead=dead,
            text=_route_text(version, obj, table),
            realm=_number(obj.get("flow", {}).get("to", 0)),
        )


def _route_text(version: int, obj: dict[str, Any], table: str) -> str:
    parts = [] if obj.get("type", "unicast") == "unicast" else [str(obj["type"])]
    parts.append(str(obj.get("dst", "default")))
    if obj.get("gateway"):
        parts += ["via", obj["gateway"]]
    if obj.get("dev"):
        parts += ["dev", obj["dev"]]
    for hop in obj.get("nexthops", ()):
        parts += ["nexthop"] + (["via", hop["gateway"]] if hop.get("gateway") else []) + ["dev", str(hop.get("dev")),
                                                                                           "weight", str(hop.get("weight", 1))]
    parts += ["table", table]
    if "metric" in obj:
        parts += ["metric", str(obj["metric"])]
    return " ".join(parts)


class Table:
    """One routing table of one family: longest prefix first, then the lowest metric."""

    def __init__(self, version: int, routes: list[RouteSpec]) -> None:
        by_length: dict[int, dict[int, list[RouteSpec]]] = {}
        for route in routes:
            by_length.setdefault(route.plen, {}).setdefault(route.dst, []).append(route)
        for buckets in by_length.values():
            for candidates in buckets.values():
                candidates.sort(key=lambda r: r.metric)
        self.levels = [(_mask(version, plen), by_length[plen]) for plen in sorted(by_length, reverse=True)]

    def lookup(self, dst: int, tos: int) -> RouteSpec | None:
        for mask, buckets in self.levels:
            candidates = buckets.get(dst & mask)
            if candidates:
                for route in candidates:
                    if route.dead or (route.tos and route.tos != tos):
                        continue
                    return route
        return None


@dataclass(frozen=True)
class Lookup:
    """What the RPDB answered for one flow."""

    kind: str  # unicast, local, broadcast, ..., unreachable, blackhole, prohibit, noroute
    table: str | None = None
    route: RouteSpec | None = None
    dev: str | None = None
    gateway: int | None = None
    rule: IpRuleSpec | None = None

    @property
    def delivered(self) -> bool:
        return self.kind in DELIVERED

    @property
    def error(self) -> bool:
        return self.kind in ERROR_ROUTES or self.kind == "noroute"


class Query(NamedTuple):
    """The routing key (a `flowi`): what the kernel looks up for one packet."""

    version: int
    src: int
    dst: int
    iif: str  # "lo" for locally generated packets
    oif: str | None
    mark: int
    proto: int
    sport: int
    dport: int
    tos: int
    uid: int | None = 0  # None: a local socket's owner, which the simulator does not know


class Rpdb:
    """ip rules and routes of both families, with what is known about their completeness."""

    def __init__(
        self,
        rules: list[dict[str, Any]],
        routes: list[dict[str, Any]],
        partial: dict[str, str] | None = None,
        unknown: dict[str, str] | None = None,
    ) -> None:
        self.rules: dict[int, list[IpRuleSpec]] = {4: [], 6: []}
        for obj in rules:
            spec = IpRuleSpec.from_json(obj)
            self.rules[spec.version].append(spec)
        for specs in self.rules.values():
            specs.sort(key=lambda r: r.priority)
        grouped: dict[tuple[int, str], list[RouteSpec]] = {}
        for obj in routes:
            route = RouteSpec.from_json(obj)
            grouped.setdefault((route.version, route.table), []).append(route)
        self.tables = {key: Table(key[0], specs) for key, specs in grouped.items()}
        self.partial = dict(partial or {})
        self.unknown = dict(unknown or {})
        self.first_at = {
            version: {rule.priority: index for index, rule in reversed(list(enumerate(specs)))}
            for version, specs in self.rules.items()
        }
        self.has_custom_rules = any(
            (r.priority, r.action, r.table) not in ((0, "lookup", "local"), (32766, "lookup", "main"), (32767, "lookup", "default"))
            for specs in self.rules.values() for r in specs
        )

    def table_lookup(self, version: int, table: str, dst: int, tos: int = 0) -> RouteSpec | None:
        """One table's answer; raises `Indeterminate` where the unknown part of it would decide."""
        if table in self.unknown:
            raise Indeterminate(f"lookup {table} for {address_text(version, dst)}", self.unknown[table], table)
        found = self.tables.get((version, table))
        route = found.lookup(dst, tos) if found else None
        if route is None and table in self.partial:
            raise Indeterminate(f"lookup {table} for {address_text(version, dst)}", self.partial[table], table)
        return route

    def lookup(self, q: Query, choose: Choose, record: Record = None) -> Lookup:
        """The kernel's `fib_lookup`: the RPDB walk, then the winning table's route."""
        rules = self.rules[q.version]
        mark, src = q.mark, q.src
        index = 0
        while index < len(rules):
            rule = rules[index]
            index += 1
            if rule.simple:
                matched = not ((rule.fwmark ^ mark) & rule.fwmask or (src ^ rule.src[0]) & rule.src_mask)
                matched = matched != rule.invert
            else:
                matched = self._matches(rule, q)
            if not matched:
                if record is not None:
                    record.append({"stage": "rule", "rule": rule.text, "matched": False})
                continue
            if rule.action == "goto":
                target = self.first_at[q.version].get(rule.goto or -1)
                if record is not None:
                    record.append({"stage": "rule", "rule": rule.text, "matched": True,
                                   "result": f"goto {rule.goto}" if target is not None else "goto target missing: ignored"})
                if target is not None:
                    index = target
                continue
            if rule.action == "nop":
                if record is not None:
                    record.append({"stage": "rule", "rule": rule.text, "matched": True, "result": "nop"})
                continue
            if rule.action in ERROR_ROUTES:
                if record is not None:
                    record.append({"stage": "rule", "rule": rule.text, "matched": True, "result": rule.action})
                return Lookup(rule.action, rule=rule)
            if rule.action != "lookup" or rule.table is None:
                raise Indeterminate(rule.text, f"ip rule action '{rule.action}' is not modelled")
            route = self.table_lookup(q.version, rule.table, q.dst, q.tos)
            if route is None or route.kind == "throw":
                if record is not None:
                    why = "no route" if route is None else f"throw route {route.text}"
                    record.append({"stage": "rule", "rule": rule.text, "matched": True, "table": rule.table,
                                   "result": f"{why}: continue"})
                continue
            if rule.suppress_prefixlen is not None and route.plen <= rule.suppress_prefixlen and route.kind not in ERROR_ROUTES:
                if record is not None:
                    record.append({"stage": "rule", "rule": rule.text, "matched": True, "table": rule.table,
                                   "route": route.text,
                                   "result": f"suppressed: /{route.plen} <= suppress_prefixlength {rule.suppress_prefixlen}"})
                continue
            hop = route.hops[0] if len(route.hops) == 1 else route.hops[
                choose(tuple(h.weight for h in route.hops), f"multipath {route.text}")]
            if record is not None:
                record.append({"stage": "rule", "rule": rule.text, "matched": True, "table": rule.table,
                               "route": route.text, "result": route.kind})
            return Lookup(route.kind, rule.table, route, hop.dev, hop.gateway, rule)
        if record is not None:
            record.append({"stage": "rule", "rule": "(end of rules)", "matched": False, "result": "no route"})
        return Lookup("noroute")

    def _matches(self, rule: IpRuleSpec, q: Query) -> bool:
        """fib_rule_match and fib4/6_rule_match, inverted by `not`."""
        result = self._selectors(rule, q)
        return not result if rule.invert else result

    def _selectors(self, rule: IpRuleSpec, q: Query) -> bool:
        if rule.iif is not None and (rule.detached or rule.iif != q.iif):
            return False
        if rule.oif is not None and (rule.detached or rule.oif != q.oif):
            return False
        if (rule.fwmark ^ q.mark) & rule.fwmask:
            return False
        if rule.uid is not None:
            if q.uid is None:
                raise Indeterminate(rule.text, "uidrange depends on the owner of the local socket, which is not known")
            if not rule.uid[0] <= q.uid <= rule.uid[1]:
                return False
        if rule.unsupported:
            raise Indeterminate(rule.text, f"the '{rule.unsupported}' selector is not modelled")
        if rule.src_mask and (q.src ^ rule.src[0]) & rule.src_mask:
            return False
        if rule.dst_mask and (q.dst ^ rule.dst[0]) & rule.dst_mask:
            return False
        if rule.tos and rule.tos != q.tos:
            return False
        if rule.ipproto and rule.ipproto != q.proto:
            return False
        for ports, port in ((rule.sport, q.sport), (rule.dport, q.dport)):
            if ports and not ports[0] <= port <= ports[1]:
                return False
        return True

    def address_type(self, version: int, address: int, dev: str | None = None) -> str:
        """What `fib daddr type` reads: the type of the address in the local table."""
        if version == 4:
            if address == 0xFFFFFFFF or address == 0:
                return "broadcast"
            if address >> 28 == 0xE:
                return "multicast"
        elif address >> 120 == 0xFF:
            return "multicast"
        route = self.table_lookup(version, "local", address)
        if route is None or (dev is not None and route.hops[0].dev != dev):
            return "unicast"
        return route.kind
