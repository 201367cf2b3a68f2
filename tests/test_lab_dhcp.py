"""The lab's DHCP and router-advertisement uplinks work with the real daemons and real packets.

These prove the lab itself (dnsmasq, dhclient with the real dhclient-script,
radvd, the kernel's RA handling) before markroute's dynamic-gateway feature
relies on it: leases give a default route in main that carries traffic,
renumbering moves address and gateway, two clients coexist with metrics,
router advertisements give ``proto ra`` routes via a link-local gateway, a
lost lease removes the address, and nothing is left on the host.
"""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path

import pytest

from markroute.lab import Lab, dynamic_router_lab
from markroute.lab.dhcp import DhcpClient, DhcpPool, serve_dhcp
from markroute.lab.netns import NETNS_ETC
from markroute.lab.ra import Advertisement, live_ra_defaults, wait_ra_default
from markroute.lab.topologies import isp_pool
from markroute.lab.watch import addresses, default_routes, wait_until

PORT = 7000
HOST_RESOLV_CONF = Path("/etc/resolv.conf")


def _in(address: str, pool: DhcpPool) -> bool:
    return ipaddress.ip_address(address) in pool.network


def _isp_seen(lab: Lab, ns: str, server: str) -> dict[str, int]:
    """Sources the echo server saw for one TCP connection from *ns* (it must succeed)."""
    result = lab.probe(ns, "tcp", server, PORT)
    assert result["ok"] == 1, result
    seen: dict[str, int] = result["seen"]
    return seen


def _lab_processes(prefix: str) -> list[str]:
    """Command lines of live processes naming the lab's prefix (every daemon's files do)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if prefix in argv and str(os.getpid()) != entry.name:
            found.append(argv)
    return found


# -- pure checks -------------------------------------------------------------


def test_pool_and_advertisement_refuse_what_the_daemons_would_reject() -> None:
    with pytest.raises(ValueError, match="outside"):
        DhcpPool(gateway="10.0.0.1/24", first="10.0.1.100", last="10.0.1.150")
    with pytest.raises(ValueError, match="at least 120"):
        DhcpPool(gateway="10.0.0.1/24", first="10.0.0.100", last="10.0.0.150", lease_seconds=60)
    with pytest.raises(ValueError, match="renew_seconds"):
        DhcpPool(gateway="10.0.0.1/24", first="10.0.0.100", last="10.0.0.150", renew_seconds=5,
                 rebind_seconds=3)  # fmt: skip
    with pytest.raises(ValueError, match="outside the lab ranges"):
        DhcpPool(gateway="10.0.0.1/24", first="10.0.0.100", last="10.0.0.150", dns=("8.8.8.8",))
    with pytest.raises(ValueError, match="at least 4"):
        Advertisement("2001:db8::/64", interval=1)
    with pytest.raises(ValueError, match="not an IPv6"):
        Advertisement("10.0.0.0/24")


# -- DHCP --------------------------------------------------------------------


@pytest.mark.kernel
def test_lease_after_start_gives_default_route_that_carries_traffic(lab: Lab) -> None:
    r = dynamic_router_lab(lab)
    lab.serve_echo(r.net, PORT)
    # Boot order: the uplink has nothing until the client runs (markroute may start first).
    assert addresses(lab, r.rtr, "wan0") == [] and default_routes(lab, r.rtr, "wan0") == []
    client = r.dhcp_client(0)
    client.start()
    lease = client.wait_lease(gateway=r.dhcp[0].pool.router)
    assert _in(lease.address, r.dhcp[0].pool) and lease.prefixlen == 24
    (route,) = default_routes(lab, r.rtr, "wan0")
    assert route["gateway"] == "10.0.0.1" and route["dev"] == "wan0"
    assert "protocol" not in route  # dhclient-script adds it as proto boot, shown as nothing
    assert lab.ip(r.rtr, "route", "show", "default").stdout.split() == [
        "default", "via", "10.0.0.1", "dev", "wan0",
    ]  # fmt: skip
    assert r.lab.run(r.rtr, ["ping", "-c", "1", "-W", "3", r.server]).returncode == 0
    assert set(_isp_seen(lab, r.rtr, r.server)) == {r.isp_public[0]}


@pytest.mark.kernel
def test_client_never_touches_host_resolver_nor_runs_host_hooks() -> None:
    """The server offers DNS; the host's /etc/resolv.conf stays as it was, the overlay goes at teardown."""
    before = HOST_RESOLV_CONF.read_bytes(), HOST_RESOLV_CONF.stat()
    etc_before = {p.name for p in Path("/etc").iterdir()}
    with Lab() as lab:
        isp, rtr = lab.add_ns("isp"), lab.add_ns("rtr")
        lab.veth(isp, "down0", rtr, "wan0")
        pool = DhcpPool("10.0.0.1/24", "10.0.0.100", "10.0.0.150", dns=("10.0.0.53",))
        server = serve_dhcp(lab, isp, "down0", pool)
        client = DhcpClient(lab, rtr, "wan0")
        client.start()
        client.wait_lease(gateway="10.0.0.1")
        assert "dns-server  10.0.0.53" in server.log_path.read_text()  # sent...
        assert "domain-name-servers 10.0.0.53" in (client.workdir / "dhclient.leases").read_text()
        seen_inside = lab.run(rtr, ["cat", "/etc/resolv.conf"]).stdout
        assert "10.0.0.53" not in seen_inside and rtr in seen_inside  # ...not written anywhere
        overlay = NETNS_ETC / rtr
        assert overlay.is_dir()
    after = HOST_RESOLV_CONF.read_bytes(), HOST_RESOLV_CONF.stat()
    assert after[0] == before[0]
    assert (after[1].st_ino, after[1].st_mtime_ns) == (before[1].st_ino, before[1].st_mtime_ns)
    assert {p.name for p in Path("/etc").iterdir()} <= etc_before | {"netns"}
    assert not overlay.exists()
    assert _lab_processes(lab.prefix) == []


@pytest.mark.kernel
def test_renumbered_server_moves_address_and_gateway(lab: Lab) -> None:
    r = dynamic_router_lab(lab)
    lab.serve_echo(r.net, PORT)
    client = r.dhcp_client(0)
    client.start()
    old = client.wait_lease(gateway="10.0.0.1")
    new_pool = isp_pool(0, generation=1)
    r.dhcp[0].renumber(new_pool)
    new = client.wait_lease(gateway=new_pool.router, timeout=30)
    assert _in(new.address, new_pool) and not _in(new.address, isp_pool(0))
    assert [a["local"] for a in addresses(lab, r.rtr, "wan0")] == [new.address]
    assert [d["gateway"] for d in default_routes(lab, r.rtr, "wan0")] == ["10.1.0.1"]
    assert old.address != new.address
    # The exchange really happened: the old server's lease was refused, a new one granted.
    log = client.log_path.read_text()
    assert "DHCPNAK" in log and f"DHCPACK of {new.address} from 10.1.0.1" in log
    assert set(_isp_seen(lab, r.rtr, r.server)) == {r.isp_public[0]}


@pytest.mark.kernel
def test_two_clients_install_default_routes_with_their_metrics(lab: Lab) -> None:
    r = dynamic_router_lab(lab, isps=2)
    lab.serve_echo(r.net, PORT)
    clients = [r.dhcp_client(0, metric=100), r.dhcp_client(1, metric=200)]
    for client in clients:
        client.start()
    leases = [c.wait_lease(gateway=f"10.0.{i}.1") for i, c in enumerate(clients)]
    assert [lease.metric for lease in leases] == [100, 200]
    assert sorted((d["gateway"], d["dev"], d["metric"]) for d in
                  (*default_routes(lab, r.rtr, "wan0"), *default_routes(lab, r.rtr, "wan1"))) == [
        ("10.0.0.1", "wan0", 100), ("10.0.1.1", "wan1", 200),
    ]  # fmt: skip
    # main picks the lower metric: without markroute everything leaves by ISP 0.
    assert set(_isp_seen(lab, r.rtr, r.server)) == {r.isp_public[0]}
    clients[0].stop()
    clients[1].wait_lease(gateway="10.0.1.1")
    assert set(_isp_seen(lab, r.rtr, r.server)) == {r.isp_public[1]}


@pytest.mark.kernel
def test_two_clients_without_metric_leave_one_default_route(lab: Lab) -> None:
    """dhclient-script adds every default at metric 0, so the second one is refused (silently)."""
    r = dynamic_router_lab(lab, isps=2)
    clients = [r.dhcp_client(0), r.dhcp_client(1)]
    clients[0].start()
    clients[0].wait_lease(gateway="10.0.0.1")
    clients[1].start()
    # dhclient logs "bound to" once dhclient-script has returned.
    wait_until(lambda: True if "bound to" in clients[1].log_path.read_text() else None, 15,
               "the second client to bind")  # fmt: skip
    assert _in(addresses(lab, r.rtr, "wan1")[0]["local"], isp_pool(1))
    assert default_routes(lab, r.rtr, "wan1") == []


@pytest.mark.kernel
def test_renewals_refresh_the_address_but_never_restore_a_deleted_default(lab: Lab) -> None:
    """dhclient-script adds the default route only when an address is (re)bound, not on RENEW."""
    r = dynamic_router_lab(lab)
    client = r.dhcp_client(0, metric=50)
    client.start()
    lease = client.wait_lease(gateway="10.0.0.1")
    lab.ip(r.rtr, "route", "del", "default", "via", "10.0.0.1", "dev", "wan0", "metric", "50")
    wait_until(lambda: True if client.log_path.read_text().count("bound to") >= 3 else None, 20,
               "two renewals")  # fmt: skip
    assert default_routes(lab, r.rtr, "wan0") == []
    assert [a["local"] for a in addresses(lab, r.rtr, "wan0")] == [lease.address]


@pytest.mark.kernel
def test_lost_lease_removes_address_and_default_route(lab: Lab) -> None:
    r = dynamic_router_lab(lab)
    client = r.dhcp_client(0)
    client.start()
    client.wait_lease(gateway="10.0.0.1")
    client.stop()  # no DHCPRELEASE: the script removes the address itself
    client.wait_no_lease()
    client.start()
    lease = client.wait_lease(gateway="10.0.0.1")
    client.release()
    client.wait_no_lease()
    assert f"DHCPRELEASE(down0) {lease.address}" in r.dhcp[0].log_path.read_text()
    assert lab.ip(r.rtr, "route", "show", "dev", "wan0").stdout.strip() == ""


@pytest.mark.kernel
def test_daemons_and_files_are_gone_after_a_failing_test() -> None:
    with pytest.raises(RuntimeError, match="boom"), Lab() as lab:
        r = dynamic_router_lab(lab, ipv6=True)
        client = r.dhcp_client(0)
        client.start()
        client.wait_lease()
        workdirs = [client.workdir, r.dhcp[0].workdir, r.ra[0].workdir]
        assert len(_lab_processes(lab.prefix)) >= 3  # dnsmasq, radvd, dhclient
        raise RuntimeError("boom")
    assert _lab_processes(lab.prefix) == []
    assert not any(d.exists() for d in workdirs)
    assert not (NETNS_ETC / r.rtr).exists()


# -- router advertisements ---------------------------------------------------


@pytest.mark.kernel
def test_router_advertisement_gives_link_local_default_that_follows_the_router(lab: Lab) -> None:
    r = dynamic_router_lab(lab, ipv6=True)
    assert r.server6 is not None
    lab.serve_echo(r.net, PORT)
    route = wait_ra_default(lab, r.rtr, "wan0", "fe80::1")
    assert route["protocol"] == "ra" and route["dev"] == "wan0"
    assert lab.ip(r.rtr, "-6", "route", "show", "default").stdout.split()[:6] == [
        "default", "via", "fe80::1", "dev", "wan0", "proto",
    ]  # fmt: skip
    slaac = [a["local"] for a in addresses(lab, r.rtr, "wan0", ipv6=True)]
    assert [ipaddress.ip_address(a) in ipaddress.ip_network("2001:db8::/64") for a in slaac] == [True]
    assert set(_isp_seen(lab, r.rtr, r.server6)) == {r.isp_public_v6[0]}
    r.ra[0].change_router("fe80::2")  # radvd says goodbye, then advertises from fe80::2
    wait_ra_default(lab, r.rtr, "wan0", "fe80::2")
    assert [d["gateway"] for d in default_routes(lab, r.rtr, "wan0", ipv6=True)] == ["fe80::2"]
    assert set(_isp_seen(lab, r.rtr, r.server6)) == {r.isp_public_v6[0]}


@pytest.mark.kernel
def test_router_changing_address_without_goodbye_leaves_old_route_until_lifetime(lab: Lab) -> None:
    r = dynamic_router_lab(lab, ipv6=True)
    wait_ra_default(lab, r.rtr, "wan0", "fe80::1")
    r.ra[0].change_router("fe80::2", goodbye=False)
    # Both are live for a while: the old one until its advertised lifetime (12 s) runs out.
    wait_until(
        lambda: True if {d["gateway"] for d in live_ra_defaults(lab, r.rtr, "wan0")}
        == {"fe80::1", "fe80::2"} else None,
        10, "both routers' defaults",
    )  # fmt: skip
    wait_ra_default(lab, r.rtr, "wan0", "fe80::2", timeout=30)
    assert [d["gateway"] for d in live_ra_defaults(lab, r.rtr, "wan0")] == ["fe80::2"]
