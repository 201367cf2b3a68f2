"""The simulator's RPDB and routing tables: the kernel's fib_rules_lookup, rule by rule.

Most tests build `ip -j` shaped rules and routes by hand, one selector or action at a
time. The kernel test at the end lets a real namespace produce the listing (every
selector iproute2 prints) and compares the simulator's answers with `ip route get`.
"""

from __future__ import annotations

import ipaddress
import json
from typing import Any

import pytest

from markroute.lab import Lab
from markroute.sim.packet import Indeterminate
from markroute.sim.rpdb import IpRuleSpec, Lookup, Query, Rpdb

DEFAULTS = [
    {"priority": 0, "src": "all", "table": "local"},
    {"priority": 32766, "src": "all", "table": "main"},
    {"priority": 32767, "src": "all", "table": "default"},
]
ROUTES = [
    {"dst": "default", "gateway": "192.0.2.254", "dev": "eth0"},
    {"dst": "192.0.2.0/24", "dev": "eth0", "scope": "link"},
    {"dst": "default", "gateway": "198.51.100.1", "dev": "wan0", "table": "100"},
    {"dst": "default", "gateway": "203.0.113.1", "dev": "wan1", "table": "101"},
    {"type": "local", "dst": "192.0.2.1", "dev": "eth0", "table": "local"},
]


def ip(text: str) -> int:
    return int(ipaddress.ip_address(text))


def query(dst: str = "203.0.113.77", src: str = "192.0.2.10", iif: str = "eth0", mark: int = 0,
          proto: int = 6, sport: int = 40000, dport: int = 443, tos: int = 0, oif: str | None = None,
          uid: int | None = 0) -> Query:
    return Query(4, ip(src), ip(dst), iif, oif, mark, proto, sport, dport, tos, uid)


def first(weights: tuple[int, ...], label: str) -> int:
    return 0


def v4(objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """`ip -4 -j` listings carry no family; the simulator is told it, as `snapshot()` does."""
    return [dict(obj, family="inet") for obj in objects]


def lookup(rules: list[dict[str, Any]], q: Query, routes: list[dict[str, Any]] | None = None,
           record: list[dict[str, Any]] | None = None) -> Lookup:
    return Rpdb(v4(DEFAULTS + rules), v4(ROUTES if routes is None else routes)).lookup(q, first, record)


def test_the_kernel_rules_alone_use_local_then_main() -> None:
    found = lookup([], query())
    assert (found.kind, found.table, found.dev, found.gateway) == ("unicast", "main", "eth0", ip("192.0.2.254"))
    assert lookup([], query(dst="192.0.2.1")).kind == "local"


def test_fwmark_with_mask_compares_only_the_masked_bits() -> None:
    rules = [{"priority": 100, "src": "all", "fwmark": "0x200", "fwmask": "0xff00", "table": "100"}]
    assert lookup(rules, query(mark=0x12340200)).table == "100"
    assert lookup(rules, query(mark=0x300)).table == "main"


def test_fwmark_without_mask_compares_the_whole_mark() -> None:
    rules = [{"priority": 100, "src": "all", "fwmark": "0x1", "table": "100"}]
    assert lookup(rules, query(mark=1)).table == "100"
    assert lookup(rules, query(mark=0x101)).table == "main"


def test_rules_are_tried_in_priority_order_and_the_first_match_wins() -> None:
    rules = [
        {"priority": 200, "src": "all", "table": "101"},
        {"priority": 100, "src": "192.0.2.0", "srclen": 24, "table": "100"},
    ]
    assert lookup(rules, query(src="192.0.2.10")).table == "100"
    assert lookup(rules, query(src="10.0.0.1")).table == "101"


def test_not_inverts_the_selectors() -> None:
    rules = [{"priority": 100, "not": None, "src": "192.0.2.0", "srclen": 24, "table": "100"}]
    assert lookup(rules, query(src="192.0.2.10")).table == "main"
    assert lookup(rules, query(src="10.0.0.1")).table == "100"


def test_to_iif_and_oif_selectors() -> None:
    rules = [
        {"priority": 100, "src": "all", "dst": "203.0.113.0", "dstlen": 24, "iif": "lan0", "table": "100"},
        {"priority": 101, "src": "all", "oif": "wan1", "table": "101"},
    ]
    assert lookup(rules, query(iif="lan0")).table == "100"
    assert lookup(rules, query(iif="eth0")).table == "main", "iif must match"
    assert lookup(rules, query(iif="lan0", dst="198.51.100.9")).table == "main", "to must match"
    assert lookup(rules, query(oif="wan1")).table == "101"


def test_a_detached_interface_rule_never_matches() -> None:
    rules = [{"priority": 100, "src": "all", "iif": "gone0", "iif_detached": None, "table": "100"}]
    assert lookup(rules, query(iif="gone0")).table == "main"


def test_ipproto_and_port_ranges() -> None:
    rules = [{"priority": 100, "src": "all", "ipproto": "tcp", "sport_start": 1000, "sport_end": 2000,
              "dport": 25, "table": "100"}]
    assert lookup(rules, query(sport=1500, dport=25)).table == "100"
    assert lookup(rules, query(sport=999, dport=25)).table == "main"
    assert lookup(rules, query(sport=1500, dport=25, proto=17)).table == "main"


def test_tos_selector() -> None:
    rules = [{"priority": 100, "src": "all", "tos": "0x10", "table": "100"}]
    assert lookup(rules, query(tos=0x10)).table == "100"
    assert lookup(rules, query(tos=0x8)).table == "main"


def test_goto_skips_to_the_target_priority_and_a_missing_target_is_ignored() -> None:
    rules = [
        {"priority": 100, "src": "all", "goto": 300},
        {"priority": 200, "src": "all", "table": "100"},
        {"priority": 300, "src": "all", "table": "101"},
    ]
    assert lookup(rules, query()).table == "101"
    rules[0]["goto"] = 250
    assert lookup(rules, query()).table == "100"


def test_nop_goes_on() -> None:
    rules = [{"priority": 100, "src": "all", "action": "nop"}, {"priority": 101, "src": "all", "table": "100"}]
    assert lookup(rules, query()).table == "100"


@pytest.mark.parametrize("action", ["unreachable", "blackhole", "prohibit"])
def test_error_actions_end_the_lookup(action: str) -> None:
    rules = [{"priority": 100, "src": "all", "fwmark": "0xfe00", "fwmask": "0xff00", "action": action}]
    found = lookup(rules, query(mark=0xFE00))
    assert found.kind == action and found.error
    assert lookup(rules, query()).kind == "unicast"


def test_a_table_without_a_route_falls_through_to_the_next_rule() -> None:
    rules = [{"priority": 100, "src": "all", "table": "150"}]
    assert lookup(rules, query()).table == "main"


def test_a_throw_route_falls_through_and_error_routes_stop() -> None:
    routes = ROUTES + [
        {"type": "throw", "dst": "203.0.113.0/24", "table": "100"},
        {"type": "unreachable", "dst": "198.51.100.0/24", "table": "100"},
    ]
    rules = [{"priority": 100, "src": "all", "table": "100"}]
    assert lookup(rules, query(dst="203.0.113.5"), routes).table == "main"
    assert lookup(rules, query(dst="198.51.100.9"), routes).kind == "unreachable"
    assert lookup(rules, query(dst="192.0.2.99"), routes).table == "100", "the default of table 100 is less specific"


def test_suppress_prefixlength_rejects_routes_no_more_specific_than_it() -> None:
    rules = [
        {"priority": 100, "src": "all", "table": "main", "suppress_prefixlen": 0},
        {"priority": 101, "src": "all", "table": "100"},
    ]
    record: list[dict[str, Any]] = []
    assert lookup(rules, query(dst="203.0.113.5"), record=record).table == "100"
    assert any("suppressed" in str(step.get("result")) for step in record)
    assert lookup(rules, query(dst="192.0.2.99")).table == "main", "the /24 of main is more specific than /0"


def test_longest_prefix_then_lowest_metric() -> None:
    routes: list[dict[str, Any]] = [
        {"dst": "10.0.0.0/8", "dev": "a0"},
        {"dst": "10.1.0.0/16", "dev": "b0", "metric": 20},
        {"dst": "10.1.0.0/16", "dev": "c0", "metric": 10},
        {"dst": "10.1.2.0/24", "dev": "d0", "flags": ["dead"]},
    ]
    assert lookup([], query(dst="10.1.2.3"), routes).dev == "c0"
    assert lookup([], query(dst="10.2.0.1"), routes).dev == "a0"
    assert lookup([], query(dst="11.0.0.1"), routes).kind == "noroute"


def test_multipath_routes_are_a_choice_weighted_by_the_nexthops() -> None:
    routes = [{"dst": "default", "flags": [], "nexthops": [
        {"gateway": "192.0.2.1", "dev": "a0", "weight": 1, "flags": []},
        {"gateway": "192.0.2.2", "dev": "b0", "weight": 3, "flags": []},
    ]}]
    seen: list[tuple[int, ...]] = []

    def second(weights: tuple[int, ...], label: str) -> int:
        seen.append(weights)
        return 1

    found = Rpdb(v4(DEFAULTS), v4(routes)).lookup(query(), second)
    assert (found.dev, seen) == ("b0", [(1, 3)])


def test_uidrange_of_an_unknown_socket_owner_is_indeterminate() -> None:
    rules = [{"priority": 100, "src": "all", "iif": "lo", "uid_start": 1000, "uid_end": 1999, "table": "100"}]
    with pytest.raises(Indeterminate):
        lookup(rules, query(iif="lo", uid=None))
    assert lookup(rules, query(iif="lo", uid=1500)).table == "100"


def test_unknown_and_partly_known_tables_are_indeterminate_only_where_they_decide() -> None:
    rpdb = Rpdb(v4(DEFAULTS), [{"dst": "192.0.2.0/24", "dev": "eth0"}], partial={"main": "main is partly known"},
                unknown={"default": "nobody knows"})
    assert rpdb.lookup(query(dst="192.0.2.5"), first).dev == "eth0"
    with pytest.raises(Indeterminate, match="main is partly known"):
        rpdb.lookup(query(dst="203.0.113.1"), first)


def test_rule_text_reads_like_ip_rule() -> None:
    rule = IpRuleSpec.from_json({"priority": 10001, "src": "all", "fwmark": "0x200", "fwmask": "0xff00",
                                 "table": "100", "family": "inet"})
    assert rule.text == "10001: from all fwmark 0x200/0xff00 lookup 100"


def test_routes_without_family_take_it_from_their_addresses_or_fail_clearly() -> None:
    rpdb = Rpdb([], [{"dst": "2001:db8::/32", "dev": "eth0"}])
    assert rpdb.table_lookup(6, "main", ip("2001:db8::1")) is not None
    with pytest.raises(ValueError, match="family"):
        Rpdb([], [{"dst": "default", "dev": "ppp0"}])


# -- against a real RPDB ----------------------------------------------------------------

RULES = (
    ("100", "fwmark", "0x200/0xff00", "lookup", "100"),
    ("101", "not", "from", "10.0.0.0/8", "lookup", "main"),
    ("102", "to", "203.0.113.0/24", "iif", "d0", "lookup", "102"),
    ("103", "ipproto", "tcp", "sport", "1000-2000", "dport", "80", "lookup", "103"),
    ("104", "from", "10.9.0.0/24", "lookup", "main", "suppress_prefixlength", "0"),
    ("105", "from", "10.9.0.0/24", "goto", "107"),
    ("106", "from", "10.9.0.0/24", "unreachable"),
    ("107", "fwmark", "0x5", "blackhole"),
    ("108", "from", "10.9.0.0/24", "lookup", "100"),
)


@pytest.mark.kernel
def test_real_listings_route_like_ip_route_get(lab: Lab) -> None:
    """Every selector and action as iproute2 lists them, answered like the kernel answers."""
    ns = lab.add_ns("rpdb")
    lab.forwarding(ns)
    lab.ip(ns, "link", "add", "d0", "type", "veth", "peer", "name", "p0")
    lab.ip(ns, "link", "add", "d1", "type", "veth", "peer", "name", "p1")
    for dev in ("d0", "p0", "d1", "p1"):
        lab.ip(ns, "link", "set", dev, "up")
    lab.ip(ns, "addr", "add", "10.9.0.1/24", "dev", "d0")
    lab.ip(ns, "addr", "add", "192.0.2.1/24", "dev", "d1")
    lab.route(ns, "default", "via", "192.0.2.254")
    lab.route(ns, "default", "via", "10.9.0.2", "table", "100")
    lab.route(ns, "203.0.113.0/25", "via", "10.9.0.3", "table", "102")
    lab.route(ns, "default", "via", "192.0.2.253", "table", "103")
    lab.route(ns, "unreachable", "198.51.100.0/24", "table", "100")
    for priority, *selector in RULES:
        lab.ip(ns, "rule", "add", "pref", priority, *selector)
    rules = [dict(r, family="inet") for r in json.loads(lab.run(ns, ["ip", "-j", "rule"]).stdout)]
    routes = json.loads(lab.run(ns, ["ip", "-j", "route", "show", "table", "all"]).stdout)
    rpdb = Rpdb(rules, [dict(r, family="inet6" if ":" in r["dst"] else "inet") for r in routes])
    cases = [
        ("203.0.113.9", "10.9.0.7", "d0", 0, None),
        ("203.0.113.9", "192.0.2.7", "d1", 0x1200, None),
        ("203.0.113.200", "192.0.2.7", "d0", 0, None),
        ("203.0.113.9", "192.0.2.7", "d0", 0, None),
        ("198.51.100.5", "10.9.0.7", "d0", 0, None),
        ("198.51.100.5", "10.9.1.7", "d0", 0, None),
        ("198.51.100.5", "10.9.1.7", "d0", 5, None),
        ("198.51.100.5", "192.0.2.9", "d1", 0, ("tcp", 1500, 80)),
        ("198.51.100.5", "192.0.2.9", "d1", 0, ("tcp", 999, 80)),
        ("10.9.0.44", "10.9.1.7", "d0", 0, None),
    ]
    for dst, src, iif, mark, l4 in cases:
        argv = ["ip", "-j", "route", "get", dst, "from", src, "iif", iif, "mark", str(mark)]
        proto, sport, dport = l4 or ("udp", 0, 0)
        if l4:
            argv += ["ipproto", proto, "sport", str(sport), "dport", str(dport)]
        kernel = lab.run(ns, argv, check=False)
        found = rpdb.lookup(Query(4, ip(src), ip(dst), iif, None, mark, 6 if proto == "tcp" else 17, sport, dport, 0),
                            first)
        if kernel.returncode != 0:
            assert found.error, f"{argv}: kernel says {kernel.stderr.strip()}, simulator {found}"
            continue
        answer = json.loads(kernel.stdout)[0]
        assert not found.error, f"{argv}: kernel {answer}, simulator {found}"
        assert found.dev == answer["dev"], (argv, answer, found)
        assert found.gateway == (ip(answer["gateway"]) if "gateway" in answer else None), (argv, answer, found)
