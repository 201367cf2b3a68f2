"""Fail-closed groups with real packets: a protected LAN host and the router's own traffic
to a tunnel-like uplink (a point-to-point veth without gateway) never leave through the
ISP, whatever happens to the tunnel, to the config or to the daemon.

The ISP namespaces count, at their prerouting hook, every packet of the protected
flows that arrives from the router (`PacketCounters`): isp0 (main's default route, the
only other uplink) must see none of them, ever; isp1 (the "tunnel") sees them while the
tunnel works.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import pytest
from conftest import PacketCounters
from daemon_helpers import SENDER, python_env
from kernelhelp import markroute

from markroute.kernel.state import directory
from markroute.lab import Lab, RouterLab, router_lab

HOST_PORT, ROUTER_PORT = 7777, 7778
SETTLE = 1.0  # seconds of sending after each step, at 100 datagrams a second



def config(router: RouterLab, extra: str = "") -> str:
    """isp (wan0, gateway) and vpn (wan1, point-to-point: tunnel-like); the LAN host and the
    router's traffic to the alternative server fail closed, one through a named group, one inline."""
    return router.uplinks_yaml(["isp", "vpn"]) + f"""
groups:
  safe:
    failover: [vpn, blackhole]
policies:
  - name: protected-host
    from: {router.client_v4}
    to: {router.server}
    via: safe
  - name: router-own
    local: true
    to: {router.server_alt}
    via: {{failover: [vpn, blackhole]}}
{extra}"""


def counters(lab: Lab, router: RouterLab, packet_counters: Callable[..., PacketCounters]) -> list[PacketCounters]:
    """Per ISP: the protected host's datagrams and the router's own, arriving from the router."""
    matches = {"host": f'iifname "down0" udp dport {HOST_PORT}', "router": f'iifname "down0" udp dport {ROUTER_PORT}'}
    return [packet_counters(isp, "prerouting", matches) for isp in router.isps]


def start_senders(lab: Lab, router: RouterLab, duration: float) -> list[subprocess.Popen[bytes]]:
    return [
        lab.spawn(router.lan, [sys.executable, "-c", SENDER, router.server, str(HOST_PORT), str(duration)]),
        lab.spawn(router.rtr, [sys.executable, "-c", SENDER, router.server_alt, str(ROUTER_PORT), str(duration)]),
    ]


def recreate_tunnel(lab: Lab, router: RouterLab) -> None:
    """wan1 as `router_lab(p2p=(1,))` builds it: a NOARP veth with /32 peer addresses."""
    mac = "02:00:00:00:01:01"
    lab.veth(router.isps[1], "down0", router.rtr, "wan1", mac_a=mac, mac_b=mac)
    for ns, ifname, local, peer in ((router.isps[1], "down0", 1, 2), (router.rtr, "wan1", 2, 1)):
        lab.ip(ns, "link", "set", ifname, "arp", "off")
        lab.ip(ns, "addr", "add", f"10.0.1.{local}", "peer", f"10.0.1.{peer}/32", "dev", ifname)


def write(tmp_path: Path, text: str, name: str) -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def applied(*args: str) -> None:
    proc = markroute(*args)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def grew(counter: PacketCounters, name: str, before: int) -> bool:
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        if counter[name] > before:
            return True
        time.sleep(0.1)
    return False


def no_leak(isp0: PacketCounters) -> None:
    assert (isp0["host"], isp0["router"]) == (0, 0), "protected traffic left through the ISP"


@pytest.fixture
def tunnel_lab(lab: Lab) -> RouterLab:
    return router_lab(lab, isps=2, p2p=(1,))


@pytest.mark.kernel
def test_fail_closed_with_apply_only(tunnel_lab: RouterLab, tmp_path: Path,
                                     packet_counters: Callable[..., PacketCounters]) -> None:
    r, lab = tunnel_lab, tunnel_lab.lab
    isp0, isp1 = counters(lab, r, packet_counters)
    first = write(tmp_path, config(r), "first.yaml")
    changed = write(tmp_path, config(r, "  - {name: other, to: 198.18.0.99, via: isp}\n"), "changed.yaml")
    try:
        applied("apply", "-c", first, "--netns", r.rtr)
        senders = start_senders(lab, r, duration=60)
        assert grew(isp1, "host", 0) and grew(isp1, "router", 0), "nothing went through the tunnel"

        lab.ip(r.rtr, "link", "set", "wan1", "down")  # the kernel drops the tunnel's default route
        time.sleep(SETTLE)
        no_leak(isp0)
        applied("apply", "-c", changed, "--netns", r.rtr)  # an apply while the tunnel is down
        time.sleep(SETTLE)
        no_leak(isp0)

        lab.ip(r.rtr, "link", "del", "wan1")  # deleted ...
        time.sleep(SETTLE)
        no_leak(isp0)
        recreate_tunnel(lab, r)  # ... and re-created: no route in its table until the next apply
        time.sleep(SETTLE)
        no_leak(isp0)
        before = isp1["host"], isp1["router"]
        applied("apply", "-c", changed, "--netns", r.rtr)
        assert grew(isp1, "host", before[0]) and grew(isp1, "router", before[1]), "traffic did not come back"

        # "Boot": markroute applied while the tunnel does not exist yet.
        lab.ip(r.rtr, "link", "del", "wan1")
        for sender in senders:
            sender.kill()
        applied("down", "--netns", r.rtr)
        boot = markroute("apply", "-c", first, "--netns", r.rtr)
        assert boot.returncode == 0, boot.stderr
        assert "interface wan1 does not exist; its routes are skipped and its traffic is dropped (it fails closed)" \
            in boot.stdout + boot.stderr
        zero = isp0["host"], isp0["router"]
        senders = start_senders(lab, r, duration=60)
        time.sleep(SETTLE)
        assert (isp0["host"], isp0["router"]) == zero
        recreate_tunnel(lab, r)
        before = isp1["host"], isp1["router"]
        applied("apply", "-c", first, "--netns", r.rtr)
        assert grew(isp1, "host", before[0]) and grew(isp1, "router", before[1])
        assert (isp0["host"], isp0["router"]) == zero
    finally:
        markroute("down", "--netns", r.rtr)


def run_daemon(config_path: str, netns: str, log: Path) -> subprocess.Popen[bytes]:
    with open(log, "ab") as out:
        return subprocess.Popen([sys.executable, "-m", "markroute", "run", "-c", config_path, "--netns", netns],
                                stdin=subprocess.DEVNULL, stdout=out, stderr=out, env=python_env(),
                                start_new_session=True)


def wait_states(netns: str, wanted: Mapping[str, str], log: Path, timeout: float = 20.0) -> None:
    from markroute.kernel import state

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        record = state.load_daemon_record(netns)
        if record and all(name in record.uplinks and record.uplinks[name].state == want
                          for name, want in wanted.items()):
            return
        time.sleep(0.05)
    raise AssertionError(f"uplinks never reached {wanted}; log:\n{log.read_text()}")


@pytest.mark.kernel
def test_fail_closed_with_the_daemon_and_its_sigkill(tunnel_lab: RouterLab, tmp_path: Path,
                                                     packet_counters: Callable[..., PacketCounters]) -> None:
    r, lab = tunnel_lab, tunnel_lab.lab
    isp0, isp1 = counters(lab, r, packet_counters)
    path = write(tmp_path, config(r), "config.yaml")
    log = tmp_path / "daemon.log"
    daemons: list[subprocess.Popen[bytes]] = []
    try:
        daemons.append(run_daemon(path, r.rtr, log))
        wait_states(r.rtr, {"isp": "up", "vpn": "up"}, log)
        start_senders(lab, r, duration=60)
        assert grew(isp1, "host", 0) and grew(isp1, "router", 0)

        lab.ip(r.rtr, "link", "set", "wan1", "down")
        wait_states(r.rtr, {"vpn": "down"}, log)
        time.sleep(SETTLE)
        no_leak(isp0)

        os.killpg(daemons[-1].pid, signal.SIGKILL)  # killed while the tunnel is down ...
        daemons[-1].wait()
        time.sleep(SETTLE)
        no_leak(isp0)
        daemons.append(run_daemon(path, r.rtr, log))  # ... and restarted
        wait_states(r.rtr, {"isp": "up", "vpn": "down"}, log)
        time.sleep(SETTLE)
        no_leak(isp0)

        before = isp1["host"], isp1["router"]
        lab.ip(r.rtr, "link", "set", "wan1", "up")
        wait_states(r.rtr, {"vpn": "up"}, log)
        assert grew(isp1, "host", before[0]) and grew(isp1, "router", before[1]), log.read_text()

        lab.ip(r.rtr, "link", "del", "wan1")  # deleted under the daemon, then back
        wait_states(r.rtr, {"vpn": "down"}, log)
        time.sleep(SETTLE)
        recreate_tunnel(lab, r)
        wait_states(r.rtr, {"vpn": "up"}, log)
        before = isp1["host"], isp1["router"]
        assert grew(isp1, "host", before[0]) and grew(isp1, "router", before[1]), log.read_text()
        no_leak(isp0)
    finally:
        for daemon in daemons:
            if daemon.poll() is None:
                os.killpg(daemon.pid, signal.SIGKILL)
                daemon.wait()
        markroute("down", "--netns", r.rtr)
        import shutil

        shutil.rmtree(directory(r.rtr), ignore_errors=True)
