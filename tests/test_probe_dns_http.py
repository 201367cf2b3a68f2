"""`method: dns` and `method: http` against real servers in the lab (dnsmasq serving a
name, python's http.server), both in `net`, reached through the ISPs: each uplink's
probes reach them only through that uplink."""

from __future__ import annotations

import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest
from daemon_helpers import DaemonLab, dlab  # noqa: F401 (dlab: a fixture)

from markroute.lab.netns import LabError
from markroute.probes import dns, http

RESOLVER, WEB = "203.0.113.53", "203.0.113.80"  # answered by `net` (AnyIP)
NAME, ADDRESS = "probe.test", "192.0.2.7"
CONFIG = f"""
uplinks:
  isp_a:
    interface: wan0
    gateway: 10.0.0.1
    nat: masquerade
    check: {{method: dns, targets: ["{NAME}@{RESOLVER}"], expect: [{ADDRESS}]}}
  isp_b:
    interface: wan1
    gateway: 10.0.1.1
    nat: masquerade
    check: {{method: http, targets: ["http://{WEB}:8080/ok"]}}
groups:
  primary: {{failover: [isp_a, isp_b]}}
policies:
  - {{name: rest, to: 198.18.0.0/15, via: primary}}
"""
TABLE = "mrblockpath"


def serve(d: DaemonLab, workdir: Path) -> None:
    """dnsmasq (answers NAME with ADDRESS, nothing else: no upstream, no host files) and an HTTP server."""
    net = d.router.net
    lab = d.router.lab
    argv = ["dnsmasq", "--keep-in-foreground", "--no-resolv", "--no-hosts", "--conf-file=/dev/null",
            f"--pid-file={workdir / 'dnsmasq.pid'}", f"--address=/{NAME}/{ADDRESS}", "--log-facility=-",
            "--user=root", "--port=53"]
    lab.spawn(net, argv, stderr=subprocess.DEVNULL)
    site = workdir / "site"
    site.mkdir()
    (site / "ok").write_text("ok\n")
    lab.spawn(net, [sys.executable, "-m", "http.server", "--bind", "0.0.0.0", "--directory", str(site), "8080"],
              stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        dig = lab.run(net, ["python3", "-c", "import socket; s=socket.create_connection(('127.0.0.1', 8080), 1)"],
                      check=False)
        if dig.returncode == 0:
            return
        time.sleep(0.1)
    raise LabError("http.server did not start")


@pytest.mark.kernel
def test_dns_and_http_probes_follow_their_own_uplinks_path(dlab: DaemonLab) -> None:  # noqa: F811
    d, r = dlab, dlab.router
    serve(d, d.workdir)
    d.start(d.write(CONFIG))
    d.wait_states({"isp_a": "up", "isp_b": "up"})

    d.kill_upstream(0)  # isp_a's path dies: its DNS probes get no answer, isp_b's HTTP still works
    d.wait_states({"isp_a": "down", "isp_b": "up"})
    d.revive_upstream(0)
    bounced = d.wait_states({"isp_a": "up"}).uplinks["isp_a"].transitions

    # Only the web server's traffic arriving from isp1 is dropped: isp_b goes down, isp_a does not.
    r.lab.nft(r.net, f"table inet {TABLE} {{\n chain input {{\n type filter hook input priority -400;\n"
                     f' iifname "{r.net_isp_ifs[1]}" tcp dport 8080 drop\n }}\n}}\n')
    d.wait_states({"isp_b": "down", "isp_a": "up"})
    assert "isp_b: up -> down (4 probes unanswered)" in d.log()
    time.sleep(0.5)
    assert d.record().uplinks["isp_a"].transitions == bounced


def response(token: int, rcode: int, answers: list[str]) -> bytes:
    """A DNS response to a query for probe.test, with A records."""
    question = dns.query(NAME, token, dns.TYPE_A)[12:]
    header = struct.pack("!HHHHHH", token, 0x8180 | rcode, 1, len(answers), 0, 0)
    records = b"".join(b"\xc0\x0c" + struct.pack("!HHIH", 1, 1, 60, 4) + bytes(map(int, a.split(".")))
                       for a in answers)
    return header + question + records


def test_dns_answers_count_unless_servfail_or_not_the_expected_address() -> None:
    assert dns.judge(response(7, 0, [ADDRESS]), 7, frozenset())
    assert dns.judge(response(7, 3, []), 7, frozenset()), "NXDOMAIN: the resolver is reachable"
    assert not dns.judge(response(7, 2, []), 7, frozenset()), "SERVFAIL"
    assert not dns.judge(response(8, 0, [ADDRESS]), 7, frozenset()), "another query's answer"
    assert dns.judge(response(7, 0, ["192.0.2.1", ADDRESS]), 7, frozenset({ADDRESS}))
    assert not dns.judge(response(7, 0, ["192.0.2.1"]), 7, frozenset({ADDRESS})), "a hijacked answer"


def test_http_status_line_and_targets() -> None:
    assert http.status_of(b"HTTP/1.0 200 OK\r\n") == 200
    assert http.status_of(b"HTTP/1.1 511 Network Auth") is None, "not complete yet"
    assert http.status_of(b"SSH-2.0-OpenSSH\r\n") == 0
    assert http.canonical("http://[2001:DB8::80]:8080/x?y=1") == "http://[2001:db8::80]:8080/x?y=1"
    with pytest.raises(ValueError, match="must be an address"):
        http.parse_target("http://example.com/")
    with pytest.raises(ValueError, match="NAME@RESOLVER"):
        dns.parse_target("192.0.2.53")
    assert dns.canonical("Probe.Test@192.0.2.53") == "probe.test@192.0.2.53:53"
