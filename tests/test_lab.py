"""Tests of markroute.lab: the topologies must work (and reproduce the seed
problems) WITHOUT any markroute rules, and must never leak namespaces.

Kernel tests (root, network namespaces) are gated in conftest.py: they always
run in CI.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from ruamel.yaml import YAML

from markroute.compile import compile_plan
from markroute.config import load_model
from markroute.kernel import state
from markroute.kernel.apply import apply
from markroute.kernel.netns import inside
from markroute.lab import (
    AddressGuardError,
    Lab,
    LabError,
    cleanup,
    lab_portforward,
    multihomed_lab,
    router_lab,
    two_routers_lab,
)
from markroute.lab.addresses import check_tokens, is_lab_network
from markroute.lab.echo import plain_address
from markroute.lab.probe import FlowSpec, PortLedger, summarise

_REPO = Path(__file__).resolve().parents[1]
PORT = 7000


# -- pure helpers (no root needed) -------------------------------------------


def test_address_guard_accepts_lab_ranges_and_rejects_internet() -> None:
    for ok in ("192.0.2.1", "198.18.0.10", "10.1.2.3/8", "2001:db8::1", "fd00:1::10/64"):
        assert is_lab_network(ok)
    for bad in ("8.8.8.8", "1.1.1.0/24", "2606:4700::1111", "100.64.0.1"):
        assert not is_lab_network(bad)
    with pytest.raises(AddressGuardError):
        check_tokens(["default", "via", "9.9.9.9", "table", "100"])
    check_tokens(["default", "via", "10.0.0.1", "table", "100", "metric", "5"])


def test_lab_refuses_foreign_namespaces_and_bad_roles() -> None:
    with Lab() as a_lab:
        with pytest.raises(LabError):
            a_lab.run("mr-000000-lan", ["true"])
        with pytest.raises(LabError):
            a_lab.add_ns("Bad Role")
        with pytest.raises(AddressGuardError):
            a_lab.probe("mr-000000-lan", "tcp", "1.1.1.1", 80)


def test_echo_reports_ipv4_clients_without_mapping() -> None:
    assert plain_address("::ffff:198.51.100.2") == "198.51.100.2"
    assert plain_address("2001:db8:ff0:0::2") == "2001:db8:ff0::2"


def test_probe_summary_counts_sources_and_inconsistency() -> None:
    results: list[list[str] | BaseException] = [
        ["198.51.100.2", "198.51.100.2"],
        ["198.51.100.6", "198.51.100.2"],
        TimeoutError(),
    ]
    assert summarise(results) == {
        "ok": 2,
        "failed": 1,
        "seen": {"198.51.100.2": 1, "198.51.100.6": 1},
        "inconsistent": 1,
        "errors": {"TimeoutError": 1},
    }


# -- router_lab ----------------------------------------------------------------


@pytest.mark.kernel
@pytest.mark.parametrize("proto", ["tcp", "udp"])
def test_router_lab_uses_isp0_without_markroute(lab: Lab, proto: str) -> None:
    r = router_lab(lab, isps=3)
    lab.serve_echo(r.net, PORT)
    for server in (r.server, r.server_alt):
        result = lab.probe(r.lan, proto, server, PORT, count=20, packets=3)
        assert result["ok"] == 20, result
        assert result["inconsistent"] == 0
        assert [r.which_isp(src) for src in result["seen"]] == [0]


@pytest.mark.kernel
@pytest.mark.parametrize("proto", ["tcp", "udp"])
def test_router_lab_ipv6_uses_isp0(lab: Lab, proto: str) -> None:
    r = router_lab(lab, isps=2, ipv6=True)
    assert r.server6 is not None
    lab.serve_echo(r.net, PORT)
    result = lab.probe(r.lan, proto, r.server6, PORT, count=10, packets=2)
    assert result["ok"] == 10, result
    assert list(result["seen"]) == [r.isp_public_v6[0]]
    assert r.which_isp(r.isp_public_v6[0]) == 0


@pytest.mark.kernel
def test_router_lab_secondary_sources_and_extra_clients(lab: Lab) -> None:
    r = router_lab(lab, isps=2, lan_clients=3)
    assert r.sw is not None and len(r.clients) == 3
    lab.serve_echo(r.net, PORT)
    for client in r.clients:
        result = lab.probe(client.ns, "tcp", r.server, PORT, count=3)
        assert result["seen"] == {r.isp_public[0]: 3}, client
    result = lab.probe(
        r.lan, "udp", r.server, PORT, bind=r.client_v4_extra[-1], sport=40000, count=3
    )
    assert result["ok"] == 3, result


@pytest.mark.kernel
def test_probe_is_fast_and_long_flows_are_consistent(lab: Lab) -> None:
    r = router_lab(lab, isps=2)
    lab.serve_echo(r.net, PORT)
    started = time.monotonic()
    result = lab.probe(r.lan, "tcp", r.server, PORT, count=1000)
    assert result["ok"] == 1000, result
    assert time.monotonic() - started < 15
    result = lab.probe(r.lan, "tcp", r.server, PORT, count=4, packets=200)
    assert result["ok"] == 4 and result["inconsistent"] == 0


@pytest.mark.kernel
def test_isp_port_forward_reproduces_asymmetric_replies(lab: Lab) -> None:
    """Through ISP 0 the forward works; through ISP 1 the router answers via
    its main default route (ISP 0), so the remote client gets nothing."""
    r = router_lab(lab, isps=2)
    lab.serve_echo(r.rtr, 8080)
    for isp in (0, 1):
        lab_portforward(r, isp, 80, 8080)
    via0 = lab.probe(r.net, "tcp", r.isp_public[0], 80, bind=r.remote_client, timeout=1)
    assert via0["seen"] == {r.remote_client: 1}
    via1 = lab.probe(r.net, "tcp", r.isp_public[1], 80, bind=r.remote_client, timeout=1)
    assert via1["ok"] == 0


@pytest.mark.kernel
def test_point_to_point_isp_needs_no_gateway(lab: Lab) -> None:
    """A p2p ISP link is reached with ``default dev wanN`` alone, like PPP."""
    r = router_lab(lab, isps=2, p2p=[1])
    assert r.p2p == (1,)
    flags = json.loads(lab.ip(r.rtr, "-j", "link", "show", r.rtr_wan_ifs[1]).stdout)[0]["flags"]
    assert "NOARP" in flags
    uplinks = YAML(typ="safe").load(r.uplinks_yaml(["a", "b"]))["uplinks"]
    assert uplinks["a"]["gateway"] == r.isp_gw_v4[0] and "gateway" not in uplinks["b"]
    lab.serve_echo(r.net, PORT)
    lab.route(r.rtr, "default", "dev", r.rtr_wan_ifs[1], "table", "200")
    lab.ip(r.rtr, "rule", "add", "to", r.server_alt, "lookup", "200", "priority", "100")
    via_p2p = lab.probe(r.lan, "tcp", r.server_alt, PORT, count=5)
    assert r.isp_counts(via_p2p["seen"]) == {1: 5}, via_p2p
    via_main = lab.probe(r.lan, "tcp", r.server, PORT, count=5)
    assert r.isp_counts(via_main["seen"]) == {0: 5}, via_main


@pytest.mark.kernel
def test_site_network_is_reached_through_main_only(lab: Lab) -> None:
    r = router_lab(lab, isps=2, site=True)
    assert r.site is not None and r.site_server is not None
    lab.serve_echo(r.site, PORT)
    from_lan = lab.probe(r.lan, "tcp", r.site_server, PORT, count=3)
    assert from_lan["seen"] == {r.client_v4: 3}, from_lan  # not NATed: never left by an ISP
    from_router = lab.probe(r.rtr, "udp", r.site_server, PORT, count=3)
    assert from_router["seen"] == {r.rtr_site_v4: 3}, from_router
    # A flow sent to an uplink table instead (default via ISP 1 only) dies at the ISP.
    lab.route(r.rtr, "default", "via", r.isp_gw_v4[1], "table", "200")
    lab.ip(r.rtr, "rule", "add", "to", r.site_server, "lookup", "200", "priority", "100")
    assert lab.probe(r.lan, "tcp", r.site_server, PORT, timeout=0.5)["ok"] == 0


# -- lifecycle ------------------------------------------------------------------


@pytest.mark.kernel
def test_namespaces_and_processes_gone_after_exception(
    live_namespaces: Callable[[], set[str]],
) -> None:
    with pytest.raises(RuntimeError, match="boom"), Lab() as a_lab:
        r = router_lab(a_lab, isps=1)
        server = a_lab.serve_echo(r.net, PORT)
        names = set(a_lab.namespaces)
        raise RuntimeError("boom")
    assert names and not names & live_namespaces()
    assert server.poll() is not None
    a_lab.close()  # closing twice is harmless


@pytest.mark.kernel
def test_closing_a_lab_forgets_markroutes_records_of_its_namespaces(tmp_path: Path) -> None:
    """A test that applies and lets the lab delete the namespace leaves no record under /run/markroute."""
    with Lab() as a_lab:
        r = router_lab(a_lab, isps=2)
        config = tmp_path / "markroute.yaml"
        config.write_text(r.uplinks_yaml(["isp_a", "isp_b"]) + "policies:\n  - {name: all, via: isp_b}\n")
        model, diagnostics = load_model(str(config))
        assert model is not None, [d.render() for d in diagnostics]
        with inside(r.rtr):
            apply(compile_plan(model), r.rtr)
        record = state.directory(r.rtr) / state.STATE_RECORD
        assert record.exists()
    assert not record.exists()


@pytest.mark.kernel
def test_two_labs_do_not_collide() -> None:
    with Lab() as first, Lab() as second:
        r1, r2 = router_lab(first), router_lab(second)
        assert first.prefix != second.prefix
        assert not set(first.namespaces) & set(second.namespaces)
        for a_lab, r in ((first, r1), (second, r2)):
            a_lab.serve_echo(r.net, PORT)
            assert a_lab.probe(r.lan, "tcp", r.server, PORT)["ok"] == 1
        with pytest.raises(LabError):
            first.run(r2.lan, ["true"])


def _run_lab_script(
    body: str, stop: Callable[[subprocess.Popen[str]], None]
) -> tuple[int, list[str]]:
    """Run a Lab-creating script in a child interpreter, stop it with *stop*.

    The script must print each namespace it creates, then READY.
    """
    script = "import time\nfrom markroute.lab import Lab\n" + textwrap.dedent(body)
    env = {**os.environ, "PYTHONPATH": str(_REPO)}
    child = subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, env=env
    )
    assert child.stdout is not None
    names = []
    for line in child.stdout:
        if line.strip() == "READY":
            break
        names.append(line.strip())
    stop(child)
    child.stdout.close()
    return child.wait(timeout=30), names


@pytest.mark.kernel
def test_sigterm_tears_down(live_namespaces: Callable[[], set[str]]) -> None:
    code, names = _run_lab_script(
        """
        lab = Lab()
        print(lab.add_ns("a"), lab.add_ns("b"), sep="\\n")
        lab.spawn(lab.namespaces[0], ["sleep", "60"])
        print("READY", flush=True)
        time.sleep(60)
        """,
        lambda child: child.send_signal(signal.SIGTERM),
    )
    assert code == -signal.SIGTERM
    assert len(names) == 2 and not set(names) & live_namespaces()


@pytest.mark.kernel
def test_atexit_tears_down_forgotten_lab(live_namespaces: Callable[[], set[str]]) -> None:
    code, names = _run_lab_script(
        """
        lab = Lab()
        print(lab.add_ns("a"))
        print("READY", flush=True)
        """,
        lambda child: None,
    )
    assert code == 0
    assert len(names) == 1 and not set(names) & live_namespaces()


@pytest.mark.kernel
def test_cleanup_ignores_missing_namespaces(lab: Lab, live_namespaces: Callable[[], set[str]]) -> None:
    real = lab.add_ns("a")
    missing = f"{real}-gone"
    assert real in live_namespaces() and missing not in live_namespaces()
    cleanup([missing, real])  # the missing name first: it must neither raise nor end the loop
    assert real not in live_namespaces()


# -- two_routers_lab --------------------------------------------------------------


@pytest.mark.kernel
def test_two_routers_reproduces_seed_002(lab: Lab) -> None:
    t = two_routers_lab(lab)
    lab.serve_echo(t.host, t.forwarded_port)
    mac = lab.ip(t.r2, "link", "show", t.router_lan_if).stdout
    assert t.r2_lan_mac in mac
    via_r1 = lab.probe(t.net, "tcp", t.r1_public, t.forwarded_port, bind=t.remote_client, timeout=1)
    assert via_r1["seen"] == {t.remote_client: 1}, via_r1
    # The host answers via its default route (r1): the r2 connection fails.
    via_r2 = lab.probe(t.net, "tcp", t.r2_public, t.forwarded_port, bind=t.remote_client, timeout=1)
    assert via_r2["ok"] == 0, via_r2


@pytest.mark.kernel
def test_two_routers_host_goes_out_through_r1(lab: Lab) -> None:
    t = two_routers_lab(lab)
    lab.serve_echo(t.net, PORT)
    result = lab.probe(t.host, "udp", "203.0.113.10", PORT)
    assert result["seen"] == {t.r1_public: 1}


# -- multihomed_lab -----------------------------------------------------------------

@pytest.mark.kernel
def test_multihomed_reproduces_seed_003(lab: Lab, packet_counters: Callable[..., Any]) -> None:
    m = multihomed_lab(lab)
    lab.serve_echo(m.host, PORT)
    replies = packet_counters(
        m.host,
        "output",
        {f"via_{ifname}": f'ip daddr {m.monitoring} oifname "{ifname}"' for ifname in ("eth0", "eth1")},
    )

    def reach(address: str) -> int:
        result = lab.probe(m.net, "tcp", address, PORT, bind=m.monitoring, count=3, timeout=1)
        return int(result["ok"])

    assert reach(m.host_mgmt) == 3
    # rp_filter off: the FTP address answers, but every reply leaves by eth0
    # (static route for the monitoring subnet), never by eth1 where it came in.
    reach(m.host_ftp)
    assert replies["via_eth1"] == 0
    assert replies["via_eth0"] > 0
    route = lab.ip(m.host, "route", "get", m.monitoring, "from", m.host_ftp).stdout
    assert f"dev {m.host_mgmt_if}" in route
    # Strict rp_filter drops monitoring traffic that arrives on eth1.
    lab.sysctl(m.host, "net.ipv4.conf.all.rp_filter", 1)
    assert reach(m.host_ftp) == 0
    assert reach(m.host_mgmt) == 3


def test_every_flow_of_a_probe_run_gets_a_port_no_earlier_flow_had() -> None:
    """A reused port to the same server is an old conntrack entry, not a new connection.

    Connecting a UDP socket sends nothing, so this runs on loopback without traffic.
    """
    spec = FlowSpec("udp", "127.0.0.1", 9, None, None, 1, 1.0)
    ledger = PortLedger()
    ports = []
    for _ in range(3000):  # far past the birthday bound of the ~28,000 ephemeral ports
        sock = ledger.open(spec)
        ports.append(sock.getsockname()[1])
        sock.close()
    assert len(set(ports)) == len(ports)
