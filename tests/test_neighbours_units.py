"""The neighbour checks' logic without a kernel: paths through a foreign firewall, fwmark
rules, networkd's setting, how sysctls go back, and how rule removals are logged.

The kernel tests (test_neighbours_firewalls, _coexist, _churn) prove the same with real
packets; these pin the decisions down case by case and run in milliseconds.
"""

from __future__ import annotations

import ipaddress
import logging
import os
from pathlib import Path
from typing import Any

import pytest

from markroute import sim
from markroute.compile import compile_plan
from markroute.config import load_model
from markroute.daemon import churn
from markroute.kernel import networkd, restore
from markroute.plan import BAND_WIDTH, FAMILY_NAMES, LinkState, Route, resolve
from markroute.sim.foreign import Ours, foreign_hands, unmasked_fwmark_rules
from markroute.sim.neighbours import inspect, probes

CONFIG = """
uplinks:
  isp0: {interface: wan0, gateway: 10.0.0.1, nat: masquerade}
  isp1: {interface: wan1, gateway: 10.0.1.1, nat: masquerade}
policies:
  - {name: web-via-isp1, from: 192.168.1.0/24, proto: tcp, dport: 443, via: isp1}
"""
LINKS = {
    "lan0": {"up": True, "mac": "02:00:00:00:00:01", "addresses": ["192.168.1.1/24"]},
    "wan0": {"up": True, "mac": "02:00:00:00:00:02", "addresses": ["10.0.0.2/24"]},
    "wan1": {"up": True, "mac": "02:00:00:00:00:03", "addresses": ["10.0.1.2/24"]},
    "lo": {"up": True, "mac": "00:00:00:00:00:00", "addresses": ["127.0.0.1/8"]},
}
KERNEL_RULES = [{"family": "inet", "priority": 0, "src": "all", "table": "local"},
                {"family": "inet", "priority": 32766, "src": "all", "table": "main"},
                {"family": "inet", "priority": 32767, "src": "all", "table": "default"}]
MAIN = [
    {"family": "inet", "dst": "default", "gateway": "10.0.0.1", "dev": "wan0"},
    {"family": "inet", "dst": "10.0.0.0/24", "dev": "wan0", "scope": "link", "protocol": "kernel"},
    {"family": "inet", "dst": "10.0.1.0/24", "dev": "wan1", "scope": "link", "protocol": "kernel"},
    {"family": "inet", "dst": "192.168.1.0/24", "dev": "lan0", "scope": "link", "protocol": "kernel"},
] + [{"family": "inet", "type": "local", "dst": a, "dev": d, "table": "local"}
     for a, d in (("192.168.1.1", "lan0"), ("10.0.0.2", "wan0"), ("10.0.1.2", "wan1"), ("127.0.0.0/8", "lo"))]
SYSCTLS = {"net/ipv4/ip_forward": "1"}


def _match(key: Any, right: Any, op: str = "==") -> dict[str, Any]:
    return {"match": {"op": op, "left": key, "right": right}}


def filter_table(*rules: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """nftables.conf's `table inet filter` with a forward chain (policy drop) holding RULES."""
    objects: list[dict[str, Any]] = [
        {"table": {"family": "inet", "name": "filter", "handle": 1}},
        {"chain": {"family": "inet", "table": "filter", "name": "forward", "handle": 1, "type": "filter",
                   "hook": "forward", "prio": 0, "policy": "drop"}},
    ]
    for handle, expr in enumerate(rules, 2):
        objects.append({"rule": {"family": "inet", "table": "filter", "chain": "forward", "handle": handle,
                                 "expr": expr}})
    return objects


ESTABLISHED = [_match({"ct": {"key": "state"}}, ["established", "related"], "in"), {"accept": None}]


def out_of(interface: str) -> list[dict[str, Any]]:
    return [_match({"meta": {"key": "iifname"}}, "lan0"), _match({"meta": {"key": "oifname"}}, interface),
            {"accept": None}]


def findings(tmp_path: Path, foreign: list[dict[str, Any]], rules: tuple[dict[str, Any], ...] = (),
             routes: tuple[dict[str, Any], ...] = ()) -> list[Any]:
    snapshot, ours = snapshot_of(tmp_path, foreign, rules, routes)
    return inspect(sim.live(snapshot, SYSCTLS), ours, snapshot["nftables"])


def snapshot_of(tmp_path: Path, foreign: list[dict[str, Any]], rules: tuple[dict[str, Any], ...] = (),
                routes: tuple[dict[str, Any], ...] = (), main: list[dict[str, Any]] = MAIN, config: str = CONFIG,
                main_defaults: frozenset[tuple[int, str]] = frozenset()) -> tuple[dict[str, Any], Ours]:
    """A router's snapshot with markroute's plan installed beside FOREIGN objects, RULES and ROUTES
    (main's routes MAIN, whose default leaves by MAIN_DEFAULTS as `resolve` is told)."""
    path = tmp_path / "markroute.yaml"
    path.write_text(config)
    model, diagnostics = load_model(str(path))
    assert model is not None, diagnostics
    plan = compile_plan(model)
    connected = tuple(Route(4, 254, r["dst"], r["dev"], None, "link") for r in main if r.get("protocol") == "kernel")
    addresses = {name: tuple((4, a.split("/")[0]) for a in link["addresses"]) for name, link in LINKS.items()}
    own_rules, own_routes = resolve(plan, LinkState(addresses, connected, main_defaults))
    snapshot = {
        "nftables": {"nftables": foreign + plan.nft_document()["nftables"]},
        "rules": KERNEL_RULES + list(rules) + [dict(r.to_json(), family=FAMILY_NAMES[r.version]) for r in own_rules],
        "routes": main + list(routes) + [dict(r.to_json(), family=FAMILY_NAMES[r.version]) for r in own_routes],
        "links": LINKS,
    }
    ours = Ours(plan.table_name, plan.mask, frozenset(range(plan.rule_priority, plan.rule_priority + BAND_WIDTH)),
                plan.uplinks)
    return snapshot, ours


# -- paths through a foreign firewall --------------------------------------------------


def test_a_forward_drop_of_markroutes_uplink_is_named(tmp_path: Path) -> None:
    found = findings(tmp_path, filter_table(ESTABLISHED, out_of("wan0")))
    dropped = [f for f in found if f.direction == "original"]
    assert dropped, found
    assert {(f.kind, f.table, f.chain, f.rule) for f in dropped} == {("drop", "inet filter", "forward", None)}
    assert "web-via-isp1" in dropped[0].message and "wan1" in dropped[0].message
    assert "nft insert rule inet filter forward iifname lan0 oifname wan1 accept" in dropped[0].hint


def test_replies_without_an_established_rule_are_named(tmp_path: Path) -> None:
    found = findings(tmp_path, filter_table(out_of("wan0"), out_of("wan1")))
    assert {(f.kind, f.direction, f.chain) for f in found} == {("drop", "reply", "forward")}, found
    assert "iifname wan1 oifname lan0 ct state established,related accept" in found[0].hint


def test_a_firewall_that_lets_markroutes_paths_through_is_quiet(tmp_path: Path) -> None:
    assert findings(tmp_path, filter_table(ESTABLISHED, out_of("wan0"), out_of("wan1"))) == []


def test_a_reject_rule_is_a_reject(tmp_path: Path) -> None:
    reject = [_match({"meta": {"key": "oifname"}}, "wan1"), {"reject": None}]
    found = findings(tmp_path, filter_table(ESTABLISHED, reject, out_of("wan1")))
    assert [(f.kind, f.rule) for f in found if f.direction == "original"] == [("reject", 'oifname "wan1" reject')]


@pytest.mark.parametrize("default_dev, source", [("wan0", "10.0.0.2"), ("wan1", "10.0.1.2")])
def test_the_routers_own_connections_come_from_the_source_an_unbound_socket_gets(
        tmp_path: Path, default_dev: str, source: str) -> None:
    """The kernel picks a socket's source from main's route with no source (no `from` rule can
    match), and markroute writes no `from` rule for that interface's address: so the probe of
    traffic the router opens reaches the policy whichever uplink main's default leaves by.
    (From the first uplink's address, with main's default via wan1, the probe was pinned to
    isp0 by its `from` rule and never reached a policy.)"""
    gateway = {"wan0": "10.0.0.1", "wan1": "10.0.1.1"}[default_dev]
    main = [dict(r, gateway=gateway, dev=default_dev) if r["dst"] == "default" else r for r in MAIN]
    config = CONFIG.replace("{name: web-via-isp1, from: 192.168.1.0/24, proto: tcp, dport: 443, via: isp1}",
                            "{name: doc-via-isp1, to: 203.0.113.0/24, via: isp1}")
    snapshot, ours = snapshot_of(tmp_path, [], main=main, config=config,
                                 main_defaults=frozenset({(4, default_dev)}))
    local = [p for p in probes(sim.live(snapshot, SYSCTLS), ours, snapshot["nftables"]) if p.flow.local]
    assert [p.what for p in local] == ["policy doc-via-isp1"]
    assert local[0].flow.src == int(ipaddress.ip_address(source))


def test_an_ip_rule_before_markroutes_band_that_takes_its_traffic_is_named(tmp_path: Path) -> None:
    vpn = {"family": "inet", "priority": 9999, "not": None, "src": "all", "fwmark": "0xca6c", "table": "51820"}
    tunnel = {"family": "inet", "dst": "default", "dev": "lan0", "table": "51820"}  # any other interface will do
    assert findings(tmp_path, [], (vpn,)) == []  # table 51820 is empty: the rule falls through
    found = findings(tmp_path, [], (vpn,), (tunnel,))
    reroutes = [f for f in found if f.kind == "reroute"]
    assert reroutes and all(f.rule == "9999: not from all fwmark 0xca6c lookup 51820" for f in reroutes), found
    assert "settings.rule_priority below 9999" in reroutes[0].hint


VPN = {"family": "inet", "priority": 9999, "not": None, "src": "all", "fwmark": "0xca6c", "table": "51820"}
TUNNEL = {"family": "inet", "dst": "default", "dev": "lan0", "table": "51820"}
UNHOOKED = [{"table": {"family": "inet", "name": "spare", "handle": 2}},
            {"chain": {"family": "inet", "table": "spare", "name": "unused", "handle": 1}},
            {"rule": {"family": "inet", "table": "spare", "chain": "unused", "handle": 2, "expr": [{"drop": None}]}}]


@pytest.mark.parametrize(("foreign", "rules", "routes", "touched"), [
    ([], (), (), False),
    (UNHOOKED, (), (), False),  # a chain no hook leads to drops nothing
    ([], (), (TUNNEL,), False),  # a route no rule leads to
    (filter_table(ESTABLISHED, out_of("wan0")), (), (), True),
    (filter_table(ESTABLISHED, out_of("wan0"), out_of("wan1")), (), (), True),
    ([], (VPN,), (TUNNEL,), True),
    ([], (VPN,), (), True),
], ids=["alone", "unhooked-table", "foreign-route", "dropping-firewall", "open-firewall", "vpn", "vpn-empty"])
def test_the_simulation_is_skipped_only_where_nothing_foreign_can_touch_a_path(
    tmp_path: Path, foreign: list[dict[str, Any]], rules: tuple[dict[str, Any], ...],
    routes: tuple[dict[str, Any], ...], touched: bool,
) -> None:
    """`foreign_hands` says when the neighbour check may skip the simulation (seconds for
    10,000 policies); where it does, the simulation would have found nothing either."""
    snapshot, ours = snapshot_of(tmp_path, foreign, rules, routes)
    assert foreign_hands(snapshot, ours) is touched
    if not touched:
        assert inspect(sim.live(snapshot, SYSCTLS), ours, snapshot["nftables"]) == []


# -- fwmark rules without a mask -------------------------------------------------------

OURS = Ours("markroute", 0xFF00, frozenset({10000, 10001, 10002}), ())


@pytest.mark.parametrize(("rule", "warned"), [
    ({"priority": 9999, "not": None, "src": "all", "fwmark": "0xca6c", "table": "51820"}, True),  # wg-quick after us
    ({"priority": 32765, "not": None, "src": "all", "fwmark": "0xca6c", "table": "51820"}, False),  # after our band
    ({"priority": 5210, "src": "all", "fwmark": "0x80000", "fwmask": "0xff0000", "table": "main"}, False),  # masked
    ({"priority": 100, "src": "all", "fwmark": "0x1", "table": "7"}, False),  # whole mark, but none of our bits
    ({"priority": 100, "src": "all", "fwmark": "0x4200", "table": "7"}, True),  # whole mark, our bits in it
    ({"priority": 100, "src": "all", "fwmark": "0x200", "table": "7", "protocol": "77"}, False),  # ours
])
def test_fwmark_rules_without_a_mask(rule: dict[str, Any], warned: bool) -> None:
    found = unmasked_fwmark_rules([dict(rule, family="inet")], OURS)
    assert bool(found) == warned, found
    if found and "not" in rule:
        assert "(wg-quick)" in found[0].message and "every packet markroute marks" in found[0].message


# -- networkd --------------------------------------------------------------------------


def _write(root: Path, relative: str, text: str) -> None:
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def _enable(root: Path) -> None:
    wants = root / "etc/systemd/system/multi-user.target.wants"
    wants.mkdir(parents=True)
    (wants / networkd.ENABLED_UNIT).symlink_to("/lib/systemd/system/systemd-networkd.service")


def test_networkd_not_in_use_is_no_concern(tmp_path: Path) -> None:
    assert networkd.warning(tmp_path) is None


def test_networkd_default_deletes_foreign_rules(tmp_path: Path) -> None:
    _enable(tmp_path)
    found = networkd.warning(tmp_path)
    assert found is not None and "(its default)" in found[0]
    assert "ManageForeignRoutingPolicyRules=no" in found[1] and networkd.DROP_IN in found[1]


def test_networkd_setting_and_drop_in_precedence(tmp_path: Path) -> None:
    (tmp_path / "run/systemd/netif/links").mkdir(parents=True)  # running
    _write(tmp_path, "usr/lib/systemd/networkd.conf", "[Network]\nManageForeignRoutingPolicyRules=no\n")
    assert networkd.warning(tmp_path) is None
    _write(tmp_path, "usr/lib/systemd/networkd.conf.d/50-vendor.conf", "[Network]\nManageForeignRoutingPolicyRules=yes\n")
    found = networkd.warning(tmp_path)
    assert found is not None and "50-vendor.conf" in found[0]
    _write(tmp_path, "etc/systemd/networkd.conf.d/50-vendor.conf", "# masked\n")  # same name in /etc hides it
    assert networkd.warning(tmp_path) is None
    _write(tmp_path, "etc/systemd/networkd.conf.d/90-local.conf", "[Network]\nManageForeignRoutingPolicyRules=true\n")
    assert networkd.warning(tmp_path) is not None
    _write(tmp_path, "run/systemd/networkd.conf.d/95-markroute.conf", "[Network]\nManageForeignRoutingPolicyRules=off\n")
    assert networkd.warning(tmp_path) is None


def test_networkd_root_comes_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(networkd.ROOT_VARIABLE, str(tmp_path))
    assert networkd.root() == tmp_path


# -- how a sysctl goes back ------------------------------------------------------------


@pytest.mark.parametrize(("path", "original", "applied", "current", "rollback", "action"), [
    ("net/ipv4/conf/wan0/rp_filter", "0", "2", "2", False, "restore"),  # still ours
    ("net/ipv4/conf/wan0/rp_filter", "0", "2", "1", False, "keep"),  # someone changed it since
    ("net/ipv4/conf/wan0/rp_filter", "0", "2", "0", False, "nothing"),  # already back
    ("net/ipv4/ip_forward", "0", "1", "1", False, "keep"),  # forwarding is never turned off again
    ("net/ipv6/conf/all/forwarding", "0", "1", "1", False, "keep"),
    ("net/ipv4/conf/wan0/forwarding", "0", "1", "1", False, "keep"),
    ("net/ipv4/ip_forward", "0", "1", "1", True, "restore"),  # but a failed apply's rollback undoes its own write
    ("net/ipv4/ip_forward", "1", "0", "0", False, "restore"),  # turning it back on is always fine
])
def test_sysctl_restore_decisions(path: str, original: str, applied: str, current: str, rollback: bool,
                                  action: str) -> None:
    decision = restore.decide(path, original, applied, current, rollback)
    assert decision.action == action, decision
    if action == "keep" and "forward" in path:
        assert f"sysctl -w {path.replace('/', '.')}=0" in (decision.message or "")


# -- who removed markroute's rules ---------------------------------------------------------


def _proc(root: Path, port: int, inode: str, pid: int | None, comm: str = "systemd-network") -> Path:
    (root / "net").mkdir(parents=True, exist_ok=True)
    header = "sk               Eth Pid        Groups   Rmem     Wmem     Dump  Locks    Drops    Inode\n"
    (root / "net/netlink").write_text(header + f"0000000000000000 0   {port} 00000000 0 0 0 2 0 {inode}\n")
    if pid is not None:
        (root / str(pid) / "fd").mkdir(parents=True)
        (root / str(pid) / "comm").write_text(comm + "\n")
        os.symlink(f"socket:[{inode}]", root / str(pid) / "fd" / "3")
    return root


def test_the_sender_of_a_removal_is_named_by_its_socket(tmp_path: Path) -> None:
    proc = _proc(tmp_path, 4711, "99", 321)
    assert churn.sender(4711, proc) == "systemd-network (pid 321)"
    assert churn.sender(0, proc).startswith("the kernel")
    assert churn.sender(5000, proc) == "netlink port 5000 (the process has exited)"


def test_each_removal_is_logged_once_and_repeats_are_summed_up(caplog: pytest.LogCaptureFixture) -> None:
    now = [0.0]
    log = churn.ChurnLog(logging.getLogger("test.churn"), clock=lambda: now[0])
    with caplog.at_level(logging.WARNING, "test.churn"):
        log.note("systemd-network (pid 321)", "ip rule 10000: fwmark 0x200/0xff00 lookup 100")
        log.note("systemd-network (pid 321)", "ip rule 10000: fwmark 0x300/0xff00 lookup 101")
        for _ in range(50):
            log.note("systemd-network (pid 321)", "ip rule 10000: fwmark 0x200/0xff00 lookup 100")
            now[0] += 0.1
    messages = [r.getMessage() for r in caplog.records]
    assert sum("removed markroute's" in m for m in messages) == 2
    assert sum("more times" in m for m in messages) == 1  # 50 repeats within 5 s: one summary


def test_only_markroutes_removed_rules_and_routes_are_noticed() -> None:
    from pyroute2.netlink.rtnl.fibmsg import fibmsg
    from pyroute2.netlink.rtnl.rtmsg import rtmsg

    rule = fibmsg()
    rule["family"], rule["action"], rule["table"], rule["event"] = 2, 1, 100, "RTM_DELRULE"
    rule["attrs"] = [("FRA_PROTOCOL", 77), ("FRA_PRIORITY", 10000), ("FRA_FWMARK", 0x200), ("FRA_FWMASK", 0xFF00),
                     ("FRA_TABLE", 100)]
    assert churn.removed(rule) == "ip rule 10000: fwmark 0x200/0xff00 lookup 100"
    rule["attrs"] = [("FRA_PROTOCOL", 3), ("FRA_PRIORITY", 5210), ("FRA_TABLE", 254)]  # someone else's
    assert churn.removed(rule) is None
    route = rtmsg()
    route["family"], route["proto"], route["dst_len"], route["table"], route["event"] = 2, 77, 0, 100, "RTM_DELROUTE"
    route["attrs"] = [("RTA_TABLE", 100), ("RTA_GATEWAY", "10.0.0.1")]
    assert churn.removed(route) == "route default table 100"
    route["proto"] = 2
    assert churn.removed(route) is None


def test_a_removal_by_markroute_itself_is_not_someone_elses() -> None:
    assert churn.own(os.getpid())
    assert churn.own(os.getpid() + (3 << 22))  # pyroute2's second socket of this process
    assert not churn.own(os.getpid() + 1)
