"""Domain sets filled by a real dnsmasq on the router, from answers to a LAN client's queries.

`net` runs a dnsmasq serving the test zone (stream.test, other.test) on 203.0.113.53;
the router runs the LAN's resolver, a dnsmasq forwarding to it with the `nftset=` file
markroute wrote (dnsmasq fills nftsets only from answers it forwarded). The server's
view of a connection's source tells which ISP carried it.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import pytest
from daemon_helpers import DaemonLab, dlab  # noqa: F401 (dlab: a fixture)
from kernelhelp import markroute

from markroute.lab import Lab, router_lab
from markroute.lab.dns import ask, forwarder, serve_zone

pytestmark = pytest.mark.kernel
PORT = 7000
ZONE_SERVER = "203.0.113.53"
LIFETIME = 12  # seconds: long enough for the steps after one resolution, short for the test to wait out


def isps(r: Any, lab: Lab, address: str) -> dict[int | None, int]:
    counts: dict[int | None, int] = r.isp_counts(lab.probe(r.lan, "tcp", address, PORT, count=4)["seen"])
    return counts


def test_dnsmasq_fills_a_domain_set_and_its_uplink_follows(lab: Lab, markroute_cli: Any, tmp_path: Path) -> None:
    r = router_lab(lab, isps=2)
    lab.serve_echo(r.net, PORT)
    lab.addr(r.net, "lo", f"{ZONE_SERVER}/32")
    zone_dir, router_dir = tmp_path / "zone", tmp_path / "router"
    zone_dir.mkdir()
    router_dir.mkdir()
    serve_zone(lab, r.net, zone_dir, ZONE_SERVER, {"stream.test": r.server, "other.test": r.server_alt}, ttl=2)
    conf, marker = router_dir / "markroute-dnsmasq.conf", tmp_path / "restarted"
    config = r.uplinks_yaml(["isp_a", "isp_b"]) + f"""
sets:
  streaming: {{domains: [stream.test], timeout: {LIFETIME}s}}
policies:
  - {{name: streaming, to: "@streaming", via: isp_b}}
settings:
  dns: dnsmasq
  dnsmasq_conf: {conf}
  dnsmasq_restart: [{sys.executable}, -c, "open('{marker}', 'a').write('restart ')"]
"""
    markroute_cli.apply(r.rtr, config)
    assert conf.read_text().splitlines()[1] == (
        "nftset=/stream.test/4#inet#markroute#streaming_v4,6#inet#markroute#streaming_v6")
    assert marker.read_text() == "restart ", "the file changed: dnsmasq_restart ran once"
    forwarder(lab, r.rtr, router_dir, r.rtr_lan_v4, ZONE_SERVER, conf)
    assert isps(r, lab, r.server) == {0: 4}, "nothing resolved yet: main (isp_a)"

    assert ask(lab, r.lan, r.rtr_lan_v4, "www.stream.test") == [(r.server, 2)]
    resolved = time.monotonic()
    assert isps(r, lab, r.server) == {1: 4}, "an address of a name below stream.test: isp_b"
    assert ask(lab, r.lan, r.rtr_lan_v4, "other.test") == [(r.server_alt, 2)]
    assert isps(r, lab, r.server_alt) == {0: 4}, "another name: main"
    report = markroute_cli.status(r.rtr)
    assert report["dynamic_sets"]["streaming_v4"] == 1 and report["drift"] == []

    assert "already up to date" in markroute_cli.apply(r.rtr, config)
    assert marker.read_text() == "restart ", "an unchanged file does not restart dnsmasq"
    assert isps(r, lab, r.server) == {1: 4}, "a second apply kept the learned element"

    time.sleep(LIFETIME + 1 - (time.monotonic() - resolved))
    assert markroute_cli.status(r.rtr)["dynamic_sets"]["streaming_v4"] == 0, "the element expired"
    assert isps(r, lab, r.server) == {0: 4}
    assert ask(lab, r.lan, r.rtr_lan_v4, "stream.test") == [(r.server, 2)]
    assert isps(r, lab, r.server) == {1: 4}, "resolving again adds it again"
    markroute_cli.down(r.rtr)


def test_dnsmasq_fills_the_ipv6_half_from_aaaa_answers(lab: Lab, markroute_cli: Any, tmp_path: Path) -> None:
    r = router_lab(lab, isps=2, ipv6=True)
    assert r.server6 is not None and r.client_v6 is not None and r.rtr_lan_v6 is not None
    lab.serve_echo(r.net, PORT)
    lab.addr(r.net, "lo", f"{ZONE_SERVER}/32")
    zone_dir, router_dir = tmp_path / "zone", tmp_path / "router"
    zone_dir.mkdir()
    router_dir.mkdir()
    serve_zone(lab, r.net, zone_dir, ZONE_SERVER, {"stream.test": r.server6}, ttl=60)
    conf = router_dir / "markroute-dnsmasq.conf"
    markroute_cli.apply(r.rtr, r.uplinks_yaml(["isp_a", "isp_b"]) + f"""
sets:
  streaming: {{domains: [stream.test]}}
policies:
  - {{name: streaming, to: "@streaming", via: isp_b}}
settings: {{dns: dnsmasq, dnsmasq_conf: {conf}}}
""")
    forwarder(lab, r.rtr, router_dir, r.rtr_lan_v4, ZONE_SERVER, conf)

    def v6_isps() -> dict[int | None, int]:
        counts: dict[int | None, int] = r.isp_counts(lab.probe(r.lan, "tcp", r.server6, PORT, count=4)["seen"])
        return counts

    assert v6_isps() == {0: 4}
    assert ask(lab, r.lan, r.rtr_lan_v4, "stream.test", version=6) == [(r.server6, 60)]
    assert v6_isps() == {1: 4}, "the AAAA answer went into streaming_v6"
    report = markroute_cli.status(r.rtr)
    assert report["dynamic_sets"]["streaming_v6"] == 1 and report["dynamic_sets"]["streaming_v4"] == 0
    markroute_cli.down(r.rtr)


def test_check_refuses_dnsmasq_without_its_file(tmp_path: Path) -> None:
    path = tmp_path / "markroute.yaml"
    path.write_text("uplinks:\n  a: {interface: eth0, gateway: 10.0.0.1}\nsettings:\n  dns: dnsmasq\n")
    proc = markroute("check", "-c", str(path))
    assert proc.returncode == 1 and "dns: dnsmasq needs 'dnsmasq_conf:'" in proc.stderr, proc.stderr


def test_run_resolves_the_names_itself_and_renews_them(dlab: DaemonLab, tmp_path: Path) -> None:  # noqa: F811
    """The built-in resolver (`dns: markroute`) asks the router's dnsmasq, which forwards to the zone."""
    d, r = dlab, dlab.router
    lab = r.lab
    lab.addr(r.net, "lo", f"{ZONE_SERVER}/32")
    zone_dir, router_dir = tmp_path / "zone", tmp_path / "router"
    zone_dir.mkdir()
    router_dir.mkdir()
    serve_zone(lab, r.net, zone_dir, ZONE_SERVER, {"stream.test": r.server}, ttl=2)
    empty = router_dir / "empty.conf"
    empty.write_text("")
    forwarder(lab, r.rtr, router_dir, r.rtr_lan_v4, ZONE_SERVER, empty)
    path = d.write(r.uplinks_yaml(["isp_a", "isp_b"]) + f"""
sets:
  streaming: {{domains: [stream.test], timeout: 30s}}
policies:
  - {{name: streaming, to: "@streaming", via: isp_b}}
settings:
  dns_server: {r.rtr_lan_v4}
""")
    d.start(path)
    deadline = time.monotonic() + 15
    while r.server not in (elements := listed(d.rtr)):
        assert time.monotonic() < deadline, d.log()
        time.sleep(0.2)
    assert d.isp_of(set(lab.probe(r.lan, "tcp", r.server, d.port, count=4)["seen"])) == {1}
    first = elements[r.server]
    time.sleep(12)  # past the TTL (2 s; asked again after MIN_REFRESH = 5 s plus the queries' time)
    renewed = listed(d.rtr)[r.server]
    assert first is not None and renewed is not None and renewed > first - 12 + 3, (first, renewed, d.log())


def listed(ns: str) -> dict[str, int | None]:
    import json

    proc = markroute("set", "list", "streaming", "--netns", ns, "--json")
    assert proc.returncode == 0, proc.stderr
    return {row["element"]: row["expires"] for row in json.loads(proc.stdout)}
