"""Prebuilt lab topologies for markroute's kernel tests and demo.

Each builder wires namespaces inside a :class:`~markroute.lab.netns.Lab` and
returns a frozen dataclass naming every namespace, interface and address a
test needs, so tests never repeat the address plan.  The topologies
reproduce situations markroute must fix, *without* any markroute rules:

* :func:`router_lab` - a LAN router with several ISPs whose main table only
  uses ISP 0; the ISPs masquerade, so the echo server's view of the source
  address tells which ISP carried a flow (:meth:`RouterLab.which_isp`).
  Optionally some ISP links are point-to-point (no neighbour resolution, no
  gateway needed, like PPP) and a "site" network sits behind the router,
  reached through main's static route only.
* :func:`two_routers_lab` - a host with one interface and two routers on
  its LAN, both forwarding port 80 to it; replies follow the default route,
  so connections through the second router break.
* :func:`multihomed_lab` - a host with two interfaces whose static route
  sends replies for the monitoring subnet out of the wrong interface.
* :func:`dynamic_router_lab` - like :func:`router_lab`, but each ISP gives
  the router its address and gateway by DHCP (dnsmasq, and radvd for IPv6),
  so the router's uplinks only get a default route once a client runs.

All addresses come from documentation/private ranges; "the internet" is the
``net`` namespace, which answers for whole server ranges through AnyIP
(``local`` routes on ``lo``) so tests can target many destinations with one
server bound to the wildcard address.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from markroute.lab.dhcp import DhcpClient, DhcpPool, DhcpServer, serve_dhcp
from markroute.lab.netns import Lab
from markroute.lab.ra import Advertisement, RaServer, accept_ra, serve_ra

#: nft table the lab uses for its own NAT, kept apart from markroute's tables.
LAB_NAT_TABLE = "mrlab"

SERVER_V4 = "203.0.113.10"
SERVER_ALT_V4 = "198.18.0.10"
SERVER_V6 = "2001:db8:100::10"
REMOTE_CLIENT_V4 = "203.0.113.20"
REMOTE_CLIENT_V6 = "2001:db8:100::20"
SERVER_NETS_V4 = ("203.0.113.0/24", "198.18.0.0/15")
SERVER_NETS_V6 = ("2001:db8:100::/48",)
#: Fixed MAC of r2's LAN interface in :func:`two_routers_lab` (from seed 002).
R2_LAN_MAC = "52:54:00:c2:a5:43"
#: The private network behind the router in ``router_lab(site=True)`` (seed 004's LAN range).
SITE_NET_V4 = "172.17.0.0/16"
SITE_SERVER_V4 = "172.17.0.10"

_MAX_ISPS = 16
_MAX_LAN_CLIENTS = 50


def _norm(address: str) -> str:
    """Canonical text of an address, as the echo server reports it."""
    return str(ipaddress.ip_address(address))


def _masquerade(lab: Lab, ns: str, oifname: str) -> None:
    """Source-NAT (v4 and v6) everything leaving *oifname*, like an ISP or home router."""
    lab.nft(
        ns,
        f"""
        table inet {LAB_NAT_TABLE} {{
            chain postrouting {{
                type nat hook postrouting priority srcnat; policy accept;
                oifname "{oifname}" masquerade
            }}
        }}
        """,
    )


def _port_forward(lab: Lab, ns: str, rule: str) -> None:
    """Add one DNAT *rule* to the lab's prerouting NAT chain in *ns*."""
    lab.nft(
        ns,
        f"""
        table inet {LAB_NAT_TABLE} {{
            chain prerouting {{
                type nat hook prerouting priority dstnat; policy accept;
            }}
        }}
        add rule inet {LAB_NAT_TABLE} prerouting {rule}
        """,
    )


def _anyip(lab: Lab, ns: str, nets: tuple[str, ...]) -> None:
    """Make *ns* own every address of *nets*, so one wildcard server answers all."""
    for net in nets:
        lab.route(ns, "local", net, "dev", "lo")


def _link(
    lab: Lab,
    a: tuple[str, str],
    a_cidrs: tuple[str, ...],
    b: tuple[str, str],
    b_cidrs: tuple[str, ...],
    mac_a: str | None = None,
    mac_b: str | None = None,
) -> None:
    """veth between ``(ns, ifname)`` ends *a* and *b*, each given its addresses."""
    lab.veth(a[0], a[1], b[0], b[1], mac_a=mac_a, mac_b=mac_b)
    for (ns, ifname), cidrs in ((a, a_cidrs), (b, b_cidrs)):
        for cidr in cidrs:
            lab.addr(ns, ifname, cidr)


def _uplink(lab: Lab, ns: str, net: str, net_if: str, k: int, v6: bool = False) -> None:
    """Point-to-point link k between router *ns* (``up0``) and *net*, plus default route.

    Link k uses 198.51.100.{4k}/30 (net .4k+1, router .4k+2) and, with
    *v6*, 2001:db8:ff{k}::/64 (net ::1, router ::2).
    """
    v4_net, v4_rtr = f"198.51.100.{4 * k + 1}", f"198.51.100.{4 * k + 2}"
    v6_net, v6_rtr = f"2001:db8:ff{k}::1", f"2001:db8:ff{k}::2"
    rtr_cidrs = (f"{v4_rtr}/30",) + ((f"{v6_rtr}/64",) if v6 else ())
    net_cidrs = (f"{v4_net}/30",) + ((f"{v6_net}/64",) if v6 else ())
    _link(lab, (ns, "up0"), rtr_cidrs, (net, net_if), net_cidrs)
    lab.route(ns, "default", "via", v4_net)
    if v6:
        lab.route(ns, "default", "via", v6_net)


# -- router_lab --------------------------------------------------------------


@dataclass(frozen=True)
class LanClient:
    """One client namespace on the router's LAN (its interface is ``eth0``)."""

    ns: str
    v4: str
    v6: str | None
    #: Secondary addresses on the same /24 (client 0 only) so tests can vary the source.
    extra_v4: tuple[str, ...]
    ifname: str = "eth0"


@dataclass(frozen=True)
class RouterLab:
    """lan client(s) -- rtr -- isp0..ispN -- net, as built by :func:`router_lab`.

    Per-ISP tuples are indexed by ISP number; IPv6 tuples are empty and
    IPv6 scalars None unless built with ``ipv6=True``.
    """

    lab: Lab
    ipv6: bool
    clients: tuple[LanClient, ...]
    rtr: str
    isps: tuple[str, ...]
    net: str
    #: Namespace holding the LAN bridge, only when there are several clients.
    sw: str | None
    rtr_lan_if: str
    rtr_wan_ifs: tuple[str, ...]
    rtr_lan_v4: str
    rtr_lan_v6: str | None
    rtr_wan_v4: tuple[str, ...]
    rtr_wan_v6: tuple[str, ...]
    #: Each ISP's address facing the router (the router's gateway via wan{i}).
    isp_gw_v4: tuple[str, ...]
    isp_gw_v6: tuple[str, ...]
    #: Source address the server sees for traffic leaving through ISP i.
    isp_public: tuple[str, ...]
    isp_public_v6: tuple[str, ...]
    #: net's interface toward each ISP.
    net_isp_ifs: tuple[str, ...]
    lan_v4_net: str
    lan_v6_net: str | None
    server: str
    server_alt: str
    server6: str | None
    server_nets: tuple[str, ...]
    remote_client: str
    remote_client6: str | None
    #: ISP indices whose link to the router is point-to-point (no gateway needed).
    p2p: tuple[int, ...]
    #: Namespace of the site network behind the router (``site=True``), else None.
    site: str | None
    site_net: str | None
    #: One address of the site network; a wildcard echo server in ``site`` answers it.
    site_server: str | None
    #: The router's address toward the site: the source a router-originated flow shows there.
    rtr_site_v4: str | None

    @property
    def lan(self) -> str:
        """Namespace of the first LAN client."""
        return self.clients[0].ns

    @property
    def client_v4(self) -> str:
        return self.clients[0].v4

    @property
    def client_v6(self) -> str | None:
        return self.clients[0].v6

    @property
    def client_v4_extra(self) -> tuple[str, ...]:
        return self.clients[0].extra_v4

    def which_isp(self, seen_source: str) -> int | None:
        """ISP index whose public address is *seen_source*, or None (e.g. unNATed)."""
        seen = _norm(seen_source)
        for addresses in (self.isp_public, self.isp_public_v6):
            if seen in addresses:
                return addresses.index(seen)
        return None

    def uplinks_yaml(self, names: Sequence[str]) -> str:
        """markroute's ``uplinks:`` section for ISPs 0.. named *names*, all masquerading.

        Gateways of both families when the lab has IPv6; none on point-to-point links.
        """
        lines = ["uplinks:"]
        for i, name in enumerate(names):
            lines += [f"  {name}:", f"    interface: {self.rtr_wan_ifs[i]}"]
            if i not in self.p2p:
                lines.append(f"    gateway: {self.isp_gw_v4[i]}")
                lines += [f"    gateway6: {self.isp_gw_v6[i]}"] if self.ipv6 else []
            lines.append("    nat: masquerade")
        return "\n".join(lines) + "\n"

    def isp_counts(self, seen: Mapping[str, int]) -> dict[int | None, int]:
        """Flows per ISP index (None: not NATed by any ISP) from a probe's ``seen``."""
        counts: dict[int | None, int] = {}
        for source, flows in seen.items():
            isp = self.which_isp(source)
            counts[isp] = counts.get(isp, 0) + flows
        return counts


def _client_addresses(k: int, ipv6: bool) -> tuple[str, str | None, tuple[str, ...]]:
    """Address plan of LAN client *k*: .10 (+ .11-.30) for client 0, .100+k otherwise."""
    host = 10 if k == 0 else 100 + k
    v6 = f"fd00:1::{host}" if ipv6 else None
    extra = tuple(f"192.168.1.{h}" for h in range(11, 31)) if k == 0 else ()
    return f"192.168.1.{host}", v6, extra


def _build_lan(
    lab: Lab, rtr: str, count: int, ipv6: bool
) -> tuple[tuple[LanClient, ...], str | None]:
    """Client namespaces wired to rtr's lan0: directly, or through a bridge in ``sw``."""
    sw = lab.add_ns("sw") if count > 1 else None
    if sw is not None:
        lab.veth(rtr, "lan0", sw, "p0")
    clients = []
    for k in range(count):
        ns = lab.add_ns("lan" if k == 0 else f"lan{k}")
        v4, v6, extra = _client_addresses(k, ipv6)
        if sw is None:
            lab.veth(ns, "eth0", rtr, "lan0")
        else:
            lab.veth(ns, "eth0", sw, f"p{k + 1}")
        for address in (v4, *extra):
            lab.addr(ns, "eth0", f"{address}/24")
        lab.route(ns, "default", "via", "192.168.1.1")
        if v6 is not None:
            lab.addr(ns, "eth0", f"{v6}/64")
            lab.route(ns, "default", "via", "fd00:1::1")
        clients.append(LanClient(ns, v4, v6 and _norm(v6), extra))
    if sw is not None:
        lab.bridge(sw, "br0", [f"p{k}" for k in range(count + 1)])
    return tuple(clients), sw


def _p2p_mac(i: int) -> str:
    """The MAC both ends of point-to-point ISP link i share (locally administered)."""
    return f"02:00:00:00:01:{i:02x}"


def _build_isp(lab: Lab, rtr: str, net: str, i: int, v6: bool, p2p: bool) -> str:
    """ISP i: down0 faces rtr's wan{i}, up0 faces net, masquerading on up0.

    A *p2p* link behaves like PPP: ARP is off on both ends and the IPv4
    addresses are /32 peers, so the router reaches the ISP with
    ``default dev wan{i}`` and no gateway.  A NOARP device sends every frame
    to its own MAC, so both veth ends carry the same MAC and each accepts
    what the other sends without any neighbour resolution.
    """
    isp = lab.add_ns(f"isp{i}")
    down_v6 = (f"2001:db8:{i}::1/64",) if v6 else ()
    wan_v6 = (f"2001:db8:{i}::2/64",) if v6 else ()
    if p2p:
        mac = _p2p_mac(i)
        _link(lab, (isp, "down0"), down_v6, (rtr, f"wan{i}"), wan_v6, mac_a=mac, mac_b=mac)
        for ns, ifname, local, peer in ((isp, "down0", 1, 2), (rtr, f"wan{i}", 2, 1)):
            lab.ip(ns, "link", "set", ifname, "arp", "off")
            address, peer_cidr = f"10.0.{i}.{local}", f"10.0.{i}.{peer}/32"
            lab.ip(ns, "addr", "add", address, "peer", peer_cidr, "dev", ifname)
    else:
        down_cidrs = (f"10.0.{i}.1/24",) + down_v6
        _link(lab, (isp, "down0"), down_cidrs, (rtr, f"wan{i}"), (f"10.0.{i}.2/24",) + wan_v6)
    _uplink(lab, isp, net, f"ispl{i}", i, v6)
    lab.forwarding(isp, ipv6=v6)
    # Not needed while the router NATs, but lets tests observe unNATed traffic.
    lab.route(isp, "192.168.1.0/24", "via", f"10.0.{i}.2")
    if v6:
        lab.route(isp, "fd00:1::/64", "via", f"2001:db8:{i}::2")
    _masquerade(lab, isp, "up0")
    return isp


def _build_site(lab: Lab, rtr: str) -> str:
    """Namespace ``site`` owning SITE_NET_V4, reached from rtr by a static route in main only.

    Unlike a connected network, main's static route is not copied into
    markroute's uplink tables, so a flow to the site arrives only if it was
    left to the main table; a flow sent to an uplink dies at the ISP.
    """
    site = lab.add_ns("site")
    _link(lab, (rtr, "site0"), ("10.255.0.1/30",), (site, "eth0"), ("10.255.0.2/30",))
    lab.route(site, "default", "via", "10.255.0.1")
    lab.route(rtr, SITE_NET_V4, "via", "10.255.0.2")
    _anyip(lab, site, (SITE_NET_V4,))
    return site


def router_lab(
    lab: Lab,
    isps: int = 2,
    ipv6: bool = False,
    lan_clients: int = 1,
    p2p: Sequence[int] = (),
    site: bool = False,
) -> RouterLab:
    """Build the multi-ISP router topology (see :class:`RouterLab`).

    The router ``rtr`` forwards, and its main table has a default route via
    ISP 0 only: using the other ISPs is markroute's job.  ISPs listed in
    *p2p* get point-to-point links; *site* adds the network behind the
    router (:func:`_build_site`).  No markroute rules are installed.
    """
    if not 1 <= isps <= _MAX_ISPS:
        raise ValueError(f"isps must be between 1 and {_MAX_ISPS}")
    if not 1 <= lan_clients <= _MAX_LAN_CLIENTS:
        raise ValueError(f"lan_clients must be between 1 and {_MAX_LAN_CLIENTS}")
    if not set(p2p) <= set(range(isps)):
        raise ValueError(f"p2p names ISPs outside 0..{isps - 1}")
    rtr = lab.add_ns("rtr")
    clients, sw = _build_lan(lab, rtr, lan_clients, ipv6)
    lab.addr(rtr, "lan0", "192.168.1.1/24")
    if ipv6:
        lab.addr(rtr, "lan0", "fd00:1::1/64")
    net = lab.add_ns("net")
    isp_names = tuple(_build_isp(lab, rtr, net, i, ipv6, i in p2p) for i in range(isps))
    site_ns = _build_site(lab, rtr) if site else None
    lab.forwarding(rtr, ipv6=ipv6)
    lab.route(rtr, "default", "via", "10.0.0.1")
    _anyip(lab, net, SERVER_NETS_V4)
    if ipv6:
        lab.route(rtr, "default", "via", "2001:db8::1")
        _anyip(lab, net, SERVER_NETS_V6)

    def v6s(template: str) -> tuple[str, ...]:
        return tuple(_norm(template.format(i=i)) for i in range(isps)) if ipv6 else ()

    return RouterLab(
        lab=lab,
        ipv6=ipv6,
        clients=clients,
        rtr=rtr,
        isps=isp_names,
        net=net,
        sw=sw,
        rtr_lan_if="lan0",
        rtr_wan_ifs=tuple(f"wan{i}" for i in range(isps)),
        rtr_lan_v4="192.168.1.1",
        rtr_lan_v6="fd00:1::1" if ipv6 else None,
        rtr_wan_v4=tuple(f"10.0.{i}.2" for i in range(isps)),
        rtr_wan_v6=v6s("2001:db8:{i}::2"),
        isp_gw_v4=tuple(f"10.0.{i}.1" for i in range(isps)),
        isp_gw_v6=v6s("2001:db8:{i}::1"),
        isp_public=tuple(f"198.51.100.{4 * i + 2}" for i in range(isps)),
        isp_public_v6=v6s("2001:db8:ff{i}::2"),
        net_isp_ifs=tuple(f"ispl{i}" for i in range(isps)),
        lan_v4_net="192.168.1.0/24",
        lan_v6_net="fd00:1::/64" if ipv6 else None,
        server=SERVER_V4,
        server_alt=SERVER_ALT_V4,
        server6=SERVER_V6 if ipv6 else None,
        server_nets=SERVER_NETS_V4 + (SERVER_NETS_V6 if ipv6 else ()),
        remote_client=REMOTE_CLIENT_V4,
        remote_client6=REMOTE_CLIENT_V6 if ipv6 else None,
        p2p=tuple(sorted(set(p2p))),
        site=site_ns,
        site_net=SITE_NET_V4 if site else None,
        site_server=SITE_SERVER_V4 if site else None,
        rtr_site_v4="10.255.0.1" if site else None,
    )


def lab_portforward(r: RouterLab, isp: int, public_port: int, router_port: int) -> None:
    """Forward TCP *public_port* on ISP *isp*'s public address to rtr's wan{isp}:*router_port*.

    This is the ISP modem's port forward: a remote client in ``net``
    connecting to ``r.isp_public[isp]:public_port`` (or the IPv6 public
    address) reaches the router, whose own DNAT to a LAN server is the
    test's business.  Replies leave the router by its routing decision, so
    this is how tests check that replies go back the way they came.
    """
    ns = r.isps[isp]
    _port_forward(
        r.lab,
        ns,
        f'iifname "up0" ip daddr {r.isp_public[isp]} tcp dport {public_port} '
        f"dnat ip to {r.rtr_wan_v4[isp]}:{router_port}",
    )
    if r.ipv6:
        _port_forward(
            r.lab,
            ns,
            f'iifname "up0" ip6 daddr {r.isp_public_v6[isp]} tcp dport {public_port} '
            f"dnat ip6 to [{r.rtr_wan_v6[isp]}]:{router_port}",
        )


# -- two_routers_lab ---------------------------------------------------------


@dataclass(frozen=True)
class TwoRoutersLab:
    """host -- sw (bridge) -- r1, r2 -- net, as built by :func:`two_routers_lab`.

    Both routers masquerade outbound traffic on ``up0`` and forward TCP
    ``forwarded_port`` on their public address to the host.  The host's
    default route is r1, so without policy routing only connections that
    came through r1 get answers.
    """

    lab: Lab
    host: str
    r1: str
    r2: str
    sw: str
    net: str
    host_if: str
    host_addr: str
    lan_net: str
    r1_lan: str
    r2_lan: str
    r2_lan_mac: str
    router_lan_if: str
    router_up_if: str
    r1_public: str
    r2_public: str
    #: net's address on each router's uplink (each router's default gateway).
    r1_upstream: str
    r2_upstream: str
    forwarded_port: int
    remote_client: str
    remote_net: str


def _build_edge_router(lab: Lab, k: int, net: str, sw: str, mac: str | None = None) -> str:
    """Router r{k+1}: lan0 192.168.10.{k+1} on the switch, up0 uplink k to net.

    Like a home router it masquerades outbound traffic and forwards TCP 80
    on its public address to the host.
    """
    role = f"r{k + 1}"
    ns = lab.add_ns(role)
    _link(lab, (ns, "lan0"), (f"192.168.10.{k + 1}/24",), (sw, f"p{role}"), (), mac_a=mac)
    _uplink(lab, ns, net, f"to{role}", k)
    lab.forwarding(ns)
    _masquerade(lab, ns, "up0")
    _port_forward(
        lab,
        ns,
        f'iifname "up0" ip daddr 198.51.100.{4 * k + 2} tcp dport 80 dnat ip to 192.168.10.50:80',
    )
    return ns


def two_routers_lab(lab: Lab) -> TwoRoutersLab:
    """Build seed scenario 002: one-interface host behind two port-forwarding routers."""
    sw = lab.add_ns("sw")
    host = lab.add_ns("host")
    net = lab.add_ns("net")
    _link(lab, (host, "eth0"), ("192.168.10.50/24",), (sw, "phost"), ())
    lab.route(host, "default", "via", "192.168.10.1")
    r1 = _build_edge_router(lab, 0, net, sw)
    r2 = _build_edge_router(lab, 1, net, sw, mac=R2_LAN_MAC)
    lab.bridge(sw, "br0", ["phost", "pr1", "pr2"])
    _anyip(lab, net, ("203.0.113.0/24",))
    return TwoRoutersLab(
        lab=lab,
        host=host,
        r1=r1,
        r2=r2,
        sw=sw,
        net=net,
        host_if="eth0",
        host_addr="192.168.10.50",
        lan_net="192.168.10.0/24",
        r1_lan="192.168.10.1",
        r2_lan="192.168.10.2",
        r2_lan_mac=R2_LAN_MAC,
        router_lan_if="lan0",
        router_up_if="up0",
        r1_public="198.51.100.2",
        r2_public="198.51.100.6",
        r1_upstream="198.51.100.1",
        r2_upstream="198.51.100.5",
        forwarded_port=80,
        remote_client=REMOTE_CLIENT_V4,
        remote_net="203.0.113.0/24",
    )


# -- multihomed_lab ----------------------------------------------------------


@dataclass(frozen=True)
class MultiHomedLab:
    """host(eth0, eth1) -- gw0, gw1 -- net, as built by :func:`multihomed_lab`.

    net reaches ``host_mgmt`` only via gw0 and ``host_ftp`` only via gw1,
    but the host's static route for the monitoring subnet points at gw0,
    so replies to monitoring traffic that arrived on eth1 leave by eth0.
    No NAT anywhere; rp_filter is off until a test turns it on.
    """

    lab: Lab
    host: str
    gw0: str
    gw1: str
    net: str
    host_mgmt_if: str
    host_mgmt: str
    mgmt_gw: str
    host_ftp_if: str
    host_ftp: str
    ftp_gw: str
    monitoring: str
    monitoring_net: str
    gw0_public: str
    gw1_public: str


def _build_gateway(lab: Lab, k: int, host: str, host_if: str, net: str) -> str:
    """gw{k}: lan0 10.{10+10k}.0.1/24 toward host, up0 198.51.100.{4k+2}/30 to net."""
    ns = lab.add_ns(f"gw{k}")
    subnet = f"10.{10 + 10 * k}.0"
    _link(lab, (host, host_if), (f"{subnet}.5/24",), (ns, "lan0"), (f"{subnet}.1/24",))
    _uplink(lab, ns, net, f"togw{k}", k)
    lab.forwarding(ns)
    lab.route(net, f"{subnet}.0/24", "via", f"198.51.100.{4 * k + 2}")
    return ns


def multihomed_lab(lab: Lab) -> MultiHomedLab:
    """Build seed scenario 003: a two-interface host with a misleading static route."""
    host = lab.add_ns("host")
    net = lab.add_ns("net")
    gw0 = _build_gateway(lab, 0, host, "eth0", net)
    gw1 = _build_gateway(lab, 1, host, "eth1", net)
    lab.route(host, "default", "via", "10.20.0.1")
    lab.route(host, "203.0.113.0/24", "via", "10.10.0.1")
    _anyip(lab, net, ("203.0.113.0/24",))
    return MultiHomedLab(
        lab=lab,
        host=host,
        gw0=gw0,
        gw1=gw1,
        net=net,
        host_mgmt_if="eth0",
        host_mgmt="10.10.0.5",
        mgmt_gw="10.10.0.1",
        host_ftp_if="eth1",
        host_ftp="10.20.0.5",
        ftp_gw="10.20.0.1",
        monitoring="203.0.113.7",
        monitoring_net="203.0.113.0/24",
        gw0_public="198.51.100.2",
        gw1_public="198.51.100.6",
    )


# -- dynamic_router_lab ------------------------------------------------------


def isp_pool(i: int, generation: int = 0) -> DhcpPool:
    """ISP i's DHCP pool; each *generation* is a renumbering: 10.{generation}.{i}.0/24.

    The ISP is .1 (the gateway), leases come from .100-.150.  Generation 0
    uses the same subnet as ISP i in :func:`router_lab`.
    """
    return DhcpPool(
        gateway=f"10.{generation}.{i}.1/24",
        first=f"10.{generation}.{i}.100",
        last=f"10.{generation}.{i}.150",
    )


@dataclass(frozen=True)
class DynamicRouterLab:
    """lan -- rtr -- isp0..ispN -- net, each ISP configuring rtr's wan{i} dynamically.

    Every ISP runs a DHCP server (``dhcp[i]``, pool :func:`isp_pool`) and,
    with IPv6, radvd (``ra[i]``) advertising 2001:db8:{i}::/64 from
    ``isp_router6[i]``.  The router has no uplink address nor default route
    until a test starts a client (:meth:`dhcp_client`), so a test chooses
    whether that happens before or after markroute starts.  The ISPs
    masquerade toward ``net``; the router does not, so LAN traffic needs
    markroute's ``nat: masquerade`` to come back.
    """

    lab: Lab
    ipv6: bool
    clients: tuple[LanClient, ...]
    rtr: str
    isps: tuple[str, ...]
    net: str
    rtr_lan_if: str
    rtr_wan_ifs: tuple[str, ...]
    rtr_lan_v4: str
    lan_v4_net: str
    dhcp: tuple[DhcpServer, ...]
    ra: tuple[RaServer, ...]
    #: The link-local address radvd of ISP i advertises from (the router's IPv6 gateway).
    isp_router6: tuple[str, ...]
    #: Source address the server sees for traffic leaving through ISP i.
    isp_public: tuple[str, ...]
    isp_public_v6: tuple[str, ...]
    server: str
    server6: str | None

    @property
    def lan(self) -> str:
        return self.clients[0].ns

    def dhcp_client(self, i: int, metric: int | None = None) -> DhcpClient:
        """A dhclient (not yet started) for the router's wan{i}, its default route at *metric*."""
        return DhcpClient(self.lab, self.rtr, self.rtr_wan_ifs[i], metric=metric)

    def which_isp(self, seen_source: str) -> int | None:
        """ISP index whose public address is *seen_source*, or None."""
        seen = _norm(seen_source)
        for public in (self.isp_public, self.isp_public_v6):
            if seen in public:
                return public.index(seen)
        return None


def _build_dynamic_isp(lab: Lab, rtr: str, net: str, i: int, v6: bool) -> str:
    """ISP i: down0 faces rtr's wan{i} with no address on the router side, up0 faces net."""
    isp = lab.add_ns(f"isp{i}")
    lab.veth(isp, "down0", rtr, f"wan{i}")
    _uplink(lab, isp, net, f"ispl{i}", i, v6)
    lab.forwarding(isp, ipv6=v6)
    _masquerade(lab, isp, "up0")
    if v6:
        # Where de-NATed replies to the router's SLAAC address are routed.
        lab.addr(isp, "down0", f"2001:db8:{i}::1/64")
        accept_ra(lab, rtr, f"wan{i}")
    return isp


def dynamic_router_lab(lab: Lab, isps: int = 1, ipv6: bool = False) -> DynamicRouterLab:
    """Build the router topology whose uplinks are configured by DHCP/RA (see :class:`DynamicRouterLab`).

    DHCP servers and radvd run from the start; no client does.
    """
    if not 1 <= isps <= _MAX_ISPS:
        raise ValueError(f"isps must be between 1 and {_MAX_ISPS}")
    rtr = lab.add_ns("rtr")
    clients, _ = _build_lan(lab, rtr, 1, ipv6)
    lab.addr(rtr, "lan0", "192.168.1.1/24")
    if ipv6:
        lab.addr(rtr, "lan0", "fd00:1::1/64")
    net = lab.add_ns("net")
    isp_names = tuple(_build_dynamic_isp(lab, rtr, net, i, ipv6) for i in range(isps))
    lab.forwarding(rtr, ipv6=ipv6)
    _anyip(lab, net, SERVER_NETS_V4 + (SERVER_NETS_V6 if ipv6 else ()))
    dhcp = tuple(serve_dhcp(lab, isp, "down0", isp_pool(i)) for i, isp in enumerate(isp_names))
    routers6 = tuple("fe80::1" for _ in isp_names) if ipv6 else ()
    ra = tuple(
        serve_ra(lab, isp, "down0", Advertisement(f"2001:db8:{i}::/64"), router=routers6[i])
        for i, isp in enumerate(isp_names)
    ) if ipv6 else ()  # fmt: skip
    return DynamicRouterLab(
        lab=lab,
        ipv6=ipv6,
        clients=clients,
        rtr=rtr,
        isps=isp_names,
        net=net,
        rtr_lan_if="lan0",
        rtr_wan_ifs=tuple(f"wan{i}" for i in range(isps)),
        rtr_lan_v4="192.168.1.1",
        lan_v4_net="192.168.1.0/24",
        dhcp=dhcp,
        ra=ra,
        isp_router6=routers6,
        isp_public=tuple(f"198.51.100.{4 * i + 2}" for i in range(isps)),
        isp_public_v6=tuple(_norm(f"2001:db8:ff{i}::2") for i in range(isps)) if ipv6 else (),
        server=SERVER_V4,
        server6=SERVER_V6 if ipv6 else None,
    )
