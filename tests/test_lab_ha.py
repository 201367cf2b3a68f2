"""The HA lab of issue #17: keepalived + conntrackd keep connections alive across a router's death.

Proven first with a hand-written ruleset on both routers: forwarded traffic only is
NATed to the WAN virtual address, each new LAN connection gets a ct mark naming its
uplink (TCP via ISP 0, UDP via ISP 1), the mark routes it. When the master loses all its
links, the backup takes the addresses over and commits the connection table conntrackd
replicated; a long TCP connection and a UDP stream must keep flowing with the same
source address and port at the server, the TCP connection must not be reset, and the
new master must forward them on the committed entries (no new connection of its own).

Then markroute itself on both routers: with a plain config (`nat: {snat: VIP}`) its SNAT
leaves the routers' own packets (VRRP adverts, probes) alone; with the README's HA pair
(examples/ha: `settings.ha`, keepalived's hook `markroute ha`) a router that loses LAN and
WAN but keeps the sync link leaves its connections to the peer (tests/test_ha_pair.py has
the rest of issue #17).
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import pytest
from conftest import MarkrouteCli, PacketCounters
from daemon_helpers import REPO, DaemonLab, Flow, Running, _flow, python_env
from kernelhelp import KERNEL, write_config

from markroute.compile import compile_plan
from markroute.config import load_model
from markroute.lab import Lab
from markroute.lab.ha import (
    HaLab,
    HaRouter,
    committed_entries,
    conntrackd_conf,
    example_conntrackd_conf,
    example_keepalived_conf,
    example_markroute_yaml,
    ha_lab,
    keepalived_conf,
    kill_router,
    notify_steps,
    revive_router,
    start_router,
    stop_router,
    vrrp_role,
    wait_role,
)
from markroute.lab.ha_notify import HOLD_TABLE
from markroute.plan import Plan

PORT = 7000
#: ct marks of the hand-written ruleset: one per uplink, like markroute's.
MARKS = {0: 0x100, 1: 0x200}
#: Seconds the streams run; the master dies STREAM_KILL_AT seconds in.
STREAM_SECONDS = 9.0
STREAM_KILL_AT = 2.5
INTERVAL = 0.02


def hand_ruleset(ha: HaLab) -> str:
    """NAT to the WAN VIP for forwarded traffic only; a ct mark per uplink; no mid-stream pickup.

    The snat rules match ``iifname "lan0"``: in postrouting only forwarded
    packets have an input interface, so the router's own packets (VRRP
    adverts, probes) keep their own source address.  The forward chain
    accepts a new TCP connection only on a SYN: a mid-stream packet without a
    committed entry is dropped instead of being picked up as a fresh
    connection, so surviving TCP proves the state was synced.
    """
    snat = "".join(
        f'        iifname "lan0" oifname "wan{i}" snat ip to {vip}\n' for i, vip in enumerate(ha.wan_vips)
    )
    return f"""
table inet halab {{
    counter new_lan {{}}
    chain prerouting {{
        type filter hook prerouting priority mangle; policy accept;
        iifname "lan0" ct state new meta l4proto tcp ct mark set {MARKS[0]:#x}
        iifname "lan0" ct state new meta l4proto udp ct mark set {MARKS[1]:#x}
        iifname "lan0" meta mark set ct mark
    }}
    chain forward {{
        type filter hook forward priority filter; policy drop;
        ct state established,related accept
        iifname "lan0" ct state new tcp flags & (fin|syn|rst|ack) == syn counter name new_lan accept
        iifname "lan0" ct state new meta l4proto {{ udp, icmp }} counter name new_lan accept
    }}
    chain postrouting {{
        type nat hook postrouting priority srcnat; policy accept;
{snat}    }}
}}
"""


def load_hand_rules(ha: HaLab, router: HaRouter) -> None:
    """The hand-written ruleset plus one routing table per uplink, selected by the mark."""
    ha.lab.nft(router.ns, hand_ruleset(ha))
    for i, mark in MARKS.items():
        table = str(100 + i)
        ha.lab.ip(router.ns, "rule", "add", "fwmark", f"{mark:#x}/0xff00", "table", table, "priority", "1000")
        ha.lab.ip(router.ns, "route", "add", "default", "via", ha.isp_gw_v4[i], "dev", f"wan{i}", "table", table)


def start_flow(lab: Lab, ns: str, proto: str, host: str, seconds: float = STREAM_SECONDS) -> Running:
    """daemon_helpers' flow meter in *ns*: one flow, a line every INTERVAL, answers timed."""
    argv = [
        sys.executable, str(REPO / "tests" / "daemon_helpers.py"), "flow", proto, host, str(PORT),
        "--interval", str(INTERVAL), "--duration", str(seconds),
    ]  # fmt: skip
    return Running(lab.spawn(ns, argv, stdout=subprocess.PIPE, env=python_env()), _flow)


@pytest.fixture
def ha_workdir() -> Iterator[Path]:
    """A short folder for the daemons' files: a unix socket path must fit in 108 bytes."""
    with tempfile.TemporaryDirectory(prefix="mrha-") as folder:
        yield Path(folder)


@KERNEL
def test_configs_name_the_pair_and_private_paths(lab: Lab, ha_workdir: Path) -> None:
    """keepalived: one sync group over LAN and WAN instances calling the notify script;
    conntrackd: FTFW over the sync link, UDP and ICMP too, files under the workdir."""
    ha = ha_lab(lab, ha_workdir)
    r1, r2 = ha.routers
    keepalived = keepalived_conf(ha, r1, 0.1)
    assert "group { lan wan0 wan1 }" in keepalived
    assert keepalived.count("advert_int 0.1") == 3
    assert f"{ha.lan_vip}/24 dev lan0" in keepalived and f"{ha.wan_vips[1]}/24 dev wan1" in keepalived
    for state in ("master", "backup", "fault"):
        assert f"markroute.lab.ha_notify {state} --conntrackd-conf {r1.path('conntrackd.conf')}" in keepalived
    assert f"priority {r1.priority}" in keepalived and r1.priority > r2.priority
    conntrackd = conntrackd_conf(ha, r2)
    assert "Mode FTFW" in conntrackd
    assert f"IPv4_address {r2.sync_v4}" in conntrackd
    assert f"IPv4_Destination_Address {r1.sync_v4}" in conntrackd
    assert all(f"            {proto}\n" in conntrackd for proto in ("TCP", "UDP", "ICMP"))
    assert f"Path {r2.path('conntrackd.ctl')}" in conntrackd
    assert f"LockFile {r2.path('conntrackd.lock')}" in conntrackd
    assert "/run" not in conntrackd and "/var" not in conntrackd


@KERNEL
def test_router_daemons_start_and_stop(lab: Lab, ha_workdir: Path) -> None:
    """Alone, r1 becomes master and holds every VIP; stopped, its daemons are gone and so are the VIPs."""
    ha = ha_lab(lab, ha_workdir)
    r1 = ha.routers[0]

    def vips() -> set[str]:
        shown = lab.run(r1.ns, ["ip", "-4", "-o", "addr", "show"]).stdout
        return {vip for vip in (ha.lan_vip, *ha.wan_vips) if f" {vip}/" in shown}

    daemons = start_router(ha, r1)
    wait_role(r1, "master")
    assert vips() == {ha.lan_vip, *ha.wan_vips}
    assert lab.run(r1.ns, ["nft", "list", "table", "inet", HOLD_TABLE], check=False).returncode != 0
    stop_router(ha, daemons)
    assert daemons.keepalived.poll() is not None and daemons.conntrackd.poll() is not None
    assert vips() == set()


@dataclass(frozen=True)
class Failover:
    """What one master death looked like from the flows and the new master."""

    flows: dict[str, Flow]
    killed: float
    takeover: float
    #: r2's external cache just before the kill (`conntrackd -e`).
    synced: str

    def report(self, ha: HaLab) -> None:
        r2 = ha.routers[1]
        print(f"\nr2 external cache before the kill:\n{self.synced}")
        print(f"takeover (kill -> r2 master, commit done): {self.takeover:.2f} s")
        print(f"r2 commits: {committed_entries(r2)}; notify steps:\n{notify_steps(r2)}")
        for proto, flow in self.flows.items():
            print(f"{proto}: gap {flow.gap(after=self.killed):.2f} s across the kill, {flow.sent} sent, "
                  f"{len(flow.replies)} answers, server saw {flow.sources()} ports {flow.server_ports}, "
                  f"errors {flow.errors}")

    def assert_kept(self, ha: HaLab, uplinks: Mapping[str, int]) -> None:
        """Every flow lived through the kill on one NAT binding: its uplink's VIP, one port."""
        for proto, uplink in uplinks.items():
            flow = self.flows[proto]
            assert not flow.errors, f"{proto} flow broke: {flow.errors}"
            assert flow.sources() == {ha.wan_vips[uplink]} and len(flow.server_ports) == 1, flow
            # Answers kept coming after the kill, with a bounded interruption.
            assert flow.answered_between(self.killed + 0.1, float("inf")) > 0, flow
            assert flow.gap(after=self.killed) < 10.0


def example_config(router: HaRouter) -> Path:
    """Where `write_example_config` puts *router*'s copy of examples/ha/markroute.yaml."""
    return router.path("markroute.yaml")


def write_example_config(router: HaRouter) -> Path:
    """examples/ha/markroute.yaml for *router*: only the conntrackd config path is the lab's."""
    path = example_config(router)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(example_markroute_yaml(router))
    return path


def start_pair(ha: HaLab, markroute: bool = False, advert_interval: float = 0.2) -> None:
    """keepalived and conntrackd on both routers: r1 master, r2 backup; an echo server in net.

    *markroute*: the README's example configs, keepalived's hook is `markroute ha` with
    the config `example_config` wrote for each router (markroute must be applied or run).
    """
    r1, r2 = ha.routers
    start_router(ha, r1, advert_interval, example_config(r1) if markroute else None)
    wait_role(r1, "master")
    start_router(ha, r2, advert_interval, example_config(r2) if markroute else None)
    wait_role(r2, "backup")
    ha.lab.serve_echo(ha.net, PORT)


def fail_over(ha: HaLab, sync: bool = True, seconds: float = STREAM_SECONDS) -> Failover:
    """Run a TCP and a UDP flow from the LAN, take r1's links down mid-way, wait for r2."""
    lab, (r1, r2) = ha.lab, ha.routers
    running = {proto: start_flow(lab, ha.client, proto, ha.server, seconds) for proto in ("tcp", "udp")}
    time.sleep(STREAM_KILL_AT)
    synced = lab.run(r2.ns, ["conntrackd", "-C", str(r2.path("conntrackd.conf")), "-e"]).stdout
    killed = time.time()
    kill_router(ha, r1, sync=sync)
    takeover = wait_role(r2, "master")
    flows = {proto: meter.result() for proto, meter in running.items()}
    result = Failover(flows, killed, takeover, synced)
    result.report(ha)
    return result


def markroute_config(ha: HaLab, check: bool = False) -> str:
    """Today's way to say it: SNAT to each WAN VIP; UDP via ISP 1, the rest via ISP 0."""
    probe = "    check: {interval: 0.1, timeout: 0.2, down: 4, up: 5}\n" if check else ""
    uplinks = "".join(
        f"  isp{i}:\n    interface: wan{i}\n    gateway: {gateway}\n    nat: {{snat: {vip}}}\n{probe}"
        for i, (gateway, vip) in enumerate(zip(ha.isp_gw_v4, ha.wan_vips, strict=True))
    )
    return f"uplinks:\n{uplinks}policies:\n  - {{name: udp, proto: udp, via: isp1}}\n  - {{name: rest, via: isp0}}\n"


@pytest.fixture
def markroute_run(lab: Lab, ha_workdir: Path) -> Iterator[Callable[..., list[DaemonLab]]]:
    """Start `markroute run` in both routers of a pair (daemon_helpers' DaemonLab, one per router).

    Each is killed and `markroute down` is run at teardown, whatever happened.
    """
    started: list[DaemonLab] = []

    def start(ha: HaLab, example: bool = False) -> list[DaemonLab]:
        config = Path(write_config(ha_workdir, markroute_config(ha, check=True)))
        for router in ha.routers:
            folder = ha_workdir / f"{router.name}-markroute"
            folder.mkdir()
            daemon = DaemonLab(SimpleNamespace(rtr=router.ns), folder)
            started.append(daemon)
            daemon.start(write_example_config(router) if example else config)
        return started

    try:
        yield start
    finally:
        for daemon in started:
            daemon.close()


@KERNEL
def test_connections_survive_master_death(lab: Lab, ha_workdir: Path) -> None:
    ha = ha_lab(lab, ha_workdir)
    r1, r2 = ha.routers
    for router in ha.routers:
        load_hand_rules(ha, router)
    start_pair(ha)
    failover = fail_over(ha)
    assert vrrp_role(r2) == "master"
    assert f"mark={MARKS[0]}" in failover.synced and f"mark={MARKS[1]}" in failover.synced, "marks not synced"
    failover.assert_kept(ha, {"tcp": 0, "udp": 1})
    assert lab.run(r2.ns, ["nft", "list", "table", "inet", HOLD_TABLE], check=False).returncode != 0
    # r2 forwarded both flows on the committed entries: it admitted no new LAN connection.
    assert committed_entries(r2)[-1] >= 2
    assert lab.nft_counter(r2.ns, "inet", "halab", "new_lan") == 0


@KERNEL
@pytest.mark.parametrize(
    "liberal",
    [
        pytest.param(False, marks=pytest.mark.xfail(
            strict=False, raises=AssertionError,
            reason="the returning master's stale TCP entry resets the connection (5 of 5 runs measured; a lucky "
                   "retransmission timing can let one through, so not strict)",
        )),
        True,
    ],
    ids=["window-tracking", "be-liberal"],
)  # fmt: skip
def test_connections_survive_failback(lab: Lab, ha_workdir: Path, liberal: bool) -> None:
    """r1 dies, r2 takes over, r1 comes back 2.5 s later and preempts: both flows must live on.

    r1 still holds its own conntrack entries from before its death (the fault step's
    `conntrackd -t` purges them only after PurgeTimeout, 60 s). Committing r2's copy
    updates them but not their TCP window, so the server's segments are out of window
    for r1's conntrack: INVALID, they are not de-NATed, reach r1's own stack at the
    VIP and are answered with a reset. With nf_conntrack_tcp_be_liberal=1 on the
    routers the connection survives.
    """
    ha = ha_lab(lab, ha_workdir)
    r1, r2 = ha.routers
    for router in ha.routers:
        load_hand_rules(ha, router)
        lab.sysctl(router.ns, "net.netfilter.nf_conntrack_tcp_be_liberal", int(liberal))
    start_pair(ha)
    running = {proto: start_flow(lab, ha.client, proto, ha.server, seconds=13.0) for proto in ("tcp", "udp")}
    time.sleep(STREAM_KILL_AT)
    kill_router(ha, r1)
    wait_role(r2, "master")
    time.sleep(2.5)
    revived = time.time()
    revive_router(ha, r1)
    for i, gateway in enumerate(ha.isp_gw_v4):  # the routes load_hand_rules added went with the links
        lab.ip(r1.ns, "route", "add", "default", "via", gateway, "dev", f"wan{i}", "table", str(100 + i))
    wait_role(r1, "master")
    flows = {proto: meter.result() for proto, meter in running.items()}
    for proto, flow in flows.items():
        print(f"\n{proto}: gap {flow.gap(after=revived):.2f} s across the failback, "
              f"{flow.answered_between(revived, float('inf'))} answers after it, errors {flow.errors}")
    assert committed_entries(r1)[-1] >= 2
    Failover(flows, revived, 0.0, "").assert_kept(ha, {"tcp": 0, "udp": 1})


@KERNEL
def test_markroute_apply_on_both_routers_keeps_connections(
    lab: Lab, ha_workdir: Path, markroute_cli: MarkrouteCli
) -> None:
    """markroute's ruleset restores the synced ct mark, so committed flows keep uplink and NAT binding."""
    ha = ha_lab(lab, ha_workdir)
    for router in ha.routers:
        markroute_cli.apply(router.ns, markroute_config(ha))
    start_pair(ha)
    failover = fail_over(ha)
    assert committed_entries(ha.routers[1])[-1] >= 2
    failover.assert_kept(ha, {"tcp": 0, "udp": 1})


@KERNEL
def test_markroute_snat_leaves_the_routers_own_packets_alone(
    lab: Lab,
    ha_workdir: Path,
    markroute_cli: MarkrouteCli,
    packet_counters: Callable[[str, str, Mapping[str, str]], PacketCounters],
) -> None:
    """VRRP adverts on a WAN segment must carry the sender's own address, before and after a takeover.

    Were `snat ip to VIP` applied to the router's own packets, the master's adverts
    would reach the ISP with the VIP as source, and after a takeover the new master's
    adverts, NATed to the VIP too, would clash with the conntrack entry of the old
    master's (same addresses, no ports to tell them apart): NAT drops every one and
    keepalived logs "send advert error 1 (Operation not permitted)". markroute's snat
    applies to forwarded packets; the router's own are masqueraded to its own address.
    """
    ha = ha_lab(lab, ha_workdir)
    r1, r2 = ha.routers
    seen = packet_counters(ha.isps[0], "prerouting", {
        "from_vip": f"ip protocol 112 ip saddr {ha.wan_vips[0]}",
        "from_r1": f"ip protocol 112 ip saddr {r1.wan_v4[0]}",
        "from_r2": f"ip protocol 112 ip saddr {r2.wan_v4[0]}",
        "any": "ip protocol 112",
    })  # fmt: skip
    for router in ha.routers:
        markroute_cli.apply(router.ns, markroute_config(ha))
    start_pair(ha)
    time.sleep(1.0)
    before = {name: seen[name] for name in ("from_vip", "from_r1", "from_r2", "any")}
    kill_router(ha, r1)
    wait_role(r2, "master")
    time.sleep(1.0)
    after = {name: seen[name] - count for name, count in before.items()}
    refused = r2.path("keepalived.out").read_text().count("send advert error")
    print(f"\nVRRP adverts at isp0 while r1 is master: {before}; after r2 took over: {after}")
    print(f"r2's keepalived could not send {refused} adverts")
    assert before["from_vip"] == 0 and before["from_r1"] > 0
    assert after["from_r2"] > 0 and refused == 0


@KERNEL
def test_markroute_run_standby_keeps_its_uplinks_up(
    lab: Lab, ha_workdir: Path, markroute_run: Callable[..., list[DaemonLab]]
) -> None:
    """The backup's daemon must judge its uplinks by probes it can get answers to.

    Were its probes SNATed to the VIP the master holds, the answers would go there and
    the backup would hold every uplink down for as long as it is backup (at takeover
    its policies would fall back to main until 5 probes passed).
    """
    ha = ha_lab(lab, ha_workdir)
    daemons = markroute_run(ha)
    start_pair(ha)
    master, backup = daemons
    master.wait_states({"isp0": "up", "isp1": "up"})
    time.sleep(2.0)
    print(f"\nuplinks: master {master.states()}, backup {backup.states()}")
    assert backup.states() == {"isp0": "up", "isp1": "up"}


@KERNEL
def test_markroute_run_partial_failure_keeps_the_peers_copy(
    lab: Lab, ha_workdir: Path, markroute_run: Callable[..., list[DaemonLab]]
) -> None:
    """A master that loses LAN and WAN but not the sync link must not take its flows' state along.

    Were its daemon to delete the conntrack entries of the uplinks it lost (by mark),
    conntrackd would replicate the deletions, r2's external cache would be empty at
    takeover and r2 would commit nothing: the flows would restart as new connections.
    With settings.ha the daemon deletes only while `markroute ha` says master.
    """
    ha = ha_lab(lab, ha_workdir)
    daemons = markroute_run(ha, example=True)
    start_pair(ha, markroute=True)
    failover = fail_over(ha, sync=False)
    assert committed_entries(ha.routers[1])[-1] >= 2
    failover.assert_kept(ha, {"tcp": 0, "udp": 1})
    left = [line for line in daemons[0].log().splitlines() if "left alone: this router is fault" in line]
    assert {"isp0", "isp1"} <= {word.strip(",") for line in left for word in line.split()}, daemons[0].log()
    assert "moved (master)" not in daemons[0].log()


# -- the README's HA pair: examples/ha on both routers ---------------------------------


def example_routers(workdir: Path) -> tuple[HaRouter, ...]:
    """The pair's routers as ha_lab makes them, without namespaces: for plan comparisons."""
    return tuple(
        HaRouter(k, f"r{k + 1}", f"192.168.1.{k + 2}", (f"10.0.0.{k + 3}", f"10.0.1.{k + 3}"), "", "", 200 - 100 * k,
                 workdir)
        for k in range(2)
    )


def plan_json(plan: Plan) -> str:
    return json.dumps(plan.to_json(), sort_keys=True)


def test_example_pair_compiles_one_plan_on_both_routers(tmp_path: Path) -> None:
    """Both routers' copies of examples/ha/markroute.yaml compile to the same plan, byte for byte:
    marks, tables, rule priorities, the hold, the sysctls; and compiling again changes nothing."""
    plans = []
    for router in example_routers(tmp_path):
        model, diagnostics = load_model(str(write_example_config(router)))
        assert model is not None, [d.render() for d in diagnostics]
        assert model.settings.ha is not None and model.settings.ha.conntrackd == str(router.path("conntrackd.conf"))
        plans.append(compile_plan(model))
        assert plan_json(compile_plan(model)) == plan_json(plans[-1])
    first, second = plans
    assert plan_json(first) == plan_json(second)
    assert [(u.name, u.mark, u.table) for u in first.uplinks] == [("isp0", 0x200, 100), ("isp1", 0x300, 101)]
    assert ("net/netfilter/nf_conntrack_tcp_be_liberal", "1") in {(s.path, s.value) for s in first.sysctls}
    chains = {o["chain"]["name"]: o["chain"] for o in first.nft if "chain" in o}
    assert (chains["ha_hold_forward"]["hook"], chains["ha_hold_input"]["hook"]) == ("forward", "input")
    held = {o["set"]["name"]: list(o["set"].get("elem", [])) for o in first.nft if "set" in o}
    assert held == {"ha_hold": [], "ha_hold6": []}, "the plan holds nothing: the role sets the hold"
    nat = [o["rule"] for o in first.nft if o.get("rule", {}).get("chain") == "postrouting"]
    assert [r["comment"] for r in nat] == ["nat isp0 own", "nat isp0", "nat isp1 own", "nat isp1"]
    assert {"masquerade": None} in nat[0]["expr"] and {"snat": {"family": "ip", "addr": "10.0.0.2"}} in nat[1]["expr"]


def test_example_keepalived_conf_serves_both_routers(tmp_path: Path) -> None:
    """One keepalived.conf: @r1/@r2 lines (keepalived's config id) carry the priorities; the lab
    changes only the hook's command and the advert interval."""
    r1, r2 = example_routers(tmp_path)
    text = example_keepalived_conf(r1, 0.1, Path("/cfg.yaml"))
    assert text == example_keepalived_conf(r2, 0.1, Path("/cfg.yaml"))
    assert text.count("@r1 priority 200") == 3 and text.count("@r2 priority 100") == 3
    assert text.count("advert_int 0.1\n") == 3
    assert f"notify_fault \"/usr/bin/env {sys.executable} -m markroute ha fault -c /cfg.yaml\"" in text
    assert "IPv4_address 10.254.0.2\n        IPv4_Destination_Address 10.254.0.1\n" in example_conntrackd_conf(r2)


def nft_held(lab: Lab, router: HaRouter) -> bool:
    """Whether markroute's hold is on in *router* (its ha_hold set holds every address)."""
    listing = lab.run(router.ns, ["nft", "-j", "list", "set", "inet", "markroute", "ha_hold"]).stdout
    return any(obj.get("set", {}).get("elem") for obj in json.loads(listing)["nftables"])


@KERNEL
def test_example_pair_keeps_flows_across_master_death(
    lab: Lab, ha_workdir: Path, markroute_run: Callable[..., list[DaemonLab]]
) -> None:
    """examples/ha with keepalived's 1 s adverts, `markroute run` on both routers: the master dies,
    a TCP and a UDP flow on different uplinks keep their NAT binding and are not reset; new
    connections after the takeover go out per the config; status shows the role and the sync."""
    ha = ha_lab(lab, ha_workdir)
    master, backup = markroute_run(ha, example=True)
    r1, r2 = ha.routers
    start_pair(ha, markroute=True, advert_interval=1.0)
    backup.wait_states({"isp0": "up", "isp1": "up"})
    assert (nft_held(lab, r1), nft_held(lab, r2)) == (False, True)
    failover = fail_over(ha, seconds=12.0)  # 1 s adverts: ~3.5 s to take over, TCP may back off to ~7 s
    failover.assert_kept(ha, {"tcp": 0, "udp": 1})
    assert committed_entries(r2)[-1] >= 2
    assert not nft_held(lab, r2)
    table = lab.run(r2.ns, ["conntrack", "-L"], check=False).stdout.splitlines()
    committed = {line.split()[0]: line for line in table if f"dport={PORT}" in line}
    assert "mark=512" in committed["tcp"] and "mark=768" in committed["udp"], "the committed entries keep their marks"
    for proto, flow in failover.flows.items():
        print(f"{proto}: gap {flow.gap(after=failover.killed):.2f} s with 1 s adverts")
    after = {proto: start_flow(lab, ha.client, proto, ha.server, seconds=1.0).result() for proto in ("tcp", "udp")}
    assert after["tcp"].sources() == {ha.wan_vips[0]} and after["udp"].sources() == {ha.wan_vips[1]}, after
    status = json.loads(lab.run(r2.ns, [sys.executable, "-m", "markroute", "status", "--json"],
                                env=python_env(), check=False).stdout)
    assert (status["ha"]["role"], status["ha"]["held"]) == ("master", False)
    assert status["drift"] == [], "the hold's state is the role, not drift"
    assert status["ha"]["sync"]["ok"] and status["ha"]["sync"]["counters"], status["ha"]
    assert [step["step"] for step in status["ha"]["steps"]] == ["-c", "-f internal", "-R", "-B"]


@KERNEL
def test_example_pair_keeps_flows_across_failback(
    lab: Lab, ha_workdir: Path, markroute_run: Callable[..., list[DaemonLab]]
) -> None:
    """r1 dies, r2 takes over, r1 returns and preempts: the flows live on (the config's
    settings.ha turns on liberal TCP window tracking, which the stale entries need)."""
    ha = ha_lab(lab, ha_workdir)
    daemons = markroute_run(ha, example=True)
    r1, r2 = ha.routers
    start_pair(ha, markroute=True)
    running = {proto: start_flow(lab, ha.client, proto, ha.server, seconds=13.0) for proto in ("tcp", "udp")}
    time.sleep(STREAM_KILL_AT)
    kill_router(ha, r1)
    wait_role(r2, "master")
    time.sleep(2.5)
    revived = time.time()
    revive_router(ha, r1)
    wait_role(r1, "master")
    daemons[0].wait_states({"isp0": "up", "isp1": "up"})
    flows = {proto: meter.result() for proto, meter in running.items()}
    for proto, flow in flows.items():
        print(f"\n{proto}: gap {flow.gap(after=revived):.2f} s across the failback, errors {flow.errors}")
    assert committed_entries(r1)[-1] >= 2
    Failover(flows, revived, 0.0, "").assert_kept(ha, {"tcp": 0, "udp": 1})


@KERNEL
def test_example_pair_standby_uplink_failure_changes_nothing(
    lab: Lab, ha_workdir: Path, markroute_run: Callable[..., list[DaemonLab]]
) -> None:
    """The standby loses an uplink: its daemon says so, the master's flows do not notice."""
    ha = ha_lab(lab, ha_workdir)
    master, backup = markroute_run(ha, example=True)
    r1, r2 = ha.routers
    start_pair(ha, markroute=True)
    running = {proto: start_flow(lab, ha.client, proto, ha.server, seconds=6.0) for proto in ("tcp", "udp")}
    time.sleep(2.0)
    cut = time.time()
    lab.ip(r2.ns, "link", "set", "wan1", "down")
    backup.wait_states({"isp0": "up", "isp1": "down"})
    flows = {proto: meter.result() for proto, meter in running.items()}
    assert master.states() == {"isp0": "up", "isp1": "up"}
    assert vrrp_role(r1) == "master"
    for proto, flow in flows.items():
        print(f"\n{proto}: longest gap {flow.gap(after=cut):.2f} s after the standby's wan1 went down")
        assert not flow.errors and len(flow.server_ports) == 1
        assert flow.gap(after=cut) < 1.0, "a flow through the master stalled"
    Failover(flows, cut, 0.0, "").assert_kept(ha, {"tcp": 0, "udp": 1})


@KERNEL
def test_the_hold_follows_the_role_across_applies(lab: Lab, ha_workdir: Path, markroute_cli: MarkrouteCli) -> None:
    """Without keepalived: apply holds (no role yet), `markroute ha master` lifts, a new table keeps
    the recorded role, `markroute ha backup` holds again; the hold really stops new connections
    through the router, and status calls none of it drift."""
    ha = ha_lab(lab, ha_workdir)
    r1 = ha.routers[0]
    for address, ifname in ((ha.lan_vip, "lan0"), (ha.wan_vips[0], "wan0"), (ha.wan_vips[1], "wan1")):
        lab.addr(r1.ns, ifname, f"{address}/24")
    config = example_markroute_yaml(r1).replace(f"conntrackd: {r1.path('conntrackd.conf')}", "{}").replace(
        "  ha:\n    {}", "  ha: {}")
    config_path = markroute_cli.write(config)

    def reaches() -> bool:
        return lab.run(ha.client, ["ping", "-c1", "-W1", ha.server], check=False).returncode == 0

    def hook(role: str) -> None:
        done = lab.run(r1.ns, [sys.executable, "-m", "markroute", "ha", role, "-c", config_path], env=python_env(),
                       check=False)
        assert done.returncode == 0 and f"role: {role}" in done.stdout, done

    markroute_cli.apply(r1.ns, config)
    assert nft_held(lab, r1) and not reaches()
    hook("master")
    assert not nft_held(lab, r1) and reaches()
    markroute_cli.down(r1.ns)
    markroute_cli.apply(r1.ns, config)
    assert nft_held(lab, r1), "down forgets the role: a fresh apply holds until the hook says master"
    hook("master")
    lab.nft(r1.ns, "delete table inet markroute")  # the next apply makes a new table, its sets empty
    markroute_cli.apply(r1.ns, config)
    assert not nft_held(lab, r1) and reaches()
    hook("backup")
    assert nft_held(lab, r1) and not reaches()
    status = json.loads(lab.run(r1.ns, [sys.executable, "-m", "markroute", "status", "--json"], env=python_env(),
                                check=False).stdout)
    assert (status["ha"]["role"], status["ha"]["held"], status["ha"]["sync"], status["drift"]) == (
        "backup", True, None, [])
