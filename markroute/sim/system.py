"""What the simulator knows about the machine, from either of its two sources.

`--live` reads everything from the running system (or a namespace): the nftables
listing, every ip rule and route, interface addresses and sysctls. `-c FILE` knows
only the compiled plan, so the rest is either given as hints (`--addr IF=CIDR`,
`--route ROUTE`) or marked unknown; the interpreter then says "indeterminate here"
wherever an unknown part would decide, instead of guessing. Both sources end up in
the same shapes (`ip -j` objects, an nft list-form document), so there is one
interpreter.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Any

from markroute.plan import FAMILY_NAMES, LinkState, Plan, Route, resolve
from markroute.sim.rpdb import Rpdb, family_of
from markroute.values import AUTO_GATEWAY

KERNEL_RULES = (
    {"priority": 0, "src": "all", "table": "local"},
    {"priority": 32766, "src": "all", "table": "main"},
    {"priority": 32767, "src": "all", "table": "default"},
)
UNKNOWN_LOCAL = "this host's addresses are not known offline: pass --addr IF=CIDR for each of them, or use --live"
PARTIAL_MAIN = (
    "main's routes beyond the connected ones are not known offline: pass --route for them "
    "(e.g. --route 'default via GW dev IF'), or use --live"
)
CONNECTED_UNKNOWN = "the connected routes markroute copies from main at apply are not known offline: pass --addr IF=CIDR"
INTERFACE_SYSCTLS = ("rp_filter", "src_valid_mark", "accept_local", "forwarding")


@dataclass(frozen=True)
class Link:
    name: str
    up: bool
    mac: str | None
    addresses: tuple[tuple[int, int, int], ...]  # (IP version, address, prefix length), primary first

    def in_subnet(self, version: int, address: int) -> int | None:
        """The first of this link's addresses whose subnet holds `address`, if any."""
        for v, own, plen in self.addresses:
            if v == version:
                bits = 32 if v == 4 else 128
                if (own ^ address) >> (bits - plen) == 0 if plen else True:
                    return own
        return None

    def first(self, version: int) -> int | None:
        for v, own, _ in self.addresses:
            if v == version and not (v == 6 and own >> 118 == 0x3FA):  # skip fe80::/10 for IPv6
                return own
        return None


@dataclass
class Host:
    """Interfaces and sysctls; `links` is None when the interfaces are not known at all."""

    links: dict[str, Link] | None
    sysctls: dict[str, str]
    source: str  # "live" or "config"
    cache: dict[tuple[str, str], Any] = field(default_factory=dict, repr=False)

    def sysctl(self, path: str, default: int = 0) -> int:
        """A sysctl's value; the kernel default when it was not read or set by the plan."""
        value = self.sysctls.get(path)
        try:
            return int(value) if value is not None else default
        except ValueError:
            return default

    def conf(self, version: int, dev: str, key: str) -> int:
        family = "ipv4" if version == 4 else "ipv6"
        return self.sysctl(f"net/{family}/conf/{dev}/{key}", self.sysctl(f"net/{family}/conf/default/{key}"))

    def rp_filter(self, dev: str) -> int:
        """The kernel uses the larger of `all` and the interface's value."""
        key = ("rp_filter", dev)
        if key not in self.cache:
            self.cache[key] = max(self.sysctl("net/ipv4/conf/all/rp_filter"), self.conf(4, dev, "rp_filter"))
        return int(self.cache[key])

    def either(self, dev: str, key: str) -> bool:
        """Flags the kernel ORs between `all` and the interface (src_valid_mark, accept_local)."""
        cached = (key, dev)
        if cached not in self.cache:
            self.cache[cached] = bool(self.sysctl(f"net/ipv4/conf/all/{key}") or self.conf(4, dev, key))
        return bool(self.cache[cached])

    def forwarding(self, version: int, dev: str) -> bool:
        if version == 6:
            return bool(self.sysctl("net/ipv6/conf/all/forwarding"))
        if f"net/ipv4/conf/{dev}/forwarding" in self.sysctls:
            return bool(self.sysctl(f"net/ipv4/conf/{dev}/forwarding"))
        return bool(self.sysctl("net/ipv4/ip_forward"))

    def link(self, dev: str) -> Link | None:
        return None if self.links is None else self.links.get(dev)

    def has_address(self, version: int, dev: str) -> bool | None:
        if self.links is None:
            return None
        link = self.links.get(dev)
        return link is not None and link.first(version) is not None

    def masquerade_source(self, version: int, dev: str, next_hop: int | None) -> int | None:
        """The address masquerade picks on `dev`: one in the next hop's subnet, else the first."""
        link = self.link(dev)
        if link is None:
            return None
        if next_hop is not None:
            found = link.in_subnet(version, next_hop)
            if found is not None:
                return found
        return link.first(version)


@dataclass
class System:
    """The RPDB and the host, plus what the simulator had to assume to answer offline."""

    rpdb: Rpdb
    host: Host
    assumptions: list[str] = field(default_factory=list)


def parse_addr_hint(text: str) -> tuple[str, int, str]:
    """`IF=CIDR` as given to --addr: (interface, IP version, address/prefix)."""
    name, sep, cidr = text.partition("=")
    if not sep or not name.strip():
        raise ValueError(f"--addr '{text}' must be IF=ADDRESS/PREFIX, e.g. eth0=192.0.2.10/24")
    try:
        interface = ipaddress.ip_interface(cidr.strip())
    except ValueError:
        raise ValueError(f"--addr '{text}': '{cidr}' is not ADDRESS/PREFIX") from None
    if "/" not in cidr:
        raise ValueError(f"--addr '{text}': give the prefix length too, e.g. {cidr}/24")
    return name.strip(), interface.version, str(interface)


def _main_defaults(routes: list[dict[str, Any]]) -> frozenset[tuple[int, str]]:
    """(version, interface) of the default routes given with --route (`LinkState.main_defaults`)."""
    found: set[tuple[int, str]] = set()
    for route in routes:
        if route.get("dst") != "default" or not route.get("dev") or route.get("type", "unicast") != "unicast":
            continue
        try:
            found.add((family_of(route), route["dev"]))
        except ValueError:  # `default dev IF`: either family
            found |= {(4, route["dev"]), (6, route["dev"])}
    return frozenset(found)


def parse_route_hint(text: str) -> dict[str, Any]:
    """`DST [via GW] dev IF` (or `TYPE DST` for unreachable/blackhole/prohibit) as an `ip -j route` object."""
    words = text.split()
    kinds = ("unreachable", "blackhole", "prohibit", "throw")
    route: dict[str, Any] = {}
    if words and words[0] in kinds:
        route["type"] = words.pop(0)
    if not words:
        raise ValueError(f"--route '{text}' names no destination")
    destination = words.pop(0)
    try:
        version = ipaddress.ip_network(destination, strict=False).version if destination != "default" else 0
    except ValueError:
        raise ValueError(f"--route '{text}': '{destination}' is not a prefix or 'default'") from None
    route["dst"] = destination
    while words:
        key = words.pop(0)
        if key not in ("via", "dev", "metric") or not words:
            raise ValueError(f"--route '{text}': expected 'via GW', 'dev IF' or 'metric N', got '{key}'")
        value = words.pop(0)
        if key == "via":
            try:
                gateway = ipaddress.ip_address(value)
            except ValueError:
                raise ValueError(f"--route '{text}': '{value}' is not an address") from None
            if version and gateway.version != version:
                raise ValueError(f"--route '{text}' mixes IPv4 and IPv6")
            version = gateway.version
            route["gateway"] = str(gateway)
        elif key == "metric":
            if not value.isdigit():
                raise ValueError(f"--route '{text}': metric must be a number")
            route["metric"] = int(value)
        else:
            route["dev"] = value
    if "type" not in route and "dev" not in route:
        raise ValueError(f"--route '{text}' needs 'dev IF'")
    route["family"] = FAMILY_NAMES[version or 4]
    return route


def from_plan(plan: Plan, addresses: list[str] | None = None, routes: list[str] | None = None) -> System:
    """The system a compiled plan describes, completed by the user's hints where given.

    Without `--addr` nothing is known of the host's addresses, so every question that
    depends on them (is this destination local? which connected route?) is indeterminate.
    With it, the addresses given are taken as all of them. Main's connected routes follow
    from the addresses; its other routes are known only from `--route` (then main is
    taken as complete); otherwise a lookup in main that finds no connected route is
    indeterminate. Sysctls the plan does not set are taken at their kernel defaults.
    """
    hints = [parse_addr_hint(text) for text in addresses or []]
    extra = [parse_route_hint(text) for text in routes or []]
    links: dict[str, Link] | None = None
    connected: list[Route] = []
    local_routes: list[dict[str, Any]] = []
    if hints:
        grouped: dict[str, list[tuple[int, int, int]]] = {}
        for name, version, cidr in hints:
            interface = ipaddress.ip_interface(cidr)
            grouped.setdefault(name, []).append((version, int(interface.ip), interface.network.prefixlen))
            network = interface.network
            dst = str(network) if network.prefixlen != network.max_prefixlen else str(network.network_address)
            connected.append(Route(version, 254, dst, name, None, "link"))
            local_routes.append({"family": FAMILY_NAMES[version], "type": "local", "dst": str(interface.ip),
                                 "dev": name, "table": "local"})
        local_routes += [
            {"family": "inet", "type": "local", "dst": "127.0.0.0/8", "dev": "lo", "table": "local"},
            {"family": "inet6", "type": "local", "dst": "::1", "dev": "lo", "table": "local"},
        ]
        links = {name: Link(name, True, None, tuple(found)) for name, found in grouped.items()}
        links.setdefault("lo", Link("lo", True, None, ((4, 0x7F000001, 8), (6, 1, 128))))
    gateways, unlearned = learned_offline(plan, extra)
    state = LinkState(
        addresses={name: tuple((v, str(ipaddress.ip_address(a))) for v, a, _ in link.addresses)
                   for name, link in (links or {}).items()},
        connected=tuple(connected),
        main_defaults=_main_defaults(extra),
        gateways=gateways,
    )
    rules, plan_routes = resolve(plan, state)
    rule_objects = [dict(r.to_json(), family=FAMILY_NAMES[r.version]) for r in rules]
    rule_objects += [dict(r, family=f) for r in KERNEL_RULES for f in ("inet", "inet6")
                     if not (f == "inet6" and r["table"] == "default")]
    route_objects = [dict(r.to_json(), family=FAMILY_NAMES[r.version]) for r in plan_routes]
    route_objects += [dict(r.to_json(), family=FAMILY_NAMES[r.version]) for r in connected]
    route_objects += local_routes + extra
    partial: dict[str, str] = {}
    unknown: dict[str, str] = {}
    assumptions = ["sysctls the plan does not set have their kernel defaults"]
    if links is None:
        unknown["local"] = UNKNOWN_LOCAL
        for uplink in plan.uplinks:
            for number in uplink.tables:
                partial[str(number)] = CONNECTED_UNKNOWN
    else:
        assumptions.append("the addresses given with --addr are all of this host's addresses, and its links are up")
    for table, reason in unlearned.items():
        partial.setdefault(table, reason)
    if extra:
        assumptions.append("main holds exactly the connected routes and those given with --route")
    else:
        partial["main"] = PARTIAL_MAIN
        if links is not None:
            assumptions.append("main's unknown routes are less specific than its connected ones")
    host = Host(links, {s.path: s.value for s in plan.sysctls}, "config")
    return System(Rpdb(rule_objects, route_objects, partial, unknown), host, assumptions)


def learned_offline(plan: Plan, hints: list[dict[str, Any]]) -> tuple[dict[str, dict[int, str | None]], dict[str, str]]:
    """The next hops `gateway: auto` uplinks would learn from the default routes given with --route.

    As on the live system (`kernel.gateways`), the default route with the lowest metric
    on the uplink's interface gives its next hop. Returns those, and for every uplink
    table still missing one, why its lookups are indeterminate: the gateway is only
    known at run time, and guessing would be wrong.
    """
    gateways: dict[str, dict[int, str | None]] = {}
    unlearned: dict[str, str] = {}
    for uplink in plan.uplinks:
        unknown: list[str] = []
        for version, gateway in ((4, uplink.gateway), (6, uplink.gateway6)):
            if gateway != AUTO_GATEWAY or version not in uplink.versions:
                continue
            found = sorted((int(h.get("metric", 0)), h.get("gateway") or "") for h in hints
                           if h.get("dst") == "default" and h.get("dev") == uplink.interface
                           and h.get("family") == FAMILY_NAMES[version] and "type" not in h)
            if found:
                gateways.setdefault(uplink.interface, {})[version] = found[0][1] or None
            else:
                unknown.append(FAMILY_NAMES[version])
        if unknown:
            reason = (f"uplink '{uplink.name}' learns its {' and '.join(unknown)} gateway from the kernel at run time "
                      f"(gateway: auto): use --live, or describe it with --route 'default via GW dev {uplink.interface}'")
            unlearned |= {str(number): reason for number in uplink.tables}
    return gateways, unlearned


def sysctl_paths(interfaces: list[str]) -> list[str]:
    """The sysctls (paths under /proc/sys) the simulator reads on a live system."""
    # The bridge keys exist only while br_netfilter is loaded: iptables' physdev match asks.
    paths = ["net/ipv4/ip_forward", "net/ipv6/conf/all/forwarding", "net/bridge/bridge-nf-call-iptables"]
    for dev in ("all", "default", *interfaces):
        paths += [f"net/ipv4/conf/{dev}/{key}" for key in INTERFACE_SYSCTLS]
    return paths


def from_snapshot(snapshot: dict[str, Any], sysctls: dict[str, str]) -> System:
    """The system as `markroute.kernel.snapshot.snapshot()` read it: nothing is unknown."""
    links: dict[str, Link] = {}
    for name, info in snapshot.get("links", {}).items():
        found: list[tuple[int, int, int]] = []
        for cidr in info.get("addresses", ()):
            interface = ipaddress.ip_interface(cidr)
            found.append((interface.version, int(interface.ip), interface.network.prefixlen))
        links[name] = Link(name, bool(info.get("up", True)), info.get("mac"), tuple(found))
    rules = list(snapshot.get("rules", ()))
    routes = list(snapshot.get("routes", ()))
    return System(Rpdb(rules, routes), Host(links, dict(sysctls), "live"))
