"""End to end, one scenario per seed: the shipped example, applied in a lab, with real packets.

Each test builds the seed's topology (markroute.lab), shows where it matters that the
topology misbehaves without markroute, applies ``examples/NNN-*.yaml`` with only the
interface names and addresses changed to the lab's (``example`` fixture: every
replaced token must occur in the example), sends traffic and checks which uplink
carried it (the echo server reports the source it saw, and each ISP NATs to its own
address), then runs ``markroute down`` and checks the namespace is exactly as before.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from ruamel.yaml import YAML

from markroute.lab import Lab, RouterLab, multihomed_lab, router_lab, two_routers_lab

pytestmark = pytest.mark.kernel
PORT = 7000
SMTP = 25
SSH = 22
NOT_ALLOWED = 2222
Example = Callable[..., str]


# -- seed 000 -----------------------------------------------------------------------


@pytest.mark.parametrize("proto", ["tcp", "udp"])
def test_seed_000_one_destination_via_isp_a_the_rest_via_isp_b(
    lab: Lab, markroute_cli: Any, example: Example, packet_counters: Callable[..., Any], proto: str
) -> None:
    r = router_lab(lab, isps=2)
    lab.serve_echo(r.net, PORT)
    config = example(
        "000-destination-via-isp-a.yaml",
        {
            "eth0": r.rtr_wan_ifs[0],
            "eth1": r.rtr_wan_ifs[1],
            "10.0.0.1": r.isp_gw_v4[0],
            "10.0.1.1": r.isp_gw_v4[1],
            "192.168.1.0/24": r.lan_v4_net,
            "1.1.1.1": r.server,
        },
    )
    unnated = [packet_counters(isp, "forward", {"lan": f"ip saddr {r.lan_v4_net}"}) for isp in r.isps]
    markroute_cli.apply(r.rtr, config)

    to_a = lab.probe(r.lan, proto, r.server, PORT, count=50, packets=3)
    to_b = lab.probe(r.lan, proto, r.server_alt, PORT, count=50, packets=3)
    assert r.isp_counts(to_a["seen"]) == {0: 50}, to_a
    assert r.isp_counts(to_b["seen"]) == {1: 50}, to_b
    assert to_a["inconsistent"] == to_b["inconsistent"] == 0
    # Both uplinks masquerade: no ISP ever forwarded a packet with a LAN source.
    assert [counter["lan"] for counter in unnated] == [0, 0]
    counted = markroute_cli.policy_packets(r.rtr)
    assert counted["cloudflare-via-a"] >= 50 and counted["rest-via-b"] >= 50, counted

    markroute_cli.down(r.rtr)
    after = lab.probe(r.lan, proto, r.server_alt, PORT, count=5)
    assert r.isp_counts(after["seen"]) == {0: 5}  # main's default route again


# -- seed 001 -----------------------------------------------------------------------


def test_seed_001_mail_via_the_cheap_point_to_point_link(
    lab: Lab, markroute_cli: Any, example: Example
) -> None:
    r = router_lab(lab, isps=2, p2p=[1])
    exception_host = r.client_v4_extra[0]
    for port in (PORT, SMTP):
        lab.serve_echo(r.net, port)
    config = example(
        "001-mail-via-cheap-link.yaml", {"ppp0": r.rtr_wan_ifs[1], "192.168.1.5": exception_host}
    )
    markroute_cli.apply(r.rtr, config)

    # The cheap uplink's table routes straight to the device: no gateway anywhere.
    cheap = next(u for u in markroute_cli.status(r.rtr)["uplinks"] if u["name"] == "cheap")
    assert cheap["gateway"] is None and set(cheap["default_routes"]) == {f"dev {r.rtr_wan_ifs[1]}"}

    mail = lab.probe(r.lan, "tcp", r.server, SMTP, count=30, packets=3)
    assert r.isp_counts(mail["seen"]) == {1: 30}, mail
    assert mail["inconsistent"] == 0
    web = lab.probe(r.lan, "tcp", r.server, PORT, count=30)
    assert r.isp_counts(web["seen"]) == {0: 30}, web
    udp_25 = lab.probe(r.lan, "udp", r.server, SMTP, count=10)
    assert r.isp_counts(udp_25["seen"]) == {0: 10}, udp_25  # the policy is TCP only
    excepted = lab.probe(r.lan, "tcp", r.server, SMTP, count=10, bind=exception_host)
    assert r.isp_counts(excepted["seen"]) == {0: 10}, excepted
    own_mail = lab.probe(r.rtr, "tcp", r.server_alt, SMTP, count=10)
    assert r.isp_counts(own_mail["seen"]) == {1: 10}, own_mail  # the router's own mail too

    markroute_cli.down(r.rtr)


# -- seed 002 -----------------------------------------------------------------------


def test_seed_002_answers_through_the_router_a_connection_came_by(
    lab: Lab, markroute_cli: Any, example: Example
) -> None:
    t = two_routers_lab(lab)
    lab.serve_echo(t.host, t.forwarded_port)
    lab.serve_echo(t.net, PORT)

    def through(public: str) -> dict[str, Any]:
        return lab.probe(
            t.net, "tcp", public, t.forwarded_port, bind=t.remote_client, count=20, packets=3, timeout=1
        )

    assert through(t.r2_public)["ok"] == 0  # without markroute: answered via r1, lost
    config = example(
        "002-reply-via-second-router.yaml",
        {
            "eth0": t.host_if,
            "192.168.10.1": t.r1_lan,
            "192.168.10.2": t.r2_lan,
            "52:54:00:c2:a5:43": t.r2_lan_mac,
            "192.168.10.0/24": t.lan_net,
        },
    )
    markroute_cli.apply(t.host, config)

    for public in (t.r2_public, t.r1_public):
        result = through(public)
        assert result["seen"] == {t.remote_client: 20}, (public, result)
        assert result["inconsistent"] == 0
    router2 = next(u for u in markroute_cli.status(t.host)["uplinks"] if u["name"] == "router2")
    assert router2["connections"] >= 20
    for proto in ("tcp", "udp"):
        own = lab.probe(t.host, proto, t.remote_client, PORT, count=10)
        assert own["seen"] == {t.r1_public: 10}, own  # the host's own traffic: default route

    markroute_cli.down(t.host)
    assert through(t.r2_public)["ok"] == 0


# -- seed 003 -----------------------------------------------------------------------


def test_seed_003_multihomed_host_answers_through_the_arrival_interface(
    lab: Lab, markroute_cli: Any, example: Example, packet_counters: Callable[..., Any]
) -> None:
    m = multihomed_lab(lab)
    lab.serve_echo(m.host, PORT)
    lab.sysctl(m.host, "net.ipv4.conf.all.rp_filter", 1)  # strict, as the admin has it
    replies = packet_counters(
        m.host,
        "output",
        {name: f'ip daddr {m.monitoring} oifname "{ifname}"'
         for name, ifname in (("mgmt", m.host_mgmt_if), ("ftp", m.host_ftp_if))},
    )  # fmt: skip

    def tcp(address: str) -> dict[str, Any]:
        return lab.probe(m.net, "tcp", address, PORT, bind=m.monitoring, count=20, packets=3, timeout=1)

    def ping(address: str) -> int:
        argv = ["ping", "-n", "-q", "-c", "3", "-i", "0.2", "-W", "1", "-I", m.monitoring, address]
        return lab.run(m.net, argv, check=False).returncode

    assert tcp(m.host_ftp)["ok"] == 0 and ping(m.host_ftp) != 0  # strict rp_filter drops them
    config = example(
        "003-multihomed-host.yaml",
        {"eth0": m.host_mgmt_if, "eth1": m.host_ftp_if, "10.10.0.1": m.mgmt_gw, "10.20.0.1": m.ftp_gw},
    )
    markroute_cli.apply(m.host, config)
    rp_filter = lab.run(m.host, ["sysctl", "-n", f"net.ipv4.conf.{m.host_ftp_if}.rp_filter"]).stdout
    assert rp_filter.strip() == "1"

    ftp = tcp(m.host_ftp)
    assert ftp["seen"] == {m.monitoring: 20} and ftp["inconsistent"] == 0, ftp
    assert ping(m.host_ftp) == 0
    assert replies["mgmt"] == 0 and replies["ftp"] > 0  # every reply left by eth1
    mgmt = tcp(m.host_mgmt)
    assert mgmt["seen"] == {m.monitoring: 20}, mgmt
    assert ping(m.host_mgmt) == 0

    markroute_cli.down(m.host)
    assert tcp(m.host_ftp)["ok"] == 0 and ping(m.host_ftp) != 0


# -- seed 004 -----------------------------------------------------------------------

SEED_004 = "004-balance-two-wans.yaml"


def seed_004(r: RouterLab, markroute_cli: Any, example: Example) -> dict[str, int]:
    """Apply the example of seed 004 on the router; its balance weights.

    The example's WANs are eth1 and eth2 (LAN 172.17.0.0/16 on eth0); in the lab they
    are wan0 and wan1, and the 172.17.0.0/16 "local network" sits behind the router
    (reached through main's static route only, so a balanced flow would never get there).
    """
    assert r.site_net is not None
    config = example(
        SEED_004,
        {
            "eth1": r.rtr_wan_ifs[0],
            "eth2": r.rtr_wan_ifs[1],
            "192.168.0.1": r.isp_gw_v4[0],
            "192.168.0.109": r.rtr_wan_v4[0],
            "192.168.29.1": r.isp_gw_v4[1],
            "192.168.29.2": r.rtr_wan_v4[1],
            "172.17.0.0/16": r.site_net,
        },
    )
    weights = YAML(typ="safe").load(config)["groups"]["wans"]["balance"]
    markroute_cli.apply(r.rtr, config)
    return {"wan1": weights["wan1"], "wan2": weights["wan2"]}


def by_uplink(r: RouterLab, seen: dict[str, int]) -> dict[str, int]:
    """Flows per seed-004 uplink name (wan1 is ISP 0, wan2 is ISP 1)."""
    return {f"wan{isp + 1}" if isp is not None else "unNATed": n for isp, n in r.isp_counts(seen).items()}


@pytest.mark.parametrize("origin", ["lan", "router"])
def test_seed_004_balances_new_connections_by_weight(
    lab: Lab, markroute_cli: Any, example: Example, weighted_split: Callable[..., None], origin: str
) -> None:
    r = router_lab(lab, isps=2, site=True)
    weights = seed_004(r, markroute_cli, example)
    lab.serve_echo(r.net, PORT)
    ns = r.lan if origin == "lan" else r.rtr

    flows = lab.probe(ns, "tcp", r.server, PORT, count=1000, packets=4)
    assert flows["ok"] == 1000 and flows["inconsistent"] == 0, flows
    weighted_split(by_uplink(r, flows["seen"]), weights)
    datagrams = lab.probe(ns, "udp", r.server_alt, PORT, count=1000, packets=2)
    assert datagrams["ok"] == 1000 and datagrams["inconsistent"] == 0, datagrams
    weighted_split(by_uplink(r, datagrams["seen"]), weights)
    long_lived = lab.probe(ns, "tcp", r.server, PORT, count=16, packets=200)
    assert long_lived["ok"] == 16 and long_lived["inconsistent"] == 0, long_lived

    markroute_cli.down(r.rtr)


#: In the internet namespace: drop the first SYN of every connection to LOSSY_PORT, let
#: its retransmission through (a connection is known by the source address and port
#: the server sees, i.e. after the ISP's NAT).
LOSE_FIRST_SYN = """
table inet lossy {{
    set seen {{ type ipv4_addr . inet_service; timeout 5m; }}
    counter lost {{}}
    chain input {{
        type filter hook input priority 0; policy accept;
        tcp dport {port} tcp flags syn ip saddr . tcp sport @seen accept
        tcp dport {port} tcp flags syn add @seen {{ ip saddr . tcp sport }} counter name "lost" drop
    }}
}}
"""
LOSSY_PORT = 7001


@pytest.mark.parametrize("origin", ["lan", "router"])
def test_seed_004_a_connection_keeps_its_uplink_when_its_first_syn_is_lost(
    lab: Lab, markroute_cli: Any, example: Example, origin: str
) -> None:
    """The retransmitted SYN is still a `new` packet: it must not be balanced again.

    Were it balanced again, about half of the connections would leave by the other
    WAN with the first WAN's NAT address and never be answered.
    """
    r = router_lab(lab, isps=2, site=True)
    seed_004(r, markroute_cli, example)
    lab.serve_echo(r.net, LOSSY_PORT)
    lab.nft(r.net, LOSE_FIRST_SYN.format(port=LOSSY_PORT))
    ns = r.lan if origin == "lan" else r.rtr

    flows = lab.probe(ns, "tcp", r.server, LOSSY_PORT, count=40, packets=3, timeout=2.5)
    assert flows["ok"] == 40 and flows["inconsistent"] == 0, flows
    assert lab.nft_counter(r.net, "inet", "lossy", "lost") >= 40  # every first SYN was lost
    assert set(r.isp_counts(flows["seen"])) == {0, 1}  # both WANs were used

    markroute_cli.down(r.rtr)


def test_seed_004_local_networks_are_not_balanced(
    lab: Lab, markroute_cli: Any, example: Example
) -> None:
    r = router_lab(lab, isps=2, site=True)
    seed_004(r, markroute_cli, example)
    assert r.site is not None and r.site_server is not None
    lab.serve_echo(r.site, PORT)
    # Sent to a WAN, a flow to the site would die at the ISP; kept on main, all arrive
    # with their own (unNATed) source.
    from_lan = lab.probe(r.lan, "tcp", r.site_server, PORT, count=200, packets=2, timeout=1)
    assert from_lan["seen"] == {r.client_v4: 200}, from_lan
    from_router = lab.probe(r.rtr, "tcp", r.site_server, PORT, count=200, packets=2, timeout=1)
    assert from_router["seen"] == {r.rtr_site_v4: 200}, from_router
    assert markroute_cli.policy_packets(r.rtr)["local-networks"] >= 400

    markroute_cli.down(r.rtr)


def test_seed_004_drops_unsolicited_connections_from_the_wans(
    lab: Lab, markroute_cli: Any, example: Example
) -> None:
    r = router_lab(lab, isps=2, site=True)
    for port in (SSH, NOT_ALLOWED):
        lab.serve_echo(r.rtr, port, udp=False)
    lab.serve_echo(r.lan, PORT)
    attempts = {
        "wan1 ssh": (r.isps[0], r.rtr_wan_v4[0], SSH),
        "wan2 ssh": (r.isps[1], r.rtr_wan_v4[1], SSH),
        "wan2 other port": (r.isps[1], r.rtr_wan_v4[1], NOT_ALLOWED),
        "wan1 to a LAN host": (r.isps[0], r.client_v4, PORT),
        "wan2 to a LAN host": (r.isps[1], r.client_v4, PORT),
    }

    def answered() -> dict[str, int]:
        return {
            name: lab.probe(isp, "tcp", address, port, count=3, timeout=1)["ok"]
            for name, (isp, address, port) in attempts.items()
        }

    assert set(answered().values()) == {3}  # the lab lets all of it through on its own
    seed_004(r, markroute_cli, example)
    assert answered() == {
        "wan1 ssh": 0,
        "wan2 ssh": 3,  # the one allowed port
        "wan2 other port": 0,
        "wan1 to a LAN host": 0,
        "wan2 to a LAN host": 0,
    }
    markroute_cli.down(r.rtr)
    assert set(answered().values()) == {3}
