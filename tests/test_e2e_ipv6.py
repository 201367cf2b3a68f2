"""End to end, IPv6: seed 000 in both families, and the shipped dual-stack example.

The lab's router has IPv4 and IPv6 on every link; each ISP NATs both families to its
own address, so the echo server's view of the source tells which ISP carried a flow.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from markroute.lab import Lab, RouterLab, router_lab

pytestmark = pytest.mark.kernel
PORT = 7000
Example = Callable[..., str]

#: Seed 000 in both families: LAN traffic to the server leaves by ISP A, everything else
#: by ISP B; both uplinks masquerade IPv4 and IPv6 (after ``RouterLab.uplinks_yaml``).
DUAL_STACK_SEED_000 = """
policies:
  - name: server-via-a
    from: [{r.lan_v4_net}, {r.lan_v6_net}]
    to: [{r.server}, {r.server6}]
    via: isp_a
  - name: rest-via-b
    from: [{r.lan_v4_net}, {r.lan_v6_net}]
    via: isp_b
"""


def another_server6(r: RouterLab) -> str:
    """An IPv6 address the internet namespace answers for, other than r.server6."""
    return r.server6.replace("::10", "::99") if r.server6 else ""


@pytest.mark.parametrize("proto", ["tcp", "udp"])
def test_seed_000_dual_stack(lab: Lab, markroute_cli: Any, proto: str) -> None:
    r = router_lab(lab, isps=2, ipv6=True)
    assert r.server6 is not None
    lab.serve_echo(r.net, PORT)
    markroute_cli.apply(r.rtr, r.uplinks_yaml(["isp_a", "isp_b"]) + DUAL_STACK_SEED_000.format(r=r))

    expected = {r.server: 0, r.server6: 0, r.server_alt: 1, another_server6(r): 1}
    for destination, isp in expected.items():
        result = lab.probe(r.lan, proto, destination, PORT, count=20, packets=3)
        assert r.isp_counts(result["seen"]) == {isp: 20}, (destination, result)
        assert result["inconsistent"] == 0
    # Each NATing ISP shows its own public address of the flow's family.
    v6 = lab.probe(r.lan, proto, another_server6(r), PORT, count=3)
    assert set(v6["seen"]) == {r.isp_public_v6[1]}

    markroute_cli.down(r.rtr)
    after = lab.probe(r.lan, proto, another_server6(r), PORT, count=3)
    assert r.isp_counts(after["seen"]) == {0: 3}


def test_shipped_dual_stack_example(
    lab: Lab,
    markroute_cli: Any,
    example: Example,
    weighted_split: Callable[..., None],
    packet_counters: Callable[..., Any],
) -> None:
    """examples/dual-stack.yaml as shipped: it was written for this lab's addresses."""
    r = router_lab(lab, isps=2, ipv6=True)
    assert r.server6 is not None
    lab.serve_echo(r.net, PORT)
    config = example(
        "dual-stack.yaml",
        {
            "wan0": r.rtr_wan_ifs[0],
            "wan1": r.rtr_wan_ifs[1],
            "10.0.0.1": r.isp_gw_v4[0],
            "10.0.1.1": r.isp_gw_v4[1],
            "2001:db8:0::1": r.isp_gw_v6[0],
            "2001:db8:1::1": r.isp_gw_v6[1],
        },
    )
    prefixes = example("streaming-prefixes.txt", {})
    pings = [packet_counters(isp, "forward", {"ef": "icmp type echo-request ip dscp ef"}) for isp in r.isps]
    markroute_cli.apply(r.rtr, config, {"streaming-prefixes.txt": prefixes})

    streaming = ("198.18.0.10", "203.0.113.200", "198.19.10.20", "2001:db8:100:5::10")
    for destination in streaming:
        result = lab.probe(r.lan, "tcp", destination, PORT, count=10)
        assert r.isp_counts(result["seen"]) == {1: 10}, (destination, result)
    docs_net = lab.probe(r.lan, "udp", r.server6, PORT, count=10)
    assert r.isp_counts(docs_net["seen"]) == {0: 10}, docs_net
    rest = lab.probe(r.lan, "tcp", r.server, PORT, count=1000, packets=2)
    assert rest["ok"] == 1000 and rest["inconsistent"] == 0, rest
    weighted_split(r.isp_counts(rest["seen"]), {0: 1, 1: 1})
    outside_range = lab.probe(r.lan, "tcp", "198.19.10.60", PORT, count=40)
    assert set(r.isp_counts(outside_range["seen"])) == {0, 1}  # not streaming: balanced
    # VoIP (DSCP EF) takes the failover group's first member, ISP A: five pings, five
    # ICMP connections, none balanced to ISP B.
    for _ in range(5):
        ping = ["ping", "-n", "-q", "-c", "1", "-W", "1", "-Q", "0xb8", r.server]
        assert lab.run(r.lan, ping, check=False).returncode == 0
    assert pings[0]["ef"] == 5 and pings[1]["ef"] == 0

    markroute_cli.down(r.rtr)
