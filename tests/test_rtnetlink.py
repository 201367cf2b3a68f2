"""markroute's own rtnetlink (`kernel.rtnetlink`) against the kernel and `ip`, and its wire format.

apply reads and writes ip rules and routes through it instead of pyroute2 (issue 15), so:
what it writes must be what `ip -j rule` / `ip -j route` show; its dumps must decode as
pyroute2 decodes them (`kernel.ipjson` reads both, the daemon's event socket is still
pyroute2), in a namespace full of rules and routes of every shape `ip` can make; a
foreign rule or route with markroute's selectors is never deleted; a refusal is a
clear message. The unit tests pin the encoding byte for byte where the kernel is
strict (header fields, attribute types) and decode what they encode.
"""

from __future__ import annotations

import json
import os
import socket
import struct
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from kernelhelp import KERNEL, REPO, markroute, own_routes, own_rules, write_config

from markroute.daemon import churn
from markroute.kernel import KernelError
from markroute.kernel.ipjson import route_json, rule_json
from markroute.kernel.netlinkwire import NLM_F_ACK_TLVS, NLMSG_ERROR, NLMSG_HEADER, attr
from markroute.kernel.netns import inside
from markroute.kernel.rpdb import Rpdb, route_key
from markroute.kernel.rtnetlink import (
    RTM_DELROUTE,
    RTM_DELRULE,
    RTM_NEWROUTE,
    RTM_NEWRULE,
    Rtnetlink,
    RtnetlinkError,
    _raise,
    decode,
    route_request,
    rule_request,
)
from markroute.lab import Lab
from markroute.plan import RULE_PROTOCOL, IpRule, Route

# -- wire format (no kernel) ------------------------------------------------------------


def test_rule_request_encodes_every_field_and_decodes_back() -> None:
    kind, flags, payload = rule_request("add", {"family": socket.AF_INET, "priority": 1003, "protocol": 77,
                                                "table": 100001, "fwmark": 0x100, "fwmask": 0xFF00,
                                                "src": "10.1.2.0", "src_len": 24})
    assert kind == RTM_NEWRULE
    assert flags == 0x1 | 0x4 | 0x400 | 0x200  # request, ack, create, excl: a duplicate is refused
    header = struct.unpack_from("=BBBBBBBBI", payload)
    assert header == (socket.AF_INET, 0, 24, 0, 0, 0, 0, 1, 0)  # a table > 255 only in FRA_TABLE; action lookup
    msg = decode(RTM_NEWRULE, payload)
    assert msg["action"] == 1 and msg["src_len"] == 24
    assert {name: msg.get_attr(name) for name in ("FRA_PRIORITY", "FRA_TABLE", "FRA_FWMARK", "FRA_FWMASK", "FRA_SRC",
                                                  "FRA_PROTOCOL")} == {
        "FRA_PRIORITY": 1003, "FRA_TABLE": 100001, "FRA_FWMARK": 0x100, "FRA_FWMASK": 0xFF00, "FRA_SRC": "10.1.2.0",
        "FRA_PROTOCOL": 77}


def test_rule_request_without_table_keeps_its_action_and_deletes_without_create() -> None:
    kind, flags, payload = rule_request("del", {"family": socket.AF_INET6, "priority": 7, "action": 6})
    assert (kind, flags) == (RTM_DELRULE, 0x1 | 0x4)
    msg = decode(RTM_NEWRULE, payload)
    assert (msg["family"], msg["action"], msg["table"]) == (socket.AF_INET6, 6, 0)
    assert msg.get_attr("FRA_TABLE") is None and msg.get_attr("FRA_PRIORITY") == 7


def test_route_request_append_and_delete_defaults() -> None:
    kind, flags, payload = route_request("append", {"family": socket.AF_INET, "table": 300, "oif": 5, "proto": 77,
                                                    "dst": "198.51.100.0", "dst_len": 24, "gateway": "10.0.0.1",
                                                    "flow": 9})
    assert (kind, flags) == (RTM_NEWROUTE, 0x1 | 0x4 | 0x400 | 0x800)  # append: a second route may coexist
    msg = decode(RTM_NEWROUTE, payload)
    assert (msg["table"], msg["scope"], msg["type"], msg["proto"], msg["dst_len"]) == (0, 0, 1, 77, 24)
    assert {n: msg.get_attr(n) for n in ("RTA_TABLE", "RTA_OIF", "RTA_DST", "RTA_GATEWAY", "RTA_FLOW")} == {
        "RTA_TABLE": 300, "RTA_OIF": 5, "RTA_DST": "198.51.100.0", "RTA_GATEWAY": "10.0.0.1", "RTA_FLOW": 9}
    kind, flags, payload = route_request("del", {"family": socket.AF_INET6, "table": 100, "oif": 2, "proto": 77})
    msg = decode(RTM_NEWROUTE, payload)
    assert (kind, flags) == (RTM_DELROUTE, 0x1 | 0x4)
    assert (msg["table"], msg["scope"], msg["type"]) == (100, 255, 0)  # any scope, any type: as `ip route del`


def test_multipath_routes_decode_every_next_hop() -> None:
    hop = struct.pack("=HBBi", 8 + 8, 0, 1, 4) + attr(5, socket.inet_pton(socket.AF_INET, "10.0.0.1"))
    other = struct.pack("=HBBi", 8 + 8, 0, 0, 7) + attr(5, socket.inet_pton(socket.AF_INET, "10.0.1.1"))
    payload = struct.pack("=BBBBBBBBI", socket.AF_INET, 0, 0, 0, 254, 3, 0, 1, 0) + attr(9, hop + other)
    msg = decode(RTM_NEWROUTE, payload)
    hops = msg.get_attr("RTA_MULTIPATH")
    assert [(h["oif"], h["hops"], h.get_attr("RTA_GATEWAY")) for h in hops] == [(4, 1, "10.0.0.1"), (7, 0, "10.0.1.1")]
    assert route_json(msg, lambda index: f"if{index}")["nexthops"] == [
        {"gateway": "10.0.0.1", "dev": "if4", "weight": 2, "flags": []},
        {"gateway": "10.0.1.1", "dev": "if7", "weight": 1, "flags": []}]


def test_a_refusal_carries_the_kernels_own_words() -> None:
    text = b"Nexthop has invalid gateway\0"
    request = NLMSG_HEADER.pack(16, RTM_NEWROUTE, 0x5, 3, 0)
    body = struct.pack("=i", -22) + request + attr(1, text)
    data = NLMSG_HEADER.pack(16 + len(body), NLMSG_ERROR, 0x100 | NLM_F_ACK_TLVS, 3, 0) + body
    with pytest.raises(RtnetlinkError) as caught:
        _raise(data, 0, len(data))
    assert (caught.value.code, caught.value.detail) == (22, "Nexthop has invalid gateway")
    plain = NLMSG_HEADER.pack(36, NLMSG_ERROR, 0x100, 3, 0) + struct.pack("=i", -17) + request
    with pytest.raises(RtnetlinkError) as caught:
        _raise(plain, 0, len(plain))
    assert caught.value.detail == os.strerror(17)


class CannedKernel:
    """Stands in for the socket: answers each request with the next canned datagram, its sequence number set."""

    def __init__(self, answers: list[list[tuple[int, int, bytes]]]) -> None:
        self.answers = answers
        self.seq = 0
        self.requests = 0

    def sendall(self, data: bytes) -> None:
        self.seq = NLMSG_HEADER.unpack_from(data)[3]
        self.requests += 1

    def recv(self, size: int) -> bytes:
        return b"".join(NLMSG_HEADER.pack(NLMSG_HEADER.size + len(body), kind, flags, self.seq, 0) + body
                        for kind, flags, body in self.answers.pop(0))

    def close(self) -> None:
        pass


def test_a_dump_interrupted_by_a_change_is_read_again() -> None:
    rule = struct.pack("=BBBBBBBBI", socket.AF_INET, 0, 0, 0, 254, 0, 0, 1, 0) + attr(6, struct.pack("=I", 32766))
    kernel = CannedKernel([[(RTM_NEWRULE, 0x2 | 0x10, rule), (3, 0x2 | 0x10, bytes(4))],  # NLM_F_DUMP_INTR
                           [(RTM_NEWRULE, 0x2, rule), (RTM_NEWRULE, 0x2, rule), (3, 0x2, bytes(4))]])
    with Rtnetlink() as rtnl:
        rtnl.sock.close()
        rtnl.sock = kernel  # type: ignore[assignment]
        found = rtnl.get_rules(socket.AF_INET)
    assert kernel.requests == 2 and [m.get_attr("FRA_PRIORITY") for m in found] == [32766, 32766]


def test_the_socket_port_is_numbered_as_the_daemon_expects() -> None:
    with Rtnetlink() as first, Rtnetlink() as second:
        assert first.port != second.port
        assert churn.own(first.port) and churn.own(second.port)


# -- against the kernel ---------------------------------------------------------------


@pytest.fixture
def router() -> Iterator[tuple[Lab, str]]:
    with Lab() as lab:
        ns, peer = lab.add_ns("rt"), lab.add_ns("peer")
        lab.veth(ns, "wan0", peer, "up0")
        lab.veth(ns, "wan1", peer, "up1")
        lab.addr(ns, "wan0", "10.0.0.2/24")
        lab.addr(ns, "wan1", "10.0.1.2/24")
        lab.addr(ns, "wan0", "2001:db8::2/64")
        yield lab, ns


def ip_json(lab: Lab, ns: str, *args: str) -> list[dict[str, object]]:
    return json.loads(lab.ip(ns, "-j", *args).stdout or "[]")  # type: ignore[no-any-return]


@KERNEL
def test_dumps_decode_as_pyroute2_decodes_them(router: tuple[Lab, str]) -> None:
    lab, ns = router
    lab.ip(ns, "route", "add", "198.51.100.0/24", "table", "300", "nexthop", "via", "10.0.0.1", "weight", "2",
           "nexthop", "via", "10.0.1.1")
    lab.ip(ns, "route", "add", "default", "via", "10.0.0.1", "table", "100000", "proto", "77", "realm", "5",
           "metric", "7")
    lab.ip(ns, "-6", "route", "add", "2001:db8:5::/48", "via", "2001:db8::1", "table", "301", "pref", "high")
    lab.ip(ns, "route", "add", "blackhole", "203.0.113.0/24", "table", "302", "tos", "0x10")
    lab.ip(ns, "rule", "add", "pref", "50", "fwmark", "0x10/0xff", "iif", "wan0", "lookup", "300")
    lab.ip(ns, "rule", "add", "pref", "51", "from", "10.1.0.0/16", "to", "10.2.0.0/24", "uidrange", "100-200",
           "ipproto", "tcp", "dport", "80-90", "sport", "5", "lookup", "main", "suppress_prefixlength", "0")
    lab.ip(ns, "rule", "add", "pref", "52", "not", "oif", "wan1", "blackhole", "protocol", "77")
    lab.ip(ns, "-6", "rule", "add", "pref", "53", "from", "2001:db8::/32", "tos", "0x10", "goto", "60")
    from pyroute2 import IPRoute

    with inside(ns):
        with Rpdb() as rpdb:
            ours_rules = rpdb.rules_json()
            ours_routes = rpdb.routes_json()
            ours_links = {m.get_attr("IFLA_IFNAME"): (m["index"], m["flags"], m.get_attr("IFLA_ADDRESS"))
                          for m in rpdb.rtnl.get_links()}
            ours_addresses = sorted((m["index"], m["prefixlen"], m.get_attr("IFA_ADDRESS"), m.get_attr("IFA_LOCAL"))
                                    for m in rpdb.rtnl.get_addr())
        with IPRoute() as ipr:
            theirs_rules = [rule_json(m) for family in (socket.AF_INET, socket.AF_INET6)
                            for m in ipr.get_rules(family=family)]
            names = {m["index"]: m.get_attr("IFLA_IFNAME") for m in ipr.get_links()}
            theirs_routes = [route_json(m, lambda index: names.get(index, f"if{index}"))
                             for m in ipr.get_routes(family=255) if not m["flags"] & 0x200]
            theirs_links = {m.get_attr("IFLA_IFNAME"): (m["index"], m["flags"], m.get_attr("IFLA_ADDRESS"))
                            for m in ipr.get_links()}
            theirs_addresses = sorted((m["index"], m["prefixlen"], m.get_attr("IFA_ADDRESS"), m.get_attr("IFA_LOCAL"))
                                      for m in ipr.get_addr())
    assert ours_rules == theirs_rules
    assert len(ours_rules) == 3 + 4 + 2  # the defaults of both families and the four added
    key = lambda data: json.dumps(data, sort_keys=True)  # noqa: E731
    assert sorted(map(key, ours_routes)) == sorted(map(key, theirs_routes))
    assert any(route.get("nexthops") for route in ours_routes) and any(route.get("pref") == "high" for route in ours_routes)
    assert ours_links == theirs_links and set(ours_links) == {"lo", "wan0", "wan1"}
    assert ours_addresses == theirs_addresses


@KERNEL
def test_what_it_writes_is_what_ip_shows_and_deletes_only_its_own(router: tuple[Lab, str]) -> None:
    lab, ns = router
    rule = IpRule(version=4, priority=1002, action="lookup", table=100001, fwmark=0x100, fwmask=0xFF00, src=None)
    blackhole = IpRule(version=6, priority=1003, action="blackhole", table=None, fwmark=0x200, fwmask=0xFF00, src=None)
    route = Route(4, 100001, "default", "wan0", "10.0.0.1", "universe", 3)
    connected = Route(6, 100001, "2001:db8::/64", "wan0", None, "link", None)
    with inside(ns):
        with Rpdb() as rpdb:
            for item in (rule, blackhole):
                rpdb.add_rule(item)
            for item in (route, connected):
                rpdb.add_route(item)
            assert set(rpdb.own_rules()) == {rule, blackhole}
            assert {route_key(r) for r in rpdb.own_routes()} == {route_key(route), route_key(connected)}
    assert {"priority": 1002, "src": "all", "fwmark": "0x100", "fwmask": "0xff00", "table": "100001",
            "protocol": "77"}.items() <= ip_json(lab, ns, "rule", "show", "pref", "1002")[0].items()
    assert ip_json(lab, ns, "-6", "rule", "show", "pref", "1003")[0]["action"] == "blackhole"
    shown = ip_json(lab, ns, "route", "show", "table", "100001")
    assert [(r["dst"], r["gateway"], r["dev"], r["protocol"], r["flow"]) for r in shown] == [
        ("default", "10.0.0.1", "wan0", "77", {"to": "3"})]
    assert [r["dst"] for r in ip_json(lab, ns, "-6", "route", "show", "table", "100001")] == ["2001:db8::/64"]

    # someone else's rule and route with markroute's selectors: deleting markroute's (protocol 77) never takes them
    with inside(ns):
        with Rpdb() as rpdb:
            rpdb.delete_rule(rule)
            rpdb.delete_route(route)
    lab.ip(ns, "rule", "add", "pref", "1002", "fwmark", "0x100/0xff00", "lookup", "100001")
    lab.ip(ns, "route", "add", "default", "via", "10.0.0.1", "dev", "wan0", "table", "100001", "realm", "3")
    with inside(ns):
        with Rpdb() as rpdb:
            with pytest.raises(KernelError, match="cannot delete ip rule"):
                rpdb.delete_rule(rule)
            with pytest.raises(KernelError, match="cannot delete route"):
                rpdb.delete_route(route)
            assert rpdb.own_rules() == [blackhole]
            assert [route_key(r) for r in rpdb.own_routes()] == [route_key(connected)]
    assert ip_json(lab, ns, "rule", "show", "pref", "1002")[0].get("protocol") is None  # still there, still theirs
    assert [(r["gateway"], r.get("protocol", "boot")) for r in ip_json(lab, ns, "route", "show", "table", "100001")] == [
        ("10.0.0.1", "boot")]


@KERNEL
def test_refusals_become_clear_messages(router: tuple[Lab, str]) -> None:
    lab, ns = router
    rule = IpRule(version=4, priority=1002, action="lookup", table=100001, fwmark=0x100, fwmask=0xFF00, src=None)
    with inside(ns):
        with Rpdb() as rpdb:
            rpdb.add_rule(rule)
            with pytest.raises(KernelError, match=r"cannot add ip rule '.*fwmark 0x100.*': File exists"):
                rpdb.add_rule(rule)
            off_link = Route(4, 100001, "default", "wan0", "192.0.2.1", "universe", None)
            with pytest.raises(KernelError, match=r"cannot add route 'default via 192.0.2.1.*': Nexthop has invalid gateway"):
                rpdb.add_route(off_link)
            with pytest.raises(KernelError, match="interface nosuch0 does not exist"):
                rpdb.add_route(Route(4, 100001, "default", "nosuch0", "10.0.0.1", "universe", None))
            assert rpdb.own_routes() == [] and rpdb.own_rules() == [rule]
    assert [r.get("protocol") for r in ip_json(lab, ns, "rule", "show", "pref", "1002")] == [str(RULE_PROTOCOL)]


@KERNEL
def test_the_cli_apply_never_imports_pyroute2(router: tuple[Lab, str], tmp_path: Path) -> None:
    """Issue 15: `apply` reads and writes rules and routes through `kernel.rtnetlink` only (its import
    alone cost ~80 ms of CPU); every step still happens: rules and routes are those `ip` shows."""
    lab, ns = router
    (tmp_path / "big.txt").write_text("11.0.0.0/24\n11.0.2.0/24\n")
    config = write_config(tmp_path, "uplinks:\n  isp_a: {interface: wan0, gateway: 10.0.0.1}\n"
                                    "  isp_b: {interface: wan1, gateway: 10.0.1.1}\nsets:\n  big: {file: big.txt}\n"
                                    "policies:\n  - {name: big-set, to: \"@big\", via: isp_b}\n")
    env = dict(os.environ, PYTHONPATH=str(REPO))
    try:
        run = subprocess.run([sys.executable, "-X", "importtime", "-m", "markroute", "apply", "-c", config,
                              "--netns", ns], capture_output=True, text=True, env=env, timeout=120, check=False)
        assert run.returncode == 0, run.stderr[-2000:]
        imported = {line.rsplit("|", 1)[-1].strip() for line in run.stderr.splitlines() if line.startswith("import time:")}
        assert "markroute.kernel.rtnetlink" in imported
        assert not {name for name in imported if name.split(".")[0] == "pyroute2"}
        assert {route["dev"] for route in own_routes(lab, ns)} == {"wan0", "wan1"}
        assert len([rule for rule in own_rules(lab, ns) if "fwmark" in rule]) >= 2
    finally:
        markroute("down", "--netns", ns)
