"""How `markroute explain` reads the connection it is asked about (no kernel needed)."""

from __future__ import annotations

import pytest

from markroute.commands.explain import Wanted, parse_connection


@pytest.mark.parametrize("words, wanted", [
    ("tcp 192.0.2.1:40000 to 198.51.100.1:443", Wanted("tcp", "192.0.2.1", 40000, "198.51.100.1", 443)),
    ("UDP 192.0.2.1 198.51.100.1:53", Wanted("udp", "192.0.2.1", None, "198.51.100.1", 53)),
    ("tcp [2001:db8::1]:40000 to [2001:db8:1::80]:80", Wanted("tcp", "2001:db8::1", 40000, "2001:db8:1::80", 80)),
    ("icmpv6 2001:db8::1 to 2001:db8::2", Wanted("icmpv6", "2001:db8::1", None, "2001:db8::2", None)),
    ("6 192.0.2.1:1 -> 192.0.2.2:2 uplink a policy x", Wanted("6", "192.0.2.1", 1, "192.0.2.2", 2)),
])
def test_connections_are_read_as_flows_prints_them(words: str, wanted: Wanted) -> None:
    assert parse_connection(tuple(words.split())) == wanted


@pytest.mark.parametrize("words, message", [
    ("tcp 192.0.2.1", "PROTO SRC[:PORT] DST[:PORT]"),
    ("tpc 192.0.2.1 192.0.2.2", "not a protocol"),
    ("tcp 192.0.2.300:1 192.0.2.2", "not an IP address"),
    ("tcp 192.0.2.1:70000 192.0.2.2", "out of range"),
])
def test_a_malformed_connection_is_a_usage_error(words: str, message: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        parse_connection(tuple(words.split()))
    assert exited.value.code == 2 and message in capsys.readouterr().err
