"""Real IPv6 router advertisements in the lab: radvd on an ISP link, the kernel as client.

An IPv6 uplink often learns its gateway only from router advertisements:
the kernel of the receiving namespace installs ``default via fe80::... dev IF
proto ra`` in main with the advertised lifetime, and (SLAAC) an address from
the advertised prefix.  The lab runs radvd in the ISP's namespace with a
fixed link-local address, so tests know which gateway to expect, and can
change that address to reproduce a replaced or renumbered ISP router.

radvd only accepts MaxRtrAdvInterval >= 4 s (with MinRtrAdvInterval at most
3/4 of it), so the interval is seconds, not less; radvd advertises at once
when it starts and answers router solicitations, and on SIGTERM sends a
final advertisement with router lifetime 0 so the kernel drops its route.
"""

from __future__ import annotations

import ipaddress
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from markroute.lab.addresses import check_lab_address
from markroute.lab.netns import Lab, LabError
from markroute.lab.watch import default_routes, wait_until

#: radvd's lower bound for MaxRtrAdvInterval (RFC 4861 allows it, radvd enforces it).
MIN_INTERVAL_SECONDS = 4


@dataclass(frozen=True)
class Advertisement:
    """What radvd advertises: an on-link, autonomous *prefix* and itself as default router.

    *interval* is MaxRtrAdvInterval; the default-router lifetime defaults
    to three intervals (RFC 4861's default ratio), so a router that vanishes
    without a goodbye is dropped within seconds.
    """

    prefix: str
    interval: int = MIN_INTERVAL_SECONDS
    router_lifetime: int | None = None

    def __post_init__(self) -> None:
        check_lab_address(self.prefix)
        if ipaddress.ip_network(self.prefix).version != 6:
            raise ValueError(f"{self.prefix} is not an IPv6 prefix")
        if self.interval < MIN_INTERVAL_SECONDS:
            raise ValueError(f"radvd needs an interval of at least {MIN_INTERVAL_SECONDS}s")
        if self.router_lifetime is not None and 0 < self.router_lifetime < self.interval:
            raise ValueError("router_lifetime must be 0 or at least the interval")

    def radvd_conf(self, ifname: str) -> str:
        lifetime = 3 * self.interval if self.router_lifetime is None else self.router_lifetime
        return (
            f"interface {ifname} {{\n"
            "    AdvSendAdvert on;\n"
            f"    MaxRtrAdvInterval {self.interval};\n"
            f"    MinRtrAdvInterval {self.interval * 0.75:g};\n"
            f"    AdvDefaultLifetime {lifetime};\n"
            f"    prefix {self.prefix} {{ AdvOnLink on; AdvAutonomous on; }};\n"
            "};\n"
        )


class RaServer:
    """radvd advertising on one interface of a lab namespace from a known link-local address."""

    def __init__(self, lab: Lab, ns: str, ifname: str, router: str, advert: Advertisement) -> None:
        self.lab, self.ns, self.ifname, self.router, self.advert = lab, ns, ifname, router, advert
        self.workdir = lab.tempdir(f"radvd-{ifname}")
        (self.workdir / "radvd.conf").write_text(advert.radvd_conf(ifname))
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def log_path(self) -> Path:
        return self.workdir / "radvd.log"

    def start(self) -> None:
        """Start radvd in the foreground; it advertises at once."""
        if self._proc is not None:
            raise LabError(f"radvd already runs on {self.ns}/{self.ifname}")
        argv = [
            "radvd", "--nodaemon", "--config", str(self.workdir / "radvd.conf"),
            "--pidfile", str(self.workdir / "radvd.pid"),
            "--logmethod", "logfile", "--logfile", str(self.log_path),
        ]  # fmt: skip
        self._proc = self.lab.spawn(self.ns, argv, stderr=subprocess.DEVNULL)

    def stop(self) -> None:
        """Stop radvd; its final advertisement (lifetime 0) removes the clients' default route."""
        if self._proc is not None:
            self.lab.stop(self._proc)
            self._proc = None

    def change_router(self, router: str, goodbye: bool = True) -> None:
        """Replace the advertising link-local address by *router*.

        With *goodbye*, radvd stops first (its final advertisement withdraws
        the old router) and starts again from the new address, as when the
        ISP's router is replaced cleanly.  Without, radvd simply advertises
        from the new address; clients keep the old default route until its
        lifetime runs out.
        """
        if goodbye:
            self.stop()
        _set_link_local(self.lab, self.ns, self.ifname, router, replace=self.router)
        self.router = router
        if goodbye:
            self.start()


def _set_link_local(lab: Lab, ns: str, ifname: str, router: str, replace: str | None) -> None:
    """Give *ifname* link-local *router*, removing *replace* (or the kernel's EUI-64 one)."""
    if not ipaddress.ip_address(router).is_link_local:
        raise ValueError(f"{router} is not a link-local address")
    if replace is None:
        lab.ip(ns, "-6", "addr", "flush", "dev", ifname, "scope", "link")
    lab.ip(ns, "addr", "add", f"{router}/64", "dev", ifname, "nodad")
    if replace is not None:
        lab.ip(ns, "addr", "del", f"{replace}/64", "dev", ifname)


def serve_ra(
    lab: Lab, ns: str, ifname: str, advert: Advertisement, router: str = "fe80::1"
) -> RaServer:
    """Advertise *advert* on *ifname* in *ns* (which must forward IPv6) from link-local *router*."""
    _set_link_local(lab, ns, ifname, router, replace=None)
    server = RaServer(lab, ns, ifname, router, advert)
    server.start()
    return server


def accept_ra(lab: Lab, ns: str, ifname: str) -> None:
    """Let *ifname* in *ns* take default routes and SLAAC addresses from advertisements.

    ``accept_ra=2``: a forwarding namespace (a router) ignores
    advertisements with the default value 1.
    """
    lab.sysctl(ns, f"net.ipv6.conf.{ifname}.accept_ra", 2)


def wait_ra_default(
    lab: Lab, ns: str, ifname: str, router: str, timeout: float = 15.0
) -> dict[str, Any]:
    """Wait until the only live default route on *ifname* goes via *router*; return it.

    Routes whose lifetime ran out are ignored: the kernel lists them until
    its garbage collection runs, but no longer uses them.
    """

    def check() -> dict[str, Any] | None:
        live = live_ra_defaults(lab, ns, ifname)
        return live[0] if [r["gateway"] for r in live] == [router] else None

    return wait_until(
        check,
        timeout,
        f"default via {router} dev {ifname} in {ns}",
        seen=lambda: default_routes(lab, ns, ifname, ipv6=True),
    )


def live_ra_defaults(lab: Lab, ns: str, ifname: str) -> list[dict[str, Any]]:
    """IPv6 default routes on *ifname* whose lifetime has not run out."""
    return [r for r in default_routes(lab, ns, ifname, ipv6=True) if r.get("expires", 1) > 0]
