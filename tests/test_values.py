"""The scalar parsers of `markroute.values`: what they accept, what they return, and that
everything else is a `ValueError` with a message naming the bad value (never another
exception, whatever type YAML produced)."""

from __future__ import annotations

import ipaddress
from typing import Any

import pytest

from markroute import values as v
from markroute.values import AddressList

ODD_TYPES: tuple[Any, ...] = (None, True, False, 1.5, -3, 2**70, "", "   ", "x y", "😀", "0x", "--", "-", "/")


@pytest.mark.parametrize(
    "parse",
    [v.parse_address, v.parse_port, v.parse_protocol, v.parse_mac, v.parse_dscp, v.parse_mark, v.parse_table,
     v.parse_interface, v.parse_ip, v.parse_weight, v.parse_bool, v.parse_seconds, v.parse_fraction,
     v.parse_probe_target, v.parse_policy_name, lambda x: v.parse_gateway(x, 4), lambda x: v.parse_whole(x, 1, 9)],
    ids=["address", "port", "protocol", "mac", "dscp", "mark", "table", "interface", "ip", "weight", "bool",
         "seconds", "fraction", "probe", "policy_name", "gateway", "whole"],
)
@pytest.mark.parametrize("value", ODD_TYPES, ids=repr)
def test_parsers_answer_any_value_with_a_result_or_a_value_error(parse: Any, value: Any) -> None:
    try:
        result = parse(value)
    except ValueError as exc:
        assert str(exc)
    else:
        assert result is not None


@pytest.mark.parametrize(("text", "version", "interval"), [
    ("192.0.2.1", 4, (0xC0000201, 0xC0000201)),
    ("192.0.2.0/24", 4, (0xC0000200, 0xC00002FF)),
    (" 192.0.2.0/31 ", 4, (0xC0000200, 0xC0000201)),
    ("192.0.2.10-192.0.2.20", 4, (0xC000020A, 0xC0000214)),
    ("192.0.2.10 - 192.0.2.20", 4, (0xC000020A, 0xC0000214)),
    ("2001:db8::/32", 6, (0x20010DB8 << 96, (0x20010DB8 << 96) + 2**96 - 1)),
    ("::1", 6, (1, 1)),
    ("0.0.0.0/0", 4, (0, 2**32 - 1)),
])
def test_parse_address(text: str, version: int, interval: tuple[int, int]) -> None:
    assert v.parse_address(text) == (version, interval)


@pytest.mark.parametrize(("text", "message"), [
    ("192.0.2.1/24", "'192.0.2.1/24' has host bits set; the network is 192.0.2.0/24"),
    ("192.0.2.9-192.0.2.1", "range '192.0.2.9-192.0.2.1' ends before it starts"),
    ("192.0.2.1-2001:db8::1", "range '192.0.2.1-2001:db8::1' mixes IPv4 and IPv6"),
    ("192.0.2.300", "'192.0.2.300' is not an IP address, prefix or range"),
    ("not-a-prefix", "'not-a-prefix' is not an IP address, prefix or range"),
    ("192.0.2.0/33", "'192.0.2.0/33' is not an IP address, prefix or range"),
])
def test_parse_address_rejects(text: str, message: str) -> None:
    with pytest.raises(ValueError) as raised:
        v.parse_address(text)
    assert str(raised.value) == message


def test_merge_joins_overlapping_and_adjacent_intervals() -> None:
    assert v.merge([(10, 20), (1, 3), (4, 5), (15, 30), (40, 40)]) == ((1, 5), (10, 30), (40, 40))
    assert v.merge([]) == ()


def test_address_list_splits_families_and_merges() -> None:
    items = [v.parse_address(t) for t in ("192.0.2.0/25", "192.0.2.128/25", "2001:db8::1", "198.51.100.7")]
    addresses = v.address_list(items)

    assert list(addresses.v4) == [v.parse_address("192.0.2.0/24")[1], v.parse_address("198.51.100.7")[1]]
    assert list(addresses.v6) == [v.parse_address("2001:db8::1")[1]]
    assert addresses.versions == frozenset({4, 6})
    assert len(addresses) == 3


@pytest.mark.parametrize(("version", "interval", "text"), [
    (4, (0xC0000200, 0xC00002FF), "192.0.2.0/24"),
    (4, (0xC0000201, 0xC0000201), "192.0.2.1"),
    (4, (0xC0000201, 0xC0000202), "192.0.2.1-192.0.2.2"),
    (4, (0xC0000200, 0xC0000202), "192.0.2.0-192.0.2.2"),
    (6, (0, 2**128 - 1), "::/0"),
])
def test_parse_address_reads_each_shortest_form(version: int, interval: tuple[int, int], text: str) -> None:
    assert v.parse_address(text) == (version, interval)


def test_covers() -> None:
    wide = v.address_list([v.parse_address("10.0.0.0/8"), v.parse_address("2001:db8::/32")])
    narrow = v.address_list([v.parse_address("10.1.0.0/16"), v.parse_address("10.2.3.4")])
    straddling = v.address_list([v.parse_address("9.255.255.255-10.0.0.1")])

    assert wide.covers(narrow)
    assert not narrow.covers(wide)
    assert not wide.covers(straddling)
    assert wide.covers(AddressList())
    assert not narrow.covers(v.address_list([v.parse_address("2001:db8::1")]))


@pytest.mark.parametrize(("value", "interval"), [
    (80, (80, 80)), ("443", (443, 443)), ("8000-8080", (8000, 8080)), ("1 - 2", (1, 2)), (65535, (65535, 65535)),
])
def test_parse_port(value: Any, interval: tuple[int, int]) -> None:
    assert v.parse_port(value) == interval


@pytest.mark.parametrize(("value", "message"), [
    (0, "port 0 is out of range 1-65535"),
    (70000, "port 70000 is out of range 1-65535"),
    ("90-80", "port range 90-80 ends before it starts"),
    ("http", "'http' is not a port or port range (expected N or A-B)"),
    (True, "'true' is not a port or port range (expected N or A-B)"),
    (80.0, "'80.0' is not a port or port range (expected N or A-B)"),
])
def test_parse_port_rejects(value: Any, message: str) -> None:
    with pytest.raises(ValueError) as raised:
        v.parse_port(value)
    assert str(raised.value) == message


@pytest.mark.parametrize(("value", "number"), [("tcp", 6), ("UDP", 17), ("icmpv6", 58), (47, 47), ("132", 132)])
def test_parse_protocol(value: Any, number: int) -> None:
    assert v.parse_protocol(value) == number


def test_parse_protocol_suggests_a_name() -> None:
    with pytest.raises(ValueError, match="unknown protocol 'tpc'; did you mean 'tcp'"):
        v.parse_protocol("tpc")
    with pytest.raises(ValueError, match="out of range 0-255"):
        v.parse_protocol(256)


def test_parse_mac_normalises() -> None:
    assert v.parse_mac("52-54-00-C2-A5-43") == "52:54:00:c2:a5:43"
    for bad in ("52:54:00:c2:a5", "52:54:00:c2:a5:4g", "52:54-00:c2:a5:43", 525400123456):
        with pytest.raises(ValueError, match="is not a MAC address"):
            v.parse_mac(bad)


@pytest.mark.parametrize(("value", "number"), [("ef", 46), ("af41", 34), ("CS1", 8), (0, 0), ("63", 63), ("le", 1)])
def test_parse_dscp(value: Any, number: int) -> None:
    assert v.parse_dscp(value) == number


def test_parse_dscp_rejects() -> None:
    with pytest.raises(ValueError, match="DSCP 64 is out of range 0-63"):
        v.parse_dscp(64)
    with pytest.raises(ValueError, match="unknown DSCP class 'af51'"):
        v.parse_dscp("af51")


def test_parse_mark_and_table() -> None:
    assert v.parse_mark("0xff00") == 0xFF00
    assert v.parse_mark(65280) == 0xFF00
    assert v.parse_mark("0o17") == 15
    assert v.parse_table(100) == 100
    with pytest.raises(ValueError, match="does not fit in 32 bits"):
        v.parse_mark(2**32)
    with pytest.raises(ValueError, match="does not fit in 32 bits"):
        v.parse_mark(-1)
    with pytest.raises(ValueError, match="not a whole number"):
        v.parse_mark(1.0)
    for table, name in ((0, "unspec"), (253, "default"), (254, "main"), (255, "local")):
        with pytest.raises(ValueError, match=f"kernel's '{name}' table"):
            v.parse_table(table)


def test_parse_interface() -> None:
    assert v.parse_interface("eth0.100") == "eth0.100"
    assert v.parse_interface("wg-home") == "wg-home"
    for bad in ("", "a" * 16, "eth 0", "eth0:1", "a/b", True):
        with pytest.raises(ValueError, match="is not a valid interface name"):
            v.parse_interface(bad)
    with pytest.raises(ValueError, match="nftables reads as a set name"):
        v.parse_interface("@set")


def test_parse_gateway_names_the_other_key() -> None:
    assert v.parse_gateway("192.0.2.1", 4) == "192.0.2.1"
    assert v.parse_gateway("2001:DB8::1", 6) == "2001:db8::1"
    with pytest.raises(ValueError, match="2001:db8::1 is IPv6; write it as 'gateway6:'"):
        v.parse_gateway("2001:db8::1", 4)
    with pytest.raises(ValueError, match="192.0.2.1 is IPv4; write it as 'gateway:'"):
        v.parse_gateway("192.0.2.1", 6)


@pytest.mark.parametrize(("value", "message"), [
    (0, "'0' is not a positive whole number"),
    (-2, "'-2' is not a positive whole number"),
    (1.5, "'1.5' is not a positive whole number"),
    (True, "'true' is not a positive whole number"),
    ("3", "'3' is text, not a number; remove the quotes"),
    (1001, "1001 is too large (at most 1000)"),
])
def test_parse_weight_rejects(value: Any, message: str) -> None:
    with pytest.raises(ValueError) as raised:
        v.parse_weight(value)
    assert str(raised.value) == message


def test_parse_weight_accepts_whole_numbers() -> None:
    assert [v.parse_weight(n) for n in (1, 6, 1000)] == [1, 6, 1000]


def test_durations_and_fractions() -> None:
    assert v.parse_seconds("200ms") == pytest.approx(0.2)
    assert v.parse_seconds("1s") == 1.0
    assert v.parse_seconds(0.5) == 0.5
    assert v.parse_fraction("20%") == pytest.approx(0.2)
    assert v.parse_fraction(0.3) == 0.3
    for bad in (0, -1, "soon", 3601):
        with pytest.raises(ValueError):
            v.parse_seconds(bad)
    for bad in ("120%", 2, "lots", True):
        with pytest.raises(ValueError):
            v.parse_fraction(bad)


@pytest.mark.parametrize("target", ["192.0.2.1", "192.0.2.1:443", "2001:db8::1", "[2001:db8::1]:443", "[2001:db8::1]"])
def test_probe_targets(target: str) -> None:
    assert v.parse_probe_target(target) == target


@pytest.mark.parametrize("target", ["example.org", "192.0.2.1:0", "[2001:db8::1]x", "[2001:db8::1]:99999"])
def test_probe_targets_rejected(target: str) -> None:
    with pytest.raises(ValueError):
        v.parse_probe_target(target)


def test_policy_names() -> None:
    assert v.parse_policy_name("to-cloudflare") == "to-cloudflare"
    assert v.parse_policy_name(42) == "42"
    for bad in ("", 'say "hi"', "back\\slash", "x" * 65, "tab\there", None, True):
        with pytest.raises(ValueError, match="not a usable policy name"):
            v.parse_policy_name(bad)


def test_yaml_text_spells_values_as_yaml_does() -> None:
    assert [v.yaml_text(x) for x in (None, True, False, 3, " a ")] == ["null", "true", "false", "3", "a"]


def test_fast_and_thorough_address_parsing_agree() -> None:
    """Canonical prefixes take a C-library shortcut; it must give exactly what `ipaddress` gives."""
    import random

    rng = random.Random(7)
    texts: list[str] = []
    for _ in range(3000):
        version = rng.choice((4, 6))
        bits = 32 if version == 4 else 128
        length = rng.randrange(bits + 1)
        number = rng.getrandbits(bits)
        if rng.random() < 0.7:  # mostly valid networks, some with host bits set
            number &= ((1 << bits) - 1) ^ ((1 << (bits - length)) - 1)
        address = ipaddress.ip_address(number) if version == 4 else ipaddress.IPv6Address(number)
        texts.append(f"{address}/{length}" if rng.random() < 0.8 else str(address))
    for text in texts:
        try:
            network = ipaddress.ip_network(text, strict=True)
        except ValueError:
            with pytest.raises(ValueError):
                v.parse_address(text)
            continue
        expected = (network.version, (int(network.network_address), int(network.broadcast_address)))
        assert v.parse_address(text) == expected, text


ODD_LINES = [
    "10.0.0.0/8", "10.1.2.3", "10.1.2.3/32", "0.0.0.0/0", "255.255.255.255", "  192.0.2.0/24  # docs",
    "# only a comment", "", "   ", "10.0.0.1/8", "010.0.0.0/8", "10.0.0.0/08", "10.0.0.0/33", "10.0.0.0/-1",
    "10.0.0.0/+8", "10.0.0.0/ 8", "10.0.0.0 /8", "10.0.0.0/8/8", "10.0.0.0/\u0668", "10.0.0.0/2_4", "10.0.0",
    "1.2.3.4-1.2.3.9", "2001:db8::/32", "::ffff:10.0.0.0/104", "::10.0.0.1", "fe80::1%eth0", "10.0.0.256",
    "10.0.0.0/24#no space", "\t198.51.100.7\t", "1.2.3.4.5", "0x0a.0.0.0/8", "10.0.0.0/",
]


def test_bulk_ipv4_lines_agree_with_parse_address() -> None:
    """`ipv4_lines` reads the common set-file line in bulk: what it takes must be exactly what
    `parse_address` gives, and every line it does not take must reach `parse_address`."""
    taken, others = v.ipv4_lines(ODD_LINES)
    assert len(taken) + len(others) == sum(1 for line in ODD_LINES if line.partition("#")[0].strip())
    other_numbers = {number for number, _ in others}
    bulk = iter(taken)
    for number, line in enumerate(ODD_LINES, start=1):
        text = line.partition("#")[0].strip()
        if not text:
            continue
        if number in other_numbers:
            assert dict(others)[number] == text
            continue
        assert v.parse_address(text) == (4, next(bulk)), line
    assert {text for _, text in others} >= {"10.0.0.1/8", "010.0.0.0/8", "10.0.0.0/08", "10.0.0.0/2_4", "2001:db8::/32",
                                           "1.2.3.4-1.2.3.9", "10.0.0.0/\u0668", "::10.0.0.1"}
    assert len(taken) == 5  # lines with a comment or blanks around go the thorough way
