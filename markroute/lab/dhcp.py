"""Real DHCP in the lab: dnsmasq serving an ISP link, dhclient configuring the router's uplink.

Uplinks whose address and gateway come from DHCP change under markroute's
feet, so the tests of that feature need the real exchange, not a simulation:
dnsmasq (DHCP only, ``--port=0``) in the ISP's namespace, and ISC dhclient in
the router's namespace running the distribution's ``/sbin/dhclient-script``,
which adds the address and ``default via <router> dev <if>`` to the main table.

Two things keep the host safe while the real script runs as root:

* The script and its hooks write host files (``/etc/resolv.conf``, NTP and
  hostname hooks, a ``systemctl`` call).  The client therefore runs under an
  ``/etc/netns/NS`` overlay, which ``ip netns exec`` bind-mounts over
  ``/etc``: its own ``resolv.conf`` and its own ``dhcp`` directory, so no host
  hook runs, holding one enter hook that disables the script's resolver and
  hostname updates: ``make_resolv_conf`` writes its temporary file next to
  the (bind-mounted) resolv.conf, i.e. in the host's ``/etc``, and the
  hostname is not per network namespace.
* Every daemon is started with :meth:`Lab.spawn` and its files live in
  :meth:`Lab.tempdir`; teardown stops and removes them, and the overlay goes
  with its namespace, even when a test fails.

What dhclient-script (isc-dhcp-client 4.4.3) does to the kernel, which the
dynamic-gateway feature must expect (read from the script; tests/test_lab_dhcp.py
shows the route and address behaviour):

* BOUND/REBOOT: ``ip -4 addr add ADDR/LEN ... valid_lft LEASE dynamic``, then
  ``ip -4 route add default via ROUTER dev IF [metric IF_METRIC]`` in main,
  protocol ``boot`` (the ``ip`` default, shown as nothing), metric 0 unless
  ``IF_METRIC`` (or several routers: 1, 2, ...); errors are hidden, so a
  second client without a metric silently gets no default route.
* RENEW/REBIND with the same address: ``ip addr change`` only (a new
  RTM_NEWADDR every renewal); a default route deleted meanwhile is not re-added.
* New address (renumbering): ``ip addr flush dev IF label IF`` (every address
  labelled IF, not only the lease), then as BOUND.
* STOP/RELEASE/EXPIRE: the same flush; the kernel drops the default route
  with the interface's last IPv4 address.  A client killed without running
  its script leaves both until the address's lifetime (the lease) runs out.

dnsmasq never leases for less than 2 minutes, so a renumbered server would
normally be noticed after a minute; the pool's renewal and rebinding times
(DHCP options 58/59) are therefore seconds, and the client notices a new
server within them through the ordinary renew, rebind, NAK, discover path.
"""

from __future__ import annotations

import ipaddress
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from markroute.lab.addresses import check_lab_address
from markroute.lab.netns import NETNS_ETC, Lab, LabError
from markroute.lab.watch import addresses, default_routes, wait_until

DHCLIENT_SCRIPT = "/sbin/dhclient-script"
#: dnsmasq's minimum lease time (it lengthens shorter ones).
MIN_LEASE_SECONDS = 120
#: dnsmasq 2.90 replaced a renewal time (T1) of 1 s by its default (half the lease).
MIN_RENEW_SECONDS = 2

#: What the client asks for: address, gateway and timers only; and retransmissions
#: every second or two instead of dhclient's default backoff (up to 2 minutes), so
#: a renewal to a vanished server turns into a rebind, and a lease, within seconds.
_DHCLIENT_CONF = """\
request subnet-mask, broadcast-address, routers,
        dhcp-lease-time, dhcp-renewal-time, dhcp-rebinding-time;
initial-interval 1;
backoff-cutoff 2;
"""

#: Enter hook (sourced by dhclient-script, so it can redefine the script's functions):
#: a lab namespace shares the host's /etc and hostname, so never write either.
#: make_resolv_conf would write its temporary file next to the host's resolv.conf.
_ENTER_HOOK = """\
# markroute lab: keep the host's resolver configuration and hostname untouched.
make_resolv_conf() { :; }
set_hostname() { :; }
"""


@dataclass(frozen=True)
class DhcpPool:
    """What an ISP hands out on one link by DHCP.

    *gateway* is the server's own address on the link with its prefix
    (``10.0.0.1/24``); it is also the router option the clients receive.
    *dns* servers are sent even unrequested (the client ignores them), to
    prove the host's resolver configuration stays untouched.
    """

    gateway: str
    first: str
    last: str
    lease_seconds: int = MIN_LEASE_SECONDS
    renew_seconds: int = MIN_RENEW_SECONDS
    rebind_seconds: int = MIN_RENEW_SECONDS + 1
    dns: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        check_lab_address(self.gateway)
        net = self.network
        for address in (self.first, self.last, *self.dns):
            check_lab_address(address)
        if not (ipaddress.ip_address(self.first) in net and ipaddress.ip_address(self.last) in net):
            raise ValueError(f"range {self.first}-{self.last} is outside {net}")
        if net.version != 4:
            raise ValueError("DHCP pools are IPv4; IPv6 uplinks use router advertisements")
        if self.lease_seconds < MIN_LEASE_SECONDS:
            raise ValueError(f"dnsmasq leases for at least {MIN_LEASE_SECONDS}s")
        if not MIN_RENEW_SECONDS <= self.renew_seconds < self.rebind_seconds < self.lease_seconds:
            raise ValueError(
                f"need {MIN_RENEW_SECONDS} <= renew_seconds < rebind_seconds < lease_seconds"
            )

    @property
    def network(self) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
        return ipaddress.ip_interface(self.gateway).network

    @property
    def router(self) -> str:
        """The gateway address the clients receive (option 3)."""
        return str(ipaddress.ip_interface(self.gateway).ip)

    def dnsmasq_args(self) -> list[str]:
        """dnsmasq options serving this pool: range, router, timers, offered DNS."""
        args = [
            f"--dhcp-range={self.first},{self.last},{self.network.netmask},{self.lease_seconds}s",
            f"--dhcp-option=option:router,{self.router}",
            f"--dhcp-option=option:T1,{self.renew_seconds}",
            f"--dhcp-option=option:T2,{self.rebind_seconds}",
        ]
        if self.dns:
            # Forced: dnsmasq sends only requested options, and the client does not ask.
            args.append(f"--dhcp-option-force=option:dns-server,{','.join(self.dns)}")
        return args


@dataclass(frozen=True)
class DhcpLease:
    """A lease as the kernel shows it: the address on the interface, the default route."""

    ifname: str
    address: str
    prefixlen: int
    gateway: str
    #: Metric of the default route (0 when dhclient-script set none).
    metric: int


class DhcpServer:
    """dnsmasq serving a :class:`DhcpPool` on one interface of a lab namespace."""

    def __init__(self, lab: Lab, ns: str, ifname: str, pool: DhcpPool) -> None:
        self.lab, self.ns, self.ifname, self.pool = lab, ns, ifname, pool
        self.workdir = lab.tempdir(f"dnsmasq-{ifname}")
        self._proc: subprocess.Popen[bytes] | None = None
        self._starts = 0

    @property
    def log_path(self) -> Path:
        return self.workdir / "dnsmasq.log"

    def start(self) -> None:
        """Start dnsmasq in the foreground; a fresh lease file each time (a new server)."""
        if self._proc is not None:
            raise LabError(f"dnsmasq already runs on {self.ns}/{self.ifname}")
        self._starts += 1
        argv = [
            "dnsmasq", "--keep-in-foreground", "--conf-file=/dev/null", "--port=0",
            f"--interface={self.ifname}", "--bind-interfaces", "--dhcp-authoritative",
            "--no-ping", "--log-dhcp", f"--log-facility={self.log_path}",
            f"--dhcp-leasefile={self.workdir / f'leases{self._starts}'}",
            f"--pid-file={self.workdir / 'dnsmasq.pid'}",
            *self.pool.dnsmasq_args(),
        ]  # fmt: skip
        self._proc = self.lab.spawn(self.ns, argv, stderr=subprocess.DEVNULL)

    def stop(self) -> None:
        """Stop dnsmasq; leases already handed out stay on the clients until they renew."""
        if self._proc is not None:
            self.lab.stop(self._proc)
            self._proc = None

    def renumber(self, pool: DhcpPool) -> None:
        """Move the link to *pool*: the server's address changes and it restarts with the new range.

        Clients keep their old address until their next renewal fails;
        they then rebind, are refused (NAK) and take a lease from *pool*.
        """
        self.stop()
        self.lab.ip(self.ns, "addr", "del", self.pool.gateway, "dev", self.ifname)
        self.lab.addr(self.ns, self.ifname, pool.gateway)
        self.pool = pool
        self.start()


def serve_dhcp(lab: Lab, ns: str, ifname: str, pool: DhcpPool) -> DhcpServer:
    """Give *ifname* in *ns* the pool's gateway address and serve the pool there."""
    lab.addr(ns, ifname, pool.gateway)
    server = DhcpServer(lab, ns, ifname, pool)
    server.start()
    return server


def _netns_etc(ns: str) -> Path:
    """Create the ``/etc/netns/NS`` overlay (own resolv.conf, only the lab's hook), once per ns.

    :func:`~markroute.lab.netns.cleanup` removes it with the namespace.
    """
    overlay = NETNS_ETC / ns
    if overlay.exists():
        return overlay
    hooks = overlay / "dhcp" / "dhclient-enter-hooks.d"
    hooks.mkdir(parents=True)
    (hooks / "markroute-lab").write_text(_ENTER_HOOK)
    (overlay / "resolv.conf").write_text(f"# resolver of lab namespace {ns}\n")
    return overlay


class DhcpClient:
    """ISC dhclient on one interface of a lab namespace, with the real dhclient-script.

    *metric*, when given, is passed as ``IF_METRIC`` (as ifupdown does) and
    becomes the metric of the default route the script installs; two
    clients in one namespace need different metrics, otherwise the second
    default route is refused (the script hides the error).
    """

    def __init__(self, lab: Lab, ns: str, ifname: str, metric: int | None = None) -> None:
        self.lab, self.ns, self.ifname, self.metric = lab, ns, ifname, metric
        self.workdir = lab.tempdir(f"dhclient-{ifname}")
        (self.workdir / "dhclient.conf").write_text(_DHCLIENT_CONF)
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def log_path(self) -> Path:
        return self.workdir / "dhclient.log"

    def _argv(self, *action: str) -> list[str]:
        """dhclient with this client's files; *action* is ``-d`` (run) or ``-r``/``-x``."""
        env = ["-e", f"IF_METRIC={self.metric}"] if self.metric is not None else []
        return [
            "dhclient", *action, "-v", "-4",
            "-cf", str(self.workdir / "dhclient.conf"),
            "-lf", str(self.workdir / "dhclient.leases"),
            "-pf", str(self.workdir / "dhclient.pid"),
            "-sf", DHCLIENT_SCRIPT, *env, self.ifname,
        ]  # fmt: skip

    def start(self) -> None:
        """Start dhclient in the foreground; it configures the interface once it has a lease."""
        if self._proc is not None:
            raise LabError(f"dhclient already runs on {self.ns}/{self.ifname}")
        _netns_etc(self.ns)
        with self.log_path.open("ab") as log:
            self._proc = self.lab.spawn(self.ns, self._argv("-d"), stderr=log)

    def _end(self, action: str) -> None:
        """Let ``dhclient -r``/``-x`` stop the running client and run the script's cleanup."""
        if self._proc is None:
            raise LabError(f"dhclient does not run on {self.ns}/{self.ifname}")
        with self.log_path.open("ab") as log:
            log.write(f"--- dhclient {action}\n".encode())
        result = self.lab.run(self.ns, self._argv(action), check=False, timeout=30)
        with self.log_path.open("a") as log:
            log.write(result.stderr)
        self.lab.stop(self._proc)
        self._proc = None
        if result.returncode != 0:
            raise LabError(f"dhclient {action} failed on {self.ns}/{self.ifname}: {result.stderr}")

    def release(self) -> None:
        """Release the lease (DHCPRELEASE to the server) and stop; the address is removed."""
        self._end("-r")

    def stop(self) -> None:
        """Stop without telling the server, as on shutdown; the script removes the address."""
        self._end("-x")

    def lease(self) -> DhcpLease | None:
        """The lease the kernel shows now (address and default route on the interface), or None."""
        found = addresses(self.lab, self.ns, self.ifname)
        routes = default_routes(self.lab, self.ns, self.ifname)
        if not found or not routes:
            return None
        return _lease(self.ifname, found[0], routes[0])

    def wait_lease(self, gateway: str | None = None, timeout: float = 15.0) -> DhcpLease:
        """Wait until the interface has an address and a default route (via *gateway* if given)."""

        def check() -> DhcpLease | None:
            lease = self.lease()
            if lease is None or (gateway is not None and lease.gateway != gateway):
                return None
            if len(addresses(self.lab, self.ns, self.ifname)) != 1:
                return None  # the old address of a renumbered lease is still there
            return lease

        what = f"a DHCP lease on {self.ns}/{self.ifname}" + (f" via {gateway}" if gateway else "")
        return wait_until(check, timeout, what, seen=self.describe)

    def wait_no_lease(self, timeout: float = 15.0) -> None:
        """Wait until no address and no default route are left on the interface."""

        def check() -> bool | None:
            gone = not addresses(self.lab, self.ns, self.ifname)
            return True if gone and not default_routes(self.lab, self.ns, self.ifname) else None

        wait_until(check, timeout, f"the lease on {self.ns}/{self.ifname} to go", seen=self.describe)

    def describe(self) -> str:
        """Addresses, default routes and the client's log: what a failed wait shows."""
        log = self.log_path.read_text() if self.log_path.exists() else ""
        return (
            f"addresses {addresses(self.lab, self.ns, self.ifname)}, "
            f"defaults {default_routes(self.lab, self.ns, self.ifname)}, dhclient log:\n{log}"
        )


def _lease(ifname: str, address: dict[str, Any], route: dict[str, Any]) -> DhcpLease:
    return DhcpLease(
        ifname=ifname,
        address=address["local"],
        prefixlen=int(address["prefixlen"]),
        gateway=route["gateway"],
        metric=int(route.get("metric", 0)),
    )
