"""Which uplinks can carry traffic right now, and via which next hop: `gateway: auto` and waiting uplinks.

An uplink's address and gateway often come from someone else: a DHCP client, router
advertisements, NetworkManager, systemd-networkd, ifupdown, a tunnel. For `gateway:
auto` (and `gateway6: auto`) markroute learns the next hop from the kernel, never
touching the routes it learns from:

* a default route another program put on the uplink's interface, in any routing
  table but markroute's uplink tables (dhclient-script: main, protocol boot; the
  kernel's RA handling: main, protocol ra, via the router's link-local address; one in
  an uplink table is not learned from but refused as foreign, `kernel.foreign`). Several candidates: the lowest
  metric wins, then main's, then the lowest address, so the choice is stable. IPv6
  routes whose advertised lifetime ran out are listed by the kernel until its garbage
  collection removes them; they are ignored;
* on a point-to-point link without such a route: the peer address of the link
  (`ip addr add A peer B`), else the device itself (no next hop needed).

An uplink is *waiting* when none of its IP versions can have a default route now:
its interface is missing or down, it has no address of that version, no next hop is
known (auto), or, while `markroute run` follows the system, a fixed gateway is no
longer on its link (no connected route covers it: renumbered under it; the kernel
would refuse the route, "Network is unreachable"; `apply` still fails on it). A
waiting uplink is not an error: `apply` installs everything else and its traffic
follows the same rules as for a down uplink. An uplink without any gateway on a link
that resolves neighbours (Ethernet, veth: ARP/NDP) also waits, for `needs-gateway`:
`default dev IF` there makes the router ARP for every destination and nothing
answers, so markroute refuses to install it (`apply` reports it as an error).

`survey` reads all of it in one go; two surveys compare equal when nothing `apply`
derives from the system changed, which is how the daemon tells a DHCP renewal (a new
RTM_NEWADDR every few seconds, nothing changed) from a real change.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Any

from markroute.kernel.ipjson import RT_TABLE_MAIN, RTN_UNICAST, VERSIONS, table_of
from markroute.kernel.links import IFF_UP
from markroute.kernel.rpdb import Rpdb
from markroute.plan import RULE_PROTOCOL, LinkState, UplinkPlan, owned_tables
from markroute.values import AUTO_GATEWAY

IFF_LOOPBACK = 0x8
IFF_POINTOPOINT = 0x10
IFF_NOARP = 0x80

#: Why an uplink waits: a fixed word (`status --json`) and the words `status` prints.
REASONS = {
    "interface-missing": "interface missing",
    "interface-down": "interface down",
    "no-address": "no address yet",
    "no-gateway": "no gateway yet",
    "gateway-unreachable": "gateway not on link",
    "needs-gateway": "needs a gateway",
}


@dataclass(frozen=True)
class Interface:
    """What readiness depends on: index (a re-created interface gets a new one), flags, addresses."""

    name: str
    index: int
    up: bool
    resolves_neighbours: bool  # ARP/NDP: a broadcast link such as Ethernet or veth, not point-to-point
    addresses: tuple[tuple[int, str, int, str | None], ...]  # (IP version, address, prefix length, peer)

    def has_address(self, version: int) -> bool:
        """An address traffic can leave with: IPv6 link-local ones do not count."""
        return any(v == version and not (v == 6 and ipaddress.ip_address(a).is_link_local)
                   for v, a, _, _ in self.addresses)

    def peer(self, version: int) -> str | None:
        return next((p for v, _, _, p in self.addresses if v == version and p), None)


@dataclass(frozen=True)
class Readiness:
    """One uplink now: the IP versions that can have a default route (with its next hop) and why others cannot."""

    uplink: str
    interface: str
    ready: tuple[tuple[int, str | None], ...]  # (version, next hop; None: on-link)
    missing: tuple[tuple[int, str], ...]  # (version, reason word)

    @property
    def reason(self) -> str | None:
        """Why the uplink waits (a `REASONS` key), None when some version is ready."""
        return None if self.ready or not self.missing else self.missing[0][1]

    def gateway(self, version: int) -> str | None:
        return dict(self.ready).get(version)


@dataclass(frozen=True)
class Survey:
    """Every uplink's readiness plus what `plan.resolve` needs; equal surveys mean nothing to do."""

    uplinks: dict[str, Readiness]
    interfaces: dict[str, Interface]
    links: LinkState

    @property
    def waiting(self) -> dict[str, str]:
        """Uplink name -> reason word, for the uplinks that wait."""
        return {name: r.reason for name, r in self.uplinks.items() if r.reason is not None}


def survey(rpdb: Rpdb, uplinks: Iterable[UplinkPlan], links: LinkState, following: bool = True) -> Survey:
    """Read interfaces and foreign routes once and judge every uplink; LINKS is `links.link_state`'s view.

    The result's `links` is LINKS with the learned next hops of the `auto` uplinks added.
    Unless FOLLOWING (the daemon), a fixed gateway not on its link is left to the kernel
    to refuse: `apply` of such a config fails and puts everything back, as it always did.
    """
    uplinks = list(uplinks)
    interfaces = read_interfaces(rpdb)
    routes = rpdb.route_messages()
    learned = foreign_defaults(routes, {i.index: i.name for i in interfaces.values()}, owned_tables(uplinks))
    found: dict[str, Readiness] = {}
    gateways: dict[str, dict[int, str | None]] = {}
    for uplink in uplinks:
        readiness = judge(uplink, interfaces.get(uplink.interface), learned, routes, following)
        found[uplink.name] = readiness
        for version, gateway in ((4, uplink.gateway), (6, uplink.gateway6)):
            if gateway == AUTO_GATEWAY and version in dict(readiness.ready):
                gateways.setdefault(uplink.interface, {})[version] = readiness.gateway(version)
    return Survey(found, interfaces, replace(links, gateways=gateways))


def read_interfaces(rpdb: Rpdb) -> dict[str, Interface]:
    addresses: dict[int, list[tuple[int, str, int, str | None]]] = {}
    for msg in rpdb.rtnl.get_addr():
        family = msg["family"]
        local, address = msg.get_attr("IFA_LOCAL"), msg.get_attr("IFA_ADDRESS")
        if family in VERSIONS and (local or address):
            peer = address if local and address and address != local else None
            addresses.setdefault(msg["index"], []).append((VERSIONS[family], local or address, msg["prefixlen"], peer))
    found: dict[str, Interface] = {}
    for msg in rpdb.rtnl.get_links():
        flags = msg["flags"]
        name = msg.get_attr("IFLA_IFNAME")
        found[name] = Interface(
            name=name,
            index=msg["index"],
            up=bool(flags & IFF_UP),
            resolves_neighbours=not flags & (IFF_LOOPBACK | IFF_POINTOPOINT | IFF_NOARP),
            addresses=tuple(sorted(addresses.get(msg["index"], ()))),
        )
    return found


def foreign_defaults(routes: list[Any], names: dict[int, str],
                     uplink_tables: set[int] | None = None) -> dict[tuple[str, int], str | None]:
    """(interface, version) -> next hop of the best live default route someone else put there.

    Routes in UPLINK_TABLES (markroute's) are never learned from: only markroute's own
    belong there, and another's is `kernel.foreign`'s to refuse.
    """
    candidates: dict[tuple[str, int], list[tuple[int, bool, str]]] = {}
    for msg in routes:
        family = msg["family"]
        if (family not in VERSIONS or msg["dst_len"] != 0 or msg["type"] != RTN_UNICAST
                or msg["proto"] == RULE_PROTOCOL or _expired(msg)
                or table_of(msg, "RTA_TABLE") in (uplink_tables or ())):
            continue
        metric = msg.get_attr("RTA_PRIORITY") or 0
        in_main = table_of(msg, "RTA_TABLE") == RT_TABLE_MAIN
        for index, gateway in _next_hops(msg):
            if index in names:
                candidates.setdefault((names[index], VERSIONS[family]), []).append((metric, not in_main, gateway or ""))
    return {key: min(found)[2] or None for key, found in candidates.items()}


def _next_hops(msg: Any) -> list[tuple[int, str | None]]:
    multipath = msg.get_attr("RTA_MULTIPATH")
    if multipath:
        return [(hop["oif"], hop.get_attr("RTA_GATEWAY")) for hop in multipath]
    oif = msg.get_attr("RTA_OIF")
    return [] if oif is None else [(oif, msg.get_attr("RTA_GATEWAY"))]


def _expired(msg: Any) -> bool:
    """An RA route whose lifetime ran out: still listed until garbage collection, no longer used."""
    cache = msg.get_attr("RTA_CACHEINFO")
    return cache is not None and int(cache["rta_expires"]) < 0


def judge(uplink: UplinkPlan, interface: Interface | None, learned: dict[tuple[str, int], str | None],
          routes: list[Any], following: bool = True) -> Readiness:
    """Which of the uplink's versions can have a default route now, via what, and why not the others."""
    if interface is None or not interface.up:
        reason = "interface-missing" if interface is None else "interface-down"
        return Readiness(uplink.name, uplink.interface, (), tuple((v, reason) for v in uplink.versions))
    ready: list[tuple[int, str | None]] = []
    missing: list[tuple[int, str]] = []
    for version in uplink.versions:
        configured = uplink.gateway if version == 4 else uplink.gateway6
        if configured == AUTO_GATEWAY:
            outcome = _learn(interface, version, learned)
        elif configured is None:
            outcome = ("needs-gateway", None) if interface.resolves_neighbours else ("", None)
        else:
            outcome = _fixed(interface, version, configured, routes)
            if outcome[0] == "gateway-unreachable" and not following:
                outcome = ("", configured)
        if outcome[0]:
            missing.append((version, outcome[0]))
        else:
            ready.append((version, outcome[1]))
    return Readiness(uplink.name, uplink.interface, tuple(ready), tuple(missing))


def _learn(interface: Interface, version: int, learned: dict[tuple[str, int], str | None]) -> tuple[str, str | None]:
    """('', next hop) or (reason, None) for an `auto` version."""
    if not interface.has_address(version):
        return "no-address", None
    key = (interface.name, version)
    if key in learned:
        return "", learned[key]
    if not interface.resolves_neighbours:
        return "", interface.peer(version)
    return "no-gateway", None


def _fixed(interface: Interface, version: int, gateway: str, routes: list[Any]) -> tuple[str, str | None]:
    """('', gateway) when the kernel will accept `default via GATEWAY dev IF`, else the reason it would not."""
    address = ipaddress.ip_address(gateway)
    if version == 6 and address.is_link_local:
        return "", gateway
    for msg in routes:
        if (VERSIONS.get(msg["family"]) == version and msg["type"] == RTN_UNICAST and msg["proto"] != RULE_PROTOCOL
                and msg.get_attr("RTA_GATEWAY") is None and msg.get_attr("RTA_OIF") == interface.index
                and (msg["dst_len"] == 0 or address in ipaddress.ip_network(
                    f"{msg.get_attr('RTA_DST')}/{msg['dst_len']}", strict=False))):
            return "", gateway
    return ("gateway-unreachable" if interface.has_address(version) else "no-address"), None


def describe(reason: str) -> str:
    return REASONS.get(reason, reason)


def waiting_text(uplink: str, interface: str, reason: str, closed: bool = False) -> str:
    """The warning `apply` gives for a waiting uplink; CLOSED: its traffic fails closed (is dropped)."""
    if reason in ("interface-missing", "interface-down"):
        detail = f"interface {interface} {'does not exist' if reason == 'interface-missing' else 'is down'}"
    else:
        detail = f"{describe(reason)} on {interface}"
    fate = "is dropped (it fails closed)" if closed else "follows failover and the last resort"
    return f"uplink '{uplink}' waits: {detail}; its routes are skipped and its traffic {fate} until it is ready"


def missing_text(uplink: str, interface: str, missing: tuple[tuple[int, str], ...]) -> str:
    """The warning for an uplink ready in one IP version only: the other gets no default route yet."""
    parts = ", ".join(f"IPv{version}: {describe(reason)}" for version, reason in missing)
    return f"uplink '{uplink}' on {interface} carries only part of its traffic for now ({parts}); no default route for it yet"
