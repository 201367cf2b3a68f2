"""The HA lab of issue #17: keepalived + conntrackd keep connections alive across a router's death.

Proven first with a hand-written ruleset on both routers (markroute's own rules come
later): forwarded traffic only is NATed to the WAN virtual address, each new LAN
connection gets a ct mark naming its uplink (TCP via ISP 0, UDP via ISP 1), the mark
routes it. When the master loses all its links, the backup takes the addresses over and
commits the connection table conntrackd replicated; a long TCP connection and a UDP
stream must keep flowing with the same source address and port at the server, the TCP
connection must not be reset, and the new master must forward them on the committed
entries (no new connection of its own).
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from daemon_helpers import REPO, Flow, Running, _flow, python_env
from kernelhelp import KERNEL

from markroute.lab import Lab
from markroute.lab.ha import (
    HaLab,
    HaRouter,
    conntrackd_conf,
    ha_lab,
    keepalived_conf,
    kill_router,
    start_router,
    vrrp_role,
    wait_role,
)
from markroute.lab.ha_notify import HOLD_TABLE

PORT = 7000
#: ct marks of the hand-written ruleset: one per uplink, like markroute's.
MARKS = {0: 0x100, 1: 0x200}
#: Seconds the streams run; the master dies STREAM_KILL_AT seconds in.
STREAM_SECONDS = 12.0
STREAM_KILL_AT = 4.0
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


def start_flow(lab: Lab, ns: str, proto: str, host: str) -> Running:
    """daemon_helpers' flow meter in *ns*: one flow, a line every INTERVAL, answers timed."""
    argv = [
        sys.executable, str(REPO / "tests" / "daemon_helpers.py"), "flow", proto, host, str(PORT),
        "--interval", str(INTERVAL), "--duration", str(STREAM_SECONDS),
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
def test_connections_survive_master_death(lab: Lab, ha_workdir: Path) -> None:
    ha = ha_lab(lab, ha_workdir)
    r1, r2 = ha.routers
    for router in ha.routers:
        load_hand_rules(ha, router)
    start_router(ha, r1)
    wait_role(r1, "master")
    start_router(ha, r2)
    wait_role(r2, "backup")
    lab.serve_echo(ha.net, PORT)

    flows = {"tcp": start_flow(lab, ha.client, "tcp", ha.server), "udp": start_flow(lab, ha.client, "udp", ha.server)}
    time.sleep(STREAM_KILL_AT)
    synced = lab.run(r2.ns, ["conntrackd", "-C", str(r2.path("conntrackd.conf")), "-e"]).stdout
    killed = time.time()
    kill_router(ha, r1)
    takeover = wait_role(r2, "master")
    results: dict[str, Flow] = {proto: running.result() for proto, running in flows.items()}

    print(f"\nr2 external cache before the kill:\n{synced}")
    print(f"takeover (kill -> r2 master, commit done): {takeover:.2f} s")
    print(f"r2 notify steps:\n{r2.path('notify.log').read_text()}")
    for proto, flow in results.items():
        print(f"{proto}: gap {flow.gap(after=killed):.2f} s across the kill, {flow.sent} sent, "
              f"{len(flow.replies)} answers, server saw {flow.sources()} ports {flow.server_ports}, errors {flow.errors}")
    assert vrrp_role(r2) == "master"
    assert f"mark={MARKS[0]}" in synced and f"mark={MARKS[1]}" in synced, "conntrackd did not carry the marks"
    for proto, uplink in (("tcp", 0), ("udp", 1)):
        flow = results[proto]
        assert not flow.errors, f"{proto} flow broke: {flow.errors}"
        # One NAT binding for the whole run: the WAN VIP of the marked uplink, one port.
        assert flow.sources() == {ha.wan_vips[uplink]} and len(flow.server_ports) == 1, flow
        # Answers kept coming after the kill, with a bounded interruption.
        assert flow.answered_between(killed + 0.1, float("inf")) > 0, flow
        assert flow.gap(after=killed) < 10.0
    assert not lab.run(r2.ns, ["nft", "list", "table", "inet", HOLD_TABLE], check=False).returncode == 0
    # r2 forwarded both flows on the committed entries: it admitted no new LAN connection.
    assert lab.nft_counter(r2.ns, "inet", "halab", "new_lan") == 0
