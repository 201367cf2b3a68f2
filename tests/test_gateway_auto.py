"""`gateway: auto` and waiting uplinks, with real DHCP (dnsmasq + dhclient-script), radvd and real traffic.

Each test starts `markroute run` (or `apply`) in the dynamic router lab and lets the
real clients change the router's uplinks under its feet: boot before any lease,
renumbering, two DHCP uplinks, IPv6 router advertisements, a lost lease.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from daemon_helpers import DaemonLab
from kernelhelp import markroute, view, write_config

from markroute.lab import Lab, dynamic_router_lab
from markroute.lab.ra import wait_ra_default
from markroute.lab.topologies import DynamicRouterLab, isp_pool
from markroute.lab.watch import wait_until

pytestmark = pytest.mark.kernel

PORT = 7300  # DaemonLab's echo port: every flow of these tests goes to it
STATIC_WAN1 = "10.0.1.2/24"


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[tuple[Lab, Path]]:
    """A lab and a work directory; `DaemonLab.close` (kill run, down) happens in each test's finally."""
    with Lab() as lab:
        yield lab, tmp_path


def status(ns: str) -> dict[str, Any]:
    result = markroute("status", "--netns", ns, "--json")
    assert result.returncode in (0, 3), result.stderr
    report: dict[str, Any] = json.loads(result.stdout)
    return report


def uplink_status(ns: str, name: str) -> dict[str, Any]:
    return next(u for u in status(ns)["uplinks"] if u["name"] == name)


def table_defaults(lab: Lab, ns: str, table: int, ipv6: bool = False) -> list[str]:
    """Next hops of markroute's default routes in TABLE (`dev IF` when on-link)."""
    family = "-6" if ipv6 else "-4"
    shown = lab.run(ns, ["ip", "-j", family, "route", "show", "table", str(table)], check=False)
    routes = json.loads(shown.stdout or "[]") if shown.returncode == 0 else []  # no route yet: no table yet
    return [r.get("gateway") or f"dev {r['dev']}" for r in routes if r["dst"] == "default"]


def foreign(lab: Lab, ns: str) -> dict[str, Any]:
    """Everything in NS that is not markroute's: other tables, rules, routes (sysctls are markroute's to set)."""
    seen = view(lab, ns, foreign_only=True)
    return {key: seen[key] for key in ("nftables", "rules", "routes")}


def isps_seen(d: DaemonLab, r: DynamicRouterLab, count: int = 20, sport: int | None = None) -> dict[int | None, int]:
    """Which ISP carried each of COUNT TCP connections from the LAN (all must succeed)."""
    result = r.lab.probe(r.lan, "tcp", r.server, d.port, count=count, sport=sport)
    assert result["ok"] == count, result
    seen: dict[int | None, int] = {}
    for source, n in result["seen"].items():
        seen[r.which_isp(source)] = seen.get(r.which_isp(source), 0) + n
    return seen


BOOT = """
uplinks:
  dhcp: {interface: wan0, gateway: auto, nat: masquerade}
  fixed: {interface: wan1, gateway: 10.0.1.1, nat: masquerade}
groups:
  both: {balance: {dhcp: 1, fixed: 1}}
policies:
  - name: rest
    via: both
"""


def source_rule_expected(lab: Lab, ns: str, interface: str) -> bool:
    """Whether markroute writes a `from ADDRESS` rule for INTERFACE's address: not when main's
    default route leaves by it, since an unbound socket gets that address too; sockets bound to
    it are pinned by the route realm instead (`compile.bound`, issue 19)."""
    defaults = json.loads(lab.ip(ns, "-j", "route", "show", "table", "main", "default").stdout)
    return interface not in {route.get("dev") for route in defaults}


def test_boot_order_static_uplink_at_once_dhcp_uplink_joins_after_its_lease(daemon: tuple[Lab, Path]) -> None:
    lab, tmp = daemon
    r = dynamic_router_lab(lab, isps=2)
    lab.addr(r.rtr, "wan1", STATIC_WAN1)  # ISP 1 is configured statically; its DHCP server is never asked
    d = DaemonLab(r, tmp)
    lab.serve_echo(r.net, d.port)
    try:
        before = foreign(lab, r.rtr)
        d.start(d.write(BOOT))
        d.wait_states({"dhcp": "waiting", "fixed": "up"})
        assert uplink_status(r.rtr, "dhcp")["waiting"] == "no-address"
        text = markroute("status", "--netns", r.rtr).stdout
        assert "waiting (no address yet)" in text, text
        assert isps_seen(d, r) == {1: 20}  # the static uplink works at once, alone
        assert foreign(lab, r.rtr) == before  # nothing foreign touched

        table = uplink_status(r.rtr, "dhcp")["table"]
        client = r.dhcp_client(0)
        client.start()
        lease = client.wait_lease(gateway="10.0.0.1")
        leased = time.monotonic()
        wait_until(lambda: True if table_defaults(lab, r.rtr, table) == ["10.0.0.1"] else None, 10,
                   "the DHCP uplink's default route", seen=d.log)
        joined = time.monotonic() - leased
        d.wait_states({"dhcp": "up", "fixed": "up"}, timeout=10)
        seen = isps_seen(d, r, count=60)
        assert set(seen) == {0, 1}, seen  # balanced over both now
        report = uplink_status(r.rtr, "dhcp")
        assert report["waiting"] is None and report["next_hops"] == {"inet": "10.0.0.1"}
        assert f"{lease.address}/24" in report["addresses"]
        ruled = any(rule.get("src") == lease.address for rule in json.loads(lab.ip(r.rtr, "-j", "rule").stdout))
        assert ruled == source_rule_expected(lab, r.rtr, "wan0")
        assert status(r.rtr)["drift"] == []
        assert joined < 3.0, f"joined {joined:.2f} s after the lease"  # required 1 s, measured ~0.15 s; loose bound
        assert "resync failed" not in d.log()
        # dhclient's own default route in main is as it put it: markroute never edits it
        assert [x for x in foreign(lab, r.rtr)["routes"] if x["dst"] == "default"] == [
            {"dst": "default", "gateway": "10.0.0.1", "dev": "wan0", "flags": []}
        ]
    finally:
        d.close()


def hook_config(base: str, events: Path) -> str:
    """BASE with an on_change command that appends one line per call to EVENTS."""
    script = f'echo "$MARKROUTE_UPLINK|$MARKROUTE_OLD_STATE|$MARKROUTE_NEW_STATE|$MARKROUTE_REASON" >> {events}'
    return base + f"settings:\n  on_change: [sh, -c, {json.dumps(script)}]\n"


def events_of(path: Path, uplink: str) -> list[list[str]]:
    """UPLINK's on_change calls, but for the first verdict on it (`unknown -> STATE`, issue 14), which every start makes."""
    lines = path.read_text().splitlines() if path.exists() else []
    return [fields for line in lines if line.startswith(f"{uplink}|") and (fields := line.split("|"))[1] != "unknown"]


def first_working(d: DaemonLab, r: DynamicRouterLab, isp: int, timeout: float) -> float:
    """Seconds until a new LAN connection leaves by ISP (probed every 0.1 s); fails after TIMEOUT."""
    start = time.monotonic()

    def works() -> bool | None:
        result = r.lab.probe(r.lan, "tcp", r.server, d.port, timeout=0.5)
        return True if result["ok"] == 1 and {r.which_isp(s) for s in result["seen"]} == {isp} else None

    wait_until(works, timeout, f"a connection through ISP {isp}", seen=d.log)
    return time.monotonic() - start


PREFERRED = """
uplinks:
  dhcp: {interface: wan0, gateway: auto, nat: masquerade}
  fixed: {interface: wan1, gateway: 10.0.1.1, nat: masquerade}
groups:
  prefer_dhcp: {failover: [dhcp, fixed]}
policies:
  - name: rest
    via: prefer_dhcp
"""


def test_renumbered_lease_moves_table_rules_and_probes_in_one_step(daemon: tuple[Lab, Path]) -> None:
    lab, tmp = daemon
    r = dynamic_router_lab(lab, isps=2)
    lab.addr(r.rtr, "wan1", STATIC_WAN1)
    d = DaemonLab(r, tmp)
    lab.serve_echo(r.net, d.port)
    events = tmp / "events"
    try:
        client = r.dhcp_client(0)
        client.start()
        old = client.wait_lease(gateway="10.0.0.1")
        d.start(d.write(hook_config(PREFERRED, events)), "--verbose")
        d.wait_states({"dhcp": "up", "fixed": "up"})
        assert isps_seen(d, r) == {0: 20}
        table = uplink_status(r.rtr, "dhcp")["table"]

        new_pool = isp_pool(0, generation=1)
        r.dhcp[0].renumber(new_pool)
        new = client.wait_lease(gateway=new_pool.router, timeout=30)
        back = first_working(d, r, 0, timeout=15)
        assert back < 4.0, f"ISP 0 carried new connections {back:.2f} s after the new lease"  # required 2 s, measured ~0.5 s

        assert table_defaults(lab, r.rtr, table) == ["10.1.0.1"]
        probed_up(d, "dhcp")  # the probes follow: 10.1.0.1 answers, from the new address
        sources = [x.get("src") for x in json.loads(lab.ip(r.rtr, "-j", "rule").stdout) if x.get("table") == str(table)]
        assert (new.address in sources) == source_rule_expected(lab, r.rtr, "wan0") and old.address not in sources
        report = status(r.rtr)
        assert report["drift"] == [], report["drift"]
        dhcp = next(u for u in report["uplinks"] if u["name"] == "dhcp")
        assert dhcp["next_hops"] == {"inet": "10.1.0.1"} and dhcp["health"]["state"] == "up"
        log = d.log()
        assert "resync failed" not in log and "cannot" not in log, log
        moved = [e for e in events_of(events, "dhcp") if "gateway" in e[3]]
        assert len(moved) == 1 and moved[0][2] == "up" and moved[0][3] == "gateway 10.0.0.1 -> 10.1.0.1", events
        assert sum("gateway 10.0.0.1 -> 10.1.0.1" in line for line in log.splitlines()) == 1, log  # one line (its reason= field repeats it)
        # Renewals go on every 2-3 s (each an RTM_NEWADDR): no apply follows them.
        applies = log.count("applying the installed plan")
        bound = client.log_path.read_text().count("bound to")
        wait_until(lambda: True if client.log_path.read_text().count("bound to") >= bound + 2 else None, 20,
                   "two renewals")
        assert d.log().count("applying the installed plan") == applies
        assert events_of(events, "fixed") == []  # the static uplink never changed
    finally:
        d.close()


TWO_DHCP = """
uplinks:
  a: {interface: wan0, gateway: auto, nat: masquerade}
  b: {interface: wan1, gateway: auto, nat: masquerade}
groups:
  both: {balance: {a: 1, b: 1}}
policies:
  - name: rest
    via: both
"""


def test_two_dhcp_uplinks_balance_one_to_one(daemon: tuple[Lab, Path], weighted_split: Any) -> None:
    lab, tmp = daemon
    r = dynamic_router_lab(lab, isps=2)
    d = DaemonLab(r, tmp)
    lab.serve_echo(r.net, d.port)
    try:
        clients = [r.dhcp_client(0, metric=100), r.dhcp_client(1, metric=200)]
        for client in clients:
            client.start()
        for i, client in enumerate(clients):
            client.wait_lease(gateway=f"10.0.{i}.1")
        before = foreign(lab, r.rtr)
        d.start(d.write(TWO_DHCP))
        d.wait_states({"a": "up", "b": "up"})
        report = status(r.rtr)
        assert [(u["name"], u["next_hops"], u["default_routes"]) for u in report["uplinks"]] == [
            ("a", {"inet": "10.0.0.1"}, ["10.0.0.1"]), ("b", {"inet": "10.0.1.1"}, ["10.0.1.1"]),
        ]
        assert [u["health"]["probed"] for u in report["uplinks"]] == [True, True]  # each probes its learned gateway
        seen = isps_seen(d, r, count=400)
        weighted_split(seen, {0: 1, 1: 1})
        live = markroute("trace", "--live", "--netns", r.rtr, "--from", r.clients[0].v4, "--to", r.server,
                         "--iif", r.rtr_lan_if, "--proto", "tcp", "--dport", str(d.port), "--json")
        assert live.returncode == 0, live.stderr
        paths = json.loads(live.stdout)["paths"]
        assert sorted((p["oif"], p["next_hop"], p["probability"]) for p in paths) == [
            ("wan0", "10.0.0.1", 0.5), ("wan1", "10.0.1.1", 0.5),
        ]
        assert foreign(lab, r.rtr) == before  # both clients' default routes in main untouched
        d.close()  # markroute down
        assert foreign(lab, r.rtr) == before
    finally:
        d.close()


RA = """
uplinks:
  isp: {interface: wan0, gateway6: auto, nat: masquerade}
  fixed: {interface: wan1, gateway6: 2001:db8:1::1, nat: masquerade}
groups:
  prefer_isp: {failover: [isp, fixed]}
policies:
  - name: rest
    via: prefer_isp
"""


def isps_seen6(d: DaemonLab, r: DynamicRouterLab, count: int = 10) -> dict[int | None, int]:
    assert r.server6 is not None
    result = r.lab.probe(r.lan, "tcp", r.server6, d.port, count=count)
    assert result["ok"] == count, result
    return {r.which_isp(source): n for source, n in result["seen"].items()}


def test_gateway6_auto_follows_router_advertisements(daemon: tuple[Lab, Path]) -> None:
    lab, tmp = daemon
    r = dynamic_router_lab(lab, isps=2, ipv6=True)
    r.ra[1].stop()  # ISP 1 is configured statically
    lab.ip(r.rtr, "-6", "route", "flush", "dev", "wan1", "proto", "ra")
    lab.sysctl(r.rtr, "net.ipv6.conf.wan1.accept_ra", 0)
    lab.addr(r.rtr, "wan1", "2001:db8:1::2/64")
    d = DaemonLab(r, tmp)
    lab.serve_echo(r.net, d.port)
    events = tmp / "events"
    try:
        wait_ra_default(lab, r.rtr, "wan0", "fe80::1")
        d.start(d.write(hook_config(RA, events)))
        d.wait_states({"isp": "up", "fixed": "up"})
        isp = uplink_status(r.rtr, "isp")
        assert isp["next_hops"] == {"inet6": "fe80::1"} and isp["gateway6"] == "auto"
        assert table_defaults(lab, r.rtr, isp["table"], ipv6=True) == ["fe80::1"]
        assert isps_seen6(d, r) == {0: 10}

        r.ra[0].change_router("fe80::2")  # goodbye from fe80::1, then advertisements from fe80::2
        wait_ra_default(lab, r.rtr, "wan0", "fe80::2")
        wait_until(lambda: True if table_defaults(lab, r.rtr, isp["table"], ipv6=True) == ["fe80::2"] else None,
                   10, "the uplink table to follow the router", seen=d.log)
        d.wait_states({"isp": "up"}, timeout=10)
        assert isps_seen6(d, r) == {0: 10}
        assert status(r.rtr)["drift"] == []
        moved = [e for e in events_of(events, "isp") if "gateway" in e[3]]
        assert [e[3] for e in moved] == ["gateway fe80::1 -> fe80::2"], events.read_text()
        assert "resync failed" not in d.log()
    finally:
        d.close()


def table_state(lab: Lab, ns: str, table: int) -> tuple[list[Any], list[Any]]:
    """markroute's routes in TABLE and its rules pointing there, as ip -j shows them."""
    routes = json.loads(lab.ip(ns, "-j", "route", "show", "table", str(table)).stdout or "[]")
    rules = [x for x in json.loads(lab.ip(ns, "-j", "rule").stdout) if x.get("table") == str(table)]
    return routes, rules


def test_lost_lease_makes_the_uplink_wait_and_its_flows_fail_over(daemon: tuple[Lab, Path]) -> None:
    lab, tmp = daemon
    r = dynamic_router_lab(lab, isps=2)
    lab.addr(r.rtr, "wan1", STATIC_WAN1)
    d = DaemonLab(r, tmp)
    lab.serve_echo(r.net, d.port)
    events = tmp / "events"
    try:
        client = r.dhcp_client(0)
        client.start()
        lease = client.wait_lease(gateway="10.0.0.1")
        d.start(d.write(hook_config(PREFERRED, events)))
        d.wait_states({"dhcp": "up", "fixed": "up"})
        report = status(r.rtr)
        tables = {u["name"]: u["table"] for u in report["uplinks"]}
        fixed_before = table_state(lab, r.rtr, tables["fixed"])
        nft_before = foreign(lab, r.rtr)["nftables"]

        flow = d.flow("udp", r.server, duration=6.0, interval=0.02)
        time.sleep(1.5)
        stopped = time.time()
        client.stop()  # dhclient-script removes the address; the kernel drops the default routes with it
        d.wait_states({"dhcp": "waiting"}, timeout=10)
        result = flow.result()
        assert d.isp_of(result.sources(0, stopped)) == {0}
        assert d.isp_of(result.sources(stopped + 2.0)) == {1}, "the flow failed over to the static uplink"

        dhcp = uplink_status(r.rtr, "dhcp")
        assert dhcp["waiting"] == "no-address" and dhcp["default_routes"] == []
        routes, rules = table_state(lab, r.rtr, tables["dhcp"])
        assert [x for x in routes if x["dst"] == "default"] == []
        assert lease.address not in {x.get("src") for x in rules}
        # The other uplink is untouched but for the copy of wan0's connected route, gone with it from main.
        routes, rules = table_state(lab, r.rtr, tables["fixed"])
        assert (routes, rules) == ([x for x in fixed_before[0] if x["dev"] != "wan0"], fixed_before[1])
        assert foreign(lab, r.rtr)["nftables"] == nft_before
        assert status(r.rtr)["drift"] == []
        assert events_of(events, "dhcp") == [["dhcp", "up", "waiting", "no address yet"]]
        assert isps_seen(d, r) == {1: 20}
        assert "resync failed" not in d.log()
    finally:
        d.close()


def test_apply_refuses_an_uplink_without_gateway_on_a_broadcast_link(daemon: tuple[Lab, Path]) -> None:
    lab, tmp = daemon
    r = dynamic_router_lab(lab, isps=1)
    client = r.dhcp_client(0)
    client.start()
    client.wait_lease(gateway="10.0.0.1")
    before = view(lab, r.rtr)
    config = write_config(tmp, "uplinks:\n  isp: {interface: wan0, nat: masquerade}\npolicies:\n  - {name: all, via: isp}\n")
    result = markroute("apply", "-c", config, "--netns", r.rtr)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "uplink 'isp' has no gateway but wan0 is a broadcast link" in result.stderr
    assert "write gateway: auto" in result.stderr and "Traceback" not in result.stderr
    assert view(lab, r.rtr) == before  # nothing changed


FIXED_AT_BOOT = """
uplinks:
  isp0: {interface: wan0, gateway: 10.0.0.1, nat: masquerade}
  isp1: {interface: wan1, gateway: 10.0.1.1, nat: masquerade}
groups:
  prefer0: {failover: [isp0, isp1]}
policies:
  - name: rest
    via: prefer0
"""


def test_apply_before_any_lease_installs_the_rest_and_fails_the_waiting_uplink_over(
    daemon: tuple[Lab, Path]
) -> None:
    lab, tmp = daemon
    r = dynamic_router_lab(lab, isps=2)
    lab.addr(r.rtr, "wan1", STATIC_WAN1)
    d = DaemonLab(r, tmp)
    lab.serve_echo(r.net, d.port)
    try:
        result = markroute("apply", "-c", write_config(tmp, FIXED_AT_BOOT), "--netns", r.rtr)
        assert result.returncode == 0, result.stderr
        assert "waiting: isp0 (no address yet)" in result.stdout
        assert isps_seen(d, r) == {1: 20}  # the failover list skips the waiting uplink
        report = status(r.rtr)
        assert [u["waiting"] for u in report["uplinks"]] == ["no-address", None] and report["drift"] == []
        check = markroute("status", "-c", write_config(tmp, FIXED_AT_BOOT), "--netns", r.rtr)
        assert check.returncode == 0, check.stdout  # the applied config is the config, not its health
    finally:
        d.close()


P2P_AUTO = """
uplinks:
  isp0: {interface: wan0, gateway: 10.0.0.1, nat: masquerade}
  cheap: {interface: wan1, gateway: auto, nat: masquerade}
policies:
  - name: all
    via: cheap
"""


def test_point_to_point_auto_uplink_uses_the_peer(daemon: tuple[Lab, Path]) -> None:
    from markroute.lab import router_lab

    lab, tmp = daemon
    r = router_lab(lab, isps=2, p2p=[1])
    lab.serve_echo(r.net, 7300)
    result = markroute("apply", "-c", write_config(tmp, P2P_AUTO), "--netns", r.rtr)
    assert result.returncode == 0, result.stderr
    cheap = uplink_status(r.rtr, "cheap")
    assert cheap["next_hops"] == {"inet": "10.0.1.1"} and cheap["default_routes"] == ["10.0.1.1"]
    flows = lab.probe(r.lan, "tcp", r.server, 7300, count=10)
    assert flows["ok"] == 10 and {r.which_isp(s) for s in flows["seen"]} == {1}, flows
    live = markroute("trace", "--live", "--netns", r.rtr, "--from", r.client_v4, "--to", r.server,
                     "--iif", r.rtr_lan_if, "--proto", "tcp", "--dport", "7300", "--json")
    assert live.returncode == 0, live.stderr
    assert (json.loads(live.stdout)["oif"], json.loads(live.stdout)["next_hop"]) == ("wan1", "10.0.1.1")
    assert markroute("down", "--netns", r.rtr).returncode == 0


def probed_up(d: DaemonLab, name: str) -> None:
    """Wait until the uplink's probes are answered again (its monitor follows its next hop and address)."""
    d.wait(lambda rec: rec is not None and rec.uplinks[name].state == "up" and rec.uplinks[name].rtt is not None
           and rec.uplinks[name].loss == 0.0, f"answered probes of {name}", timeout=10)


def ifindex(lab: Lab, ns: str, name: str) -> int:
    return int(json.loads(lab.ip(ns, "-j", "link", "show", name).stdout)[0]["ifindex"])


def test_recreated_interface_with_a_new_index_is_followed(daemon: tuple[Lab, Path]) -> None:
    lab, tmp = daemon
    r = dynamic_router_lab(lab, isps=2)
    lab.addr(r.rtr, "wan1", STATIC_WAN1)
    d = DaemonLab(r, tmp)
    lab.serve_echo(r.net, d.port)
    events = tmp / "events"
    try:
        client = r.dhcp_client(0)
        client.start()
        client.wait_lease(gateway="10.0.0.1")
        d.start(d.write(hook_config(PREFERRED, events)))
        d.wait_states({"dhcp": "up", "fixed": "up"})
        old_index = ifindex(lab, r.rtr, "wan0")

        client.stop()
        r.dhcp[0].stop()
        lab.ip(r.rtr, "link", "del", "wan0")  # the peer, ISP 0's down0, goes with it
        d.wait_states({"dhcp": "down"}, timeout=10)  # a lost link: down, as the health machine says
        wait_until(lambda: True if uplink_status(r.rtr, "dhcp")["waiting"] == "interface-missing" else None, 10,
                   "the uplink to wait for its interface", seen=d.log)
        assert "waiting (interface missing)" in markroute("status", "--netns", r.rtr).stdout
        assert isps_seen(d, r) == {1: 20}

        lab.veth(r.isps[0], "down0", r.rtr, "wan0")
        lab.addr(r.isps[0], "down0", r.dhcp[0].pool.gateway)
        r.dhcp[0].start()
        client = r.dhcp_client(0)
        client.start()
        client.wait_lease(gateway="10.0.0.1")
        assert ifindex(lab, r.rtr, "wan0") != old_index
        first_working(d, r, 0, timeout=15)
        probed_up(d, "dhcp")
        report = status(r.rtr)
        assert report["drift"] == [] and [u["waiting"] for u in report["uplinks"]] == [None, None]
        seen = events_of(events, "dhcp")
        assert seen[0] == ["dhcp", "up", "down", "link lost"]  # then maybe waiting for the lease, if seen in time
        assert seen[-1][2] == "up", seen  # back once its probes answer (a lost link comes back by probes)
        assert "resync failed" not in d.log()
    finally:
        d.close()


FIXED_ON_DHCP = PREFERRED.replace("gateway: auto", "gateway: 10.0.0.1")


def test_fixed_gateway_renumbered_away_waits_without_an_error_loop(daemon: tuple[Lab, Path]) -> None:
    """The issue's report: a fixed gateway on a DHCP link, the link renumbered; no retry loop, no drift."""
    lab, tmp = daemon
    r = dynamic_router_lab(lab, isps=2)
    lab.addr(r.rtr, "wan1", STATIC_WAN1)
    d = DaemonLab(r, tmp)
    lab.serve_echo(r.net, d.port)
    try:
        client = r.dhcp_client(0)
        client.start()
        old = client.wait_lease(gateway="10.0.0.1")
        d.start(d.write(FIXED_ON_DHCP))
        d.wait_states({"dhcp": "up", "fixed": "up"})
        r.dhcp[0].renumber(isp_pool(0, generation=1))
        client.wait_lease(gateway="10.1.0.1", timeout=30)
        d.wait_states({"dhcp": "waiting"}, timeout=10)
        time.sleep(2.5)  # an error loop would log every second
        report = status(r.rtr)
        dhcp = next(u for u in report["uplinks"] if u["name"] == "dhcp")
        assert dhcp["waiting"] == "gateway-unreachable" and report["drift"] == [], report
        assert "waiting (gateway not on link)" in markroute("status", "--netns", r.rtr).stdout
        rules = [x.get("src") for x in json.loads(lab.ip(r.rtr, "-j", "rule").stdout)]
        assert old.address not in rules  # the old `from ADDRESS` rule went with the address
        assert isps_seen(d, r) == {1: 20}
        log = d.log()
        assert "resync failed" not in log and "cannot" not in log, log
    finally:
        d.close()
