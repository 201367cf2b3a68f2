"""ip rules and routes over rtnetlink (`kernel.rtnetlink`): read them, and change only markroute's own.

Everything markroute adds carries protocol `RULE_PROTOCOL`; `own_rules` / `own_routes`
return only those, as `IpRule` / `Route` values, so the kernel's view and a plan compare
as plain data. Deleting always names protocol 77 too, so the kernel can never match a
foreign rule or route that happens to have the same selectors.

The socket is markroute's own rtnetlink code, not pyroute2: apply's whole run is
measured against the kernel's insert of its set elements, and pyroute2's import and
per-request event loop cost more than the rest of what apply does here
(`kernel.rtnetlink` says how much).
"""

from __future__ import annotations

import ipaddress
import socket
from types import TracebackType
from typing import Any

from markroute.kernel import KernelError
from markroute.kernel.ipjson import (
    FR_ACT_TO_TBL,
    VERSIONS,
    prefix_text,
    route_json,
    rule_json,
    table_of,
)
from markroute.kernel.rtnetlink import Rtnetlink, RtnetlinkError
from markroute.plan import RULE_PROTOCOL, IpRule, Route

FAMILIES = {4: socket.AF_INET, 6: socket.AF_INET6}
RULE_ACTIONS = {FR_ACT_TO_TBL: "lookup", 6: "blackhole", 7: "unreachable"}
ACTION_CODES = {"blackhole": 6, "unreachable": 7}
RTM_F_CLONED = 0x200
RT_SCOPE_LINK = 253

RouteKey = tuple[int, int, str, str, str | None, str, int | None]


def route_key(route: Route) -> RouteKey:
    """What identifies a route in the kernel; IPv6 keeps no scope, so it is left out there."""
    return (route.version, route.table, route.dst, route.dev, route.gateway, route.scope if route.version == 4 else "",
            route.realm)


class Rpdb:
    """One netlink socket to the routing subsystem of the current namespace."""

    def __init__(self) -> None:
        self.rtnl = Rtnetlink()
        self._names: dict[int, str] = {}

    def __enter__(self) -> Rpdb:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.rtnl.close()

    # -- interfaces ------------------------------------------------------------------

    def interface_names(self) -> dict[int, str]:
        if not self._names:
            self._names = {link["index"]: link.get_attr("IFLA_IFNAME") for link in self.rtnl.get_links()}
        return self._names

    def ifname(self, index: int) -> str:
        return self.interface_names().get(index, f"if{index}")

    def ifindex(self, name: str) -> int | None:
        for index, known in self.interface_names().items():
            if known == name:
                return index
        return None

    # -- reading ---------------------------------------------------------------------

    def rule_messages(self) -> list[Any]:
        return [msg for family in (socket.AF_INET, socket.AF_INET6) for msg in self.rtnl.get_rules(family)]

    def route_messages(self) -> list[Any]:
        return [msg for msg in self.rtnl.get_routes() if not msg["flags"] & RTM_F_CLONED]

    def rules_json(self) -> list[dict[str, Any]]:
        return [rule_json(msg) for msg in self.rule_messages()]

    def routes_json(self) -> list[dict[str, Any]]:
        return [route_json(msg, self.ifname) for msg in self.route_messages()]

    def own_rules(self) -> list[IpRule]:
        return [rule for msg in self.rule_messages() if (rule := self._rule(msg)) is not None]

    def own_routes(self) -> list[Route]:
        return [route for msg in self.route_messages() if (route := self._route(msg)) is not None]

    def _rule(self, msg: Any) -> IpRule | None:
        if msg.get_attr("FRA_PROTOCOL") != RULE_PROTOCOL or msg["action"] not in RULE_ACTIONS:
            return None
        family = msg["family"]
        src = msg.get_attr("FRA_SRC")
        fwmark = msg.get_attr("FRA_FWMARK")
        return IpRule(
            version=VERSIONS[family],
            priority=msg.get_attr("FRA_PRIORITY") or 0,
            action=RULE_ACTIONS[msg["action"]],  # type: ignore[arg-type]
            table=table_of(msg, "FRA_TABLE") if msg["action"] == FR_ACT_TO_TBL else None,
            fwmark=fwmark,
            fwmask=msg.get_attr("FRA_FWMASK") if fwmark is not None else None,
            src=None if src is None else prefix_text(src, msg["src_len"], family, "all"),
        )

    def _route(self, msg: Any) -> Route | None:
        if msg["proto"] != RULE_PROTOCOL or msg.get_attr("RTA_MULTIPATH") or msg.get_attr("RTA_OIF") is None:
            return None
        family = msg["family"]
        return Route(
            version=VERSIONS[family],
            table=table_of(msg, "RTA_TABLE"),
            dst=prefix_text(msg.get_attr("RTA_DST"), msg["dst_len"], family, "default"),
            dev=self.ifname(msg.get_attr("RTA_OIF")),
            gateway=msg.get_attr("RTA_GATEWAY"),
            scope="link" if msg["scope"] == RT_SCOPE_LINK else "universe",
            realm=(msg.get_attr("RTA_FLOW") & 0xFFFF) or None if msg.get_attr("RTA_FLOW") else None,
        )

    # -- changing --------------------------------------------------------------------

    def add_rule(self, rule: IpRule) -> None:
        self._rule_request("add", rule)

    def delete_rule(self, rule: IpRule) -> None:
        self._rule_request("del", rule)

    def add_route(self, route: Route) -> None:
        """Appended, so a route with the same destination (a gateway being replaced) may coexist briefly."""
        self._route_request("append", route)

    def delete_route(self, route: Route) -> None:
        self._route_request("del", route)

    def _rule_request(self, command: str, rule: IpRule) -> None:
        fields: dict[str, Any] = {"family": FAMILIES[rule.version], "priority": rule.priority, "protocol": RULE_PROTOCOL}
        if rule.action == "lookup":
            fields["table"] = rule.table
        else:
            fields["action"] = ACTION_CODES[rule.action]
        if rule.fwmark is not None:
            fields["fwmark"] = rule.fwmark
            fields["fwmask"] = 0xFFFFFFFF if rule.fwmask is None else rule.fwmask
        if rule.src is not None:
            network = ipaddress.ip_network(rule.src, strict=False)
            fields["src"] = str(network.network_address)
            fields["src_len"] = network.prefixlen
        verb = "add" if command == "add" else "delete"
        self._call(self.rtnl.rule, command, fields, f"{verb} ip rule '{rule.text()}'")

    def _route_request(self, command: str, route: Route) -> None:
        index = self.ifindex(route.dev)
        verb = "delete" if command == "del" else "add"
        what = f"{verb} route '{route.text()}'"
        if index is None:
            raise KernelError(f"cannot {what}: interface {route.dev} does not exist")
        fields: dict[str, Any] = {
            "family": FAMILIES[route.version],
            "table": route.table,
            "oif": index,
            "proto": RULE_PROTOCOL,
            "dst_len": 0,
        }
        if route.dst != "default":
            network = ipaddress.ip_network(route.dst, strict=False)
            fields["dst"] = str(network.network_address)
            fields["dst_len"] = network.prefixlen
        if route.gateway:
            fields["gateway"] = route.gateway
        if route.scope == "link":
            fields["scope"] = RT_SCOPE_LINK
        if route.realm is not None:
            fields["flow"] = route.realm
        self._call(self.rtnl.route, command, fields, what)

    @staticmethod
    def _call(method: Any, command: str, fields: dict[str, Any], what: str) -> None:
        try:
            method(command, **fields)
        except RtnetlinkError as exc:
            raise KernelError(f"cannot {what}: {exc.detail}") from exc

