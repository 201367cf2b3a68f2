"""End to end: reply via ingress on a router.

A LAN web server is port-forwarded on both WANs (each ISP forwards its public port to
the router, the router DNATs to the LAN host). The router's main default route is
WAN 1, so without markroute the answers to a connection that came in on WAN 2 leave by
WAN 1 and are lost; with markroute (no policies at all: reply_via_ingress is the
default) they go back through WAN 2.
"""

from __future__ import annotations

from typing import Any

import pytest

from markroute.lab import Lab, RouterLab, lab_portforward, router_lab

pytestmark = pytest.mark.kernel
PORT = 7000
PUBLIC_PORT = 80
ROUTER_PORT = 8080

ROUTER_DNAT = """
table inet portforward {{
    chain prerouting {{
        type nat hook prerouting priority dstnat; policy accept;
        meta nfproto ipv4 tcp dport {router_port} dnat ip to {r.client_v4}:{port}
        meta nfproto ipv6 tcp dport {router_port} dnat ip6 to [{r.client_v6}]:{port}
    }}
}}
"""


def through_isp(r: RouterLab, isp: int, family: int, count: int) -> dict[str, Any]:
    """*count* connections from the remote client to ISP *isp*'s forwarded port."""
    public, client = (r.isp_public[isp], r.remote_client) if family == 4 else (r.isp_public_v6[isp], r.remote_client6)
    assert client is not None
    return r.lab.probe(r.net, "tcp", public, PUBLIC_PORT, bind=client, count=count, packets=3, timeout=1)


@pytest.mark.parametrize("family", [4, 6])
def test_port_forwarded_from_wan_2_is_answered_via_wan_2(lab: Lab, markroute_cli: Any, family: int) -> None:
    r = router_lab(lab, isps=2, ipv6=True)
    for ns in (r.lan, r.net):
        lab.serve_echo(ns, PORT)
    for isp in (0, 1):
        lab_portforward(r, isp, PUBLIC_PORT, ROUTER_PORT)
    lab.nft(r.rtr, ROUTER_DNAT.format(r=r, router_port=ROUTER_PORT, port=PORT))
    remote = r.remote_client if family == 4 else r.remote_client6
    assert through_isp(r, 0, family, 3)["seen"] == {remote: 3}
    assert through_isp(r, 1, family, 3)["ok"] == 0  # answered via WAN 1: lost

    markroute_cli.apply(r.rtr, r.uplinks_yaml(["wan1", "wan2"]))
    for isp in (1, 0):
        result = through_isp(r, isp, family, 20)
        assert result["seen"] == {remote: 20} and result["inconsistent"] == 0, (isp, result)
    wan2 = next(u for u in markroute_cli.status(r.rtr)["uplinks"] if u["name"] == "wan2")
    assert wan2["connections"] >= 20
    # The LAN's own traffic still follows main (no policies).
    outgoing = lab.probe(r.lan, "tcp", r.server if family == 4 else str(r.server6), PORT, count=10)
    assert r.isp_counts(outgoing["seen"]) == {0: 10}

    markroute_cli.down(r.rtr)
    assert through_isp(r, 1, family, 3)["ok"] == 0
