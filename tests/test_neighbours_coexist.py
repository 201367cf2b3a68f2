"""Tailscale and wg-quick beside markroute, and `down` never undoing a neighbour's sysctl.

tailscaled and wg-quick cannot run here (no WireGuard in this kernel, no daemon
allowed to touch the host), so what they install is reproduced exactly with `ip rule`
and `ip route`, the documented values:

* Tailscale: `fwmark 0x80000/0xff0000` rules at 5210 (lookup main), 5230 (lookup
  default), 5250 (unreachable), then `lookup 52` at 5270; table 52 routes the tailnet
  through tailscale0. The tailnet's 100.64.0.0/10 is replaced by 10.64.0.0/16 (the lab
  only uses private and documentation ranges) and tailscale0 is a veth to a "tailnet"
  namespace, so real packets can cross it.
* wg-quick with `AllowedIPs = 0.0.0.0/0`: `ip rule add not fwmark 0xca6c table 51820`,
  `ip rule add table main suppress_prefixlength 0` (no priorities given, as wg-quick
  does: the kernel picks them), `default dev wg0 table 51820`; wg0 is a veth to a "vpn"
  namespace, and the tunnel's own encrypted packets are a UDP socket with SO_MARK 0xca6c.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest
from kernelhelp import markroute, view, write_config

from markroute.lab import Lab, RouterLab, router_lab

pytestmark = pytest.mark.kernel

PORT = 7200
CONFIG = """
uplinks:
  isp0: {interface: wan0, gateway: 10.0.0.1, nat: masquerade}
  isp1: {interface: wan1, gateway: 10.0.1.1, nat: masquerade}
policies:
  - name: lan-via-isp1
    from: 192.168.1.0/24
    to: 203.0.113.0/24
    via: isp1
"""
TAILNET_PEER = "10.64.0.1"
TAILSCALE_RULES = (
    ("5210", "fwmark", "0x80000/0xff0000", "table", "main"),
    ("5230", "fwmark", "0x80000/0xff0000", "table", "default"),
    ("5250", "fwmark", "0x80000/0xff0000", "unreachable"),
    ("5270", "table", "52"),
)
VPN_PEER = "10.99.0.1"
SO_MARK = 36
# A UDP datagram from this host with a socket mark; prints the source the echo server saw ("" if none).
MARKED_SEND = """
import json, socket, sys
mark, host, port = int(sys.argv[1], 0), sys.argv[2], int(sys.argv[3])
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.setsockopt(socket.SOL_SOCKET, 36, mark)
sock.settimeout(1.5)
sock.sendto(b"x", (host, port))
try:
    print(json.loads(sock.recv(2048))["src"])
except OSError:
    print("")
"""


def install_tailscale(lab: Lab, r: RouterLab) -> str:
    tailnet = lab.add_ns("tailnet")
    lab.veth(r.rtr, "tailscale0", tailnet, "ts-peer")
    lab.addr(r.rtr, "tailscale0", "10.64.0.2/32")
    lab.addr(tailnet, "ts-peer", f"{TAILNET_PEER}/32")
    lab.route(tailnet, "10.64.0.2", "dev", "ts-peer")
    lab.route(tailnet, "192.168.1.0/24", "via", "10.64.0.2", "dev", "ts-peer", "onlink")
    for rule in TAILSCALE_RULES:
        lab.ip(r.rtr, "rule", "add", "priority", *rule)
    lab.ip(r.rtr, "route", "add", "10.64.0.0/16", "dev", "tailscale0", "table", "52")
    return tailnet


def install_wg_quick(lab: Lab, r: RouterLab) -> str:
    vpn = lab.add_ns("vpn")
    lab.veth(r.rtr, "wg0", vpn, "wg-peer")
    lab.addr(r.rtr, "wg0", "10.99.0.2/32")
    lab.addr(vpn, "wg-peer", f"{VPN_PEER}/32")
    lab.route(vpn, "10.99.0.2", "dev", "wg-peer")
    lab.route(vpn, "local", "203.0.113.0/24", "dev", "lo")  # the tunnel's far side answers for the "internet"
    lab.route(vpn, "192.168.1.0/24", "via", "10.99.0.2", "dev", "wg-peer", "onlink")
    lab.ip(r.rtr, "route", "add", "default", "dev", "wg0", "table", "51820")
    lab.ip(r.rtr, "rule", "add", "not", "fwmark", "0xca6c", "table", "51820")
    lab.ip(r.rtr, "rule", "add", "table", "main", "suppress_prefixlength", "0")
    return vpn


def marked_source(r: RouterLab, mark: int) -> str:
    done = r.lab.run(r.rtr, [sys.executable, "-c", MARKED_SEND, hex(mark), r.server, str(PORT)])
    return done.stdout.strip()


def neighbours_view(lab: Lab, r: RouterLab) -> dict[str, object]:
    seen = view(lab, r.rtr, foreign_only=True)
    return {"rules": seen["rules"], "routes": [route for route in seen["routes"] if route.get("table") in ("52", "51820")]}


def test_tailscale_and_wg_quick_stay_untouched_and_working(lab: Lab, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """wg-quick, then Tailscale, then markroute (a boot order): the kernel puts wg-quick's rules
    (no priority given) just before main, so markroute's band comes before them."""
    r = router_lab(lab)
    r.lab.serve_echo(r.net, PORT)
    vpn = install_wg_quick(lab, r)
    tailnet = install_tailscale(lab, r)
    r.lab.serve_echo(tailnet, PORT, bind="0.0.0.0")
    r.lab.serve_echo(vpn, PORT, bind="0.0.0.0")
    before = neighbours_view(lab, r)
    priorities = {int(rule["priority"]) for rule in before["rules"]}  # type: ignore[index, union-attr]
    assert {5210, 5230, 5250, 5270, 32764, 32765} <= priorities

    monkeypatch.setenv("MARKROUTE_ROOT", str(tmp_path))  # no networkd configuration: not this host's
    config = write_config(tmp_path, CONFIG)
    checked = markroute("check", "--live", "-c", config, "--netns", r.rtr)
    assert checked.returncode == 0 and "warning" not in checked.stderr, checked.stderr
    assert markroute("apply", "-c", config, "--netns", r.rtr).returncode == 0
    assert neighbours_view(lab, r) == before

    # markroute's policy: the LAN's traffic to 203.0.113.0/24 leaves by isp1.
    assert r.which_isp(next(iter(r.lab.probe(r.lan, "udp", r.server, PORT)["seen"]))) == 1
    # Tailscale: the tailnet through tailscale0, and tailscaled's own marked packets bypass it via main.
    assert r.lab.probe(r.lan, "udp", TAILNET_PEER, PORT)["ok"] == 1
    assert r.which_isp(marked_source(r, 0x80000)) == 0
    # wg-quick: its encrypted packets (mark 0xca6c) reach the endpoint by main's default route
    # (the tunnel would loop them); the router's other traffic goes through the tunnel.
    assert r.which_isp(marked_source(r, 0xCA6C)) == 0
    assert marked_source(r, 0) == "10.99.0.2"
    code = markroute("status", "--netns", r.rtr).returncode
    assert code == 0

    assert markroute("down", "--netns", r.rtr).returncode == 0
    assert neighbours_view(lab, r) == before


def test_wg_quick_up_after_markroute_is_named_by_check_and_status(lab: Lab, tmp_path: Path) -> None:
    """wg-quick up after markroute: the kernel gives its rules priorities before markroute's band.

    Its `not fwmark 0xca6c` compares the whole mark, so every packet markroute marks goes
    into the tunnel: the warning names that rule, and a real packet shows it is true.
    """
    r = router_lab(lab)
    r.lab.serve_echo(r.net, PORT)
    config = write_config(tmp_path, CONFIG)
    assert markroute("apply", "-c", config, "--netns", r.rtr).returncode == 0
    vpn = install_wg_quick(lab, r)
    r.lab.serve_echo(vpn, PORT, bind="0.0.0.0")
    rules = json.loads(lab.run(r.rtr, ["ip", "-j", "rule"]).stdout)
    wg = next(rule for rule in rules if "not" in rule)
    assert int(wg["priority"]) < 10000

    checked = markroute("check", "--live", "-c", config, "--netns", r.rtr)
    assert checked.returncode == 0
    assert re.search(rf"{wg['priority']}: not from all fwmark 0xca6c lookup 51820`? \(wg-quick\)", checked.stderr), \
        checked.stderr
    status = markroute("status", "--netns", r.rtr, "--json")
    assert status.returncode == 5
    problems = json.loads(status.stdout)["neighbours"]
    assert any(p["kind"] == "reroute" and "fwmark 0xca6c lookup 51820" in p["rule"] for p in problems), problems
    seen = r.lab.probe(r.lan, "udp", r.server, PORT)["seen"]
    assert set(seen) == {r.client_v4}, "the LAN's traffic went into the tunnel (not NATed by an uplink), as warned"


def test_down_leaves_forwarding_on_and_a_neighbours_sysctl_alone(lab: Lab, tmp_path: Path) -> None:
    r = router_lab(lab)
    lab.sysctls(r.rtr, {"net.ipv4.ip_forward": "0", "net.ipv4.conf.wan0.src_valid_mark": "0",
                        "net.ipv4.conf.wan1.rp_filter": "0"})
    applied = markroute("apply", "-c", write_config(tmp_path, CONFIG), "--netns", r.rtr)
    assert applied.returncode == 0
    assert "ip_forward: 0 -> 1" in applied.stdout
    # A neighbour (dockerd, a VPN) needs forwarding and writes the same 1; another one changes rp_filter.
    lab.sysctls(r.rtr, {"net.ipv4.ip_forward": "1", "net.ipv4.conf.wan1.rp_filter": "1"})

    done = markroute("down", "--netns", r.rtr)
    assert done.returncode == 0, done.stderr
    values = view(lab, r.rtr)["sysctls"]
    assert values["net.ipv4.ip_forward"] == "1"
    assert "sysctl -w net.ipv4.ip_forward=0" in done.stderr
    assert values["net.ipv4.conf.wan1.rp_filter"] == "1"
    assert "net.ipv4.conf.wan1.rp_filter was changed by someone else" in done.stderr
    assert values["net.ipv4.conf.wan0.src_valid_mark"] == "0"  # markroute's own value, untouched by others: restored
