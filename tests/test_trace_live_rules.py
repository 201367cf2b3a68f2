"""Live traces read the kernel's ip rules with every selector they carry."""

from __future__ import annotations

import json

import pytest
from kernelhelp import markroute

from markroute.lab import Lab


@pytest.mark.kernel
def test_live_rules_keep_their_protocol_port_and_uid_selectors(lab: Lab) -> None:
    """A live rule with ipproto/ports/uidrange must only catch what it selects, as in the kernel."""
    ns = lab.add_ns("sel")
    lab.veth(ns, "lan0", lab.add_ns("peer2"), "eth0")
    lab.veth(ns, "wan0", lab.add_ns("peer3"), "eth0")
    lab.addr(ns, "lan0", "192.168.1.1/24")
    lab.addr(ns, "wan0", "10.0.0.2/24")
    lab.forwarding(ns)
    lab.route(ns, "default", "via", "10.0.0.1")
    lab.ip(ns, "rule", "add", "pref", "100", "ipproto", "tcp", "sport", "1000-2000", "dport", "25",
           "blackhole")
    lab.ip(ns, "rule", "add", "pref", "101", "uidrange", "1000-1999", "unreachable")
    base = ["trace", "--live", "--netns", ns, "--to", "203.0.113.5", "--proto", "tcp", "--dport", "25", "--json"]
    verdicts = {}
    for name, extra in (("mail", ["--from", "192.168.1.10", "--iif", "lan0", "--sport", "1500"]),
                        ("other port", ["--from", "192.168.1.10", "--iif", "lan0", "--sport", "3000"]),
                        ("forwarded, uid 0", ["--from", "192.168.1.10", "--iif", "lan0", "--sport", "999"]),
                        ("local socket", ["--from", "10.0.0.2", "--local", "--sport", "3000"])):
        proc = markroute(*base, *extra)
        assert proc.returncode == 0, proc.stderr
        verdicts[name] = json.loads(proc.stdout)["verdict"]
    assert verdicts == {"mail": "drop", "other port": "forward", "forwarded, uid 0": "forward",
                        "local socket": "indeterminate"}
