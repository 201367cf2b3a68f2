"""Packed IPv4 intervals (`values.Ipv4Intervals`) give the same results as the plain tuples
they replace, at every step from the set file to the kernel.

Each test draws random inputs (sorted and not, overlapping, touching, at both ends of
the address space) and compares the packed path with the plain one that was there
before: reading set-file lines, merging, the netlink element lists (byte for byte), and
the simulator's lookup.
"""

from __future__ import annotations

import base64
import json
import random
import socket

import pytest

from markroute import values
from markroute.kernel import nftnetlink
from markroute.kernel.journal import Undo
from markroute.plan.nftjson import json_default
from markroute.sim.datatypes import Span
from markroute.sim.sets import Lookup
from markroute.values import (
    AddressList,
    Interval,
    Ipv4Intervals,
    _canonical_ipv4,
    _prefix_text,
    interval_changes,
    ipv4_lines,
    ipv4_text,
    merge,
    merge_ipv4,
    parse_address,
)

TOP = (1 << 32) - 1


def random_intervals(rng: random.Random, count: int, spread: int = 1 << 32) -> list[Interval]:
    """COUNT intervals, often overlapping or touching when SPREAD is small; some at the very ends."""
    found = []
    for _ in range(count):
        first = rng.choice((0, rng.randrange(spread), TOP - rng.randrange(300)))
        first = min(first, TOP)
        last = min(TOP, first + rng.choice((0, 1, 255, rng.randrange(1 << rng.randrange(1, 20)))))
        found.append((first, last))
    return found


def sorted_apart(rng: random.Random, count: int, top: bool = False) -> list[Interval]:
    """COUNT sorted intervals with gaps between them (what `merge` leaves), optionally ending at the top."""
    found, at = [], rng.randrange(3)
    for _ in range(count):
        first = at + rng.randrange(2, 50)
        last = first + rng.randrange(300)
        found.append((first, last))
        at = last + 1
    if top:
        found.append((TOP - rng.randrange(1, 100), TOP))
    return found


@pytest.mark.parametrize("seed", range(20))
def test_packed_intervals_behave_as_the_tuple_of_their_intervals(seed: int) -> None:
    rng = random.Random(seed)
    plain = tuple(random_intervals(rng, rng.randrange(12)))
    packed = Ipv4Intervals.of(plain)
    assert len(packed) == len(plain) and bool(packed) == bool(plain)
    assert list(packed) == list(plain) and packed == plain and packed == list(plain)
    for index in range(-len(plain), len(plain)):
        assert packed[index] == plain[index]
    for index in (len(plain), -len(plain) - 1):
        with pytest.raises(IndexError):
            packed[index]
    for cut in (slice(None, None, 2), slice(1, -1), slice(None, None, -1), slice(3, 1)):
        assert packed[cut] == plain[cut]
    assert list(packed.starts) == [first for first, _ in plain] and list(packed.ends) == [last for _, last in plain]
    assert packed.big_endian() == b"".join(n.to_bytes(4, "big") for interval in plain for n in interval)
    assert Ipv4Intervals.from_big_endian(packed.big_endian()) == packed
    other = Ipv4Intervals.of(plain)
    assert other == packed and hash(other) == hash(packed)
    if plain:
        assert packed != plain[:-1] and packed != Ipv4Intervals.of(plain[:-1])


def test_packed_bytes_of_a_wrong_length_are_refused() -> None:
    with pytest.raises(ValueError, match="multiple of 8"):
        Ipv4Intervals.from_big_endian(bytes(12))


@pytest.mark.parametrize("seed", range(30))
def test_packed_merge_is_merge(seed: int) -> None:
    rng = random.Random(seed)
    shape = seed % 3
    if shape == 0:  # unsorted, overlapping and touching
        intervals = random_intervals(rng, rng.randrange(200), spread=rng.choice((1000, 1 << 20, 1 << 32)))
    elif shape == 1:  # already merged: kept as they are
        intervals = sorted_apart(rng, rng.randrange(200), top=rng.random() < 0.5)
    else:  # sorted, but two of them touch or overlap
        intervals = sorted_apart(rng, rng.randrange(2, 200))
        at = rng.randrange(len(intervals) - 1)
        intervals[at + 1] = (intervals[at][1] + rng.choice((0, 1)), intervals[at + 1][1])
    packed = Ipv4Intervals.of(intervals)
    merged = merge_ipv4(packed)
    assert merged == merge(intervals)
    if shape == 1:
        assert merged is packed


def canonical_line(rng: random.Random) -> tuple[str, Interval]:
    length = rng.choice((8, 16, 24, 32, rng.randrange(33)))
    size = 1 << (32 - length)
    first = rng.randrange(1 << 32) // size * size
    address = socket.inet_ntoa(first.to_bytes(4, "big"))
    return (address if length == 32 and rng.random() < 0.5 else f"{address}/{length}"), (first, first + size - 1)


ODD = ["# a comment", "", "  10.0.0.0/8", "10.0.0.1/8", "2001:db8::/32", "1.2.3.4-1.2.3.9", "10.0.0.0/08", "10.0.0.0/",
       "010.0.0.0/8", "10.0.0.0/24 # docs", "10.0.0.0/33", "10.0.0.0/8\r", "10.0.0.0\x00/8", "10.0.0.0/8/8",
       "10.0.0.0/8\x0b10.0.0.0/8"]


@pytest.mark.parametrize("seed", range(20))
def test_lines_read_in_bulk_are_the_lines_read_one_by_one(seed: int) -> None:
    """A piece of canonical lines goes the all-C way; one odd line sends the piece line by line.
    Both give each line's `parse_address` interval, in order, and the odd lines with their numbers."""
    rng = random.Random(seed)
    lines, expected = zip(*(canonical_line(rng) for _ in range(rng.randrange(1, 300))))
    taken, others = ipv4_lines(list(lines), first_number=41)
    assert taken == list(expected) and others == []
    assert _canonical_ipv4(list(lines)) == taken  # no Python step per line
    assert all(parse_address(line) == (4, interval) for line, interval in zip(lines, expected))
    for odd in ODD:
        mixed = list(lines)
        at = rng.randrange(len(mixed) + 1)
        mixed.insert(at, odd)
        taken, others = ipv4_lines(mixed, first_number=41)
        assert _canonical_ipv4(mixed) is None, odd
        assert taken == list(expected)
        text = odd.partition("#")[0].strip()
        assert others == ([(41 + at, text)] if text else []), odd


@pytest.mark.parametrize("seed", range(40))
def test_text_read_in_one_go_is_the_text_read_line_by_line(seed: int) -> None:
    """`ipv4_text` cuts a text of prefix lines at its slashes and newlines; any other text it
    reads as `ipv4_lines` reads its lines: same intervals, odd lines and line count."""
    rng = random.Random(seed)
    lines = [canonical_line(rng)[0] for _ in range(rng.randrange(1, 200))]
    if seed % 2:  # prefixes only: the one-go path must take it
        lines = [line if "/" in line else line + "/32" for line in lines]
    else:
        for _ in range(rng.randrange(3)):
            lines.insert(rng.randrange(len(lines) + 1), rng.choice(ODD + ["10.0.0.0", "", "10.0.0.0/8/"]))
    ending = rng.choice(("\n", "\r\n", "\n\n", ""))
    text = ending.join(lines) + rng.choice((ending, ""))
    if text.endswith("\n\n\n"):
        text = text[:-1]
    found, others, count = ipv4_text(text, first_number=7)
    expected_found, expected_others = ipv4_lines(text.splitlines(), first_number=7)
    assert (found, others, count) == (expected_found, expected_others, len(text.splitlines()))
    if seed % 2 and ending == "\n":
        assert _prefix_text(text) == found


@pytest.mark.parametrize("odd", ["10.0.0.1/8", "0.0.0.1/0", "255.255.255.255/31", "10.0.0.0/33", "10.0.0.256/32"])
def test_one_bad_prefix_among_prefixes_sends_the_text_line_by_line(odd: str) -> None:
    """The one-go path checks every line's host bits and length at once: one bad line
    anywhere among good ones (first, middle, last) makes it decline, and that line alone
    comes back to be worded as an error, numbered where it stands."""
    rng = random.Random(odd)
    lines = [canonical_line(rng)[0] if n % 3 == 0 else "0.0.0.0/0" if n % 3 == 1 else "255.255.255.255/32"
             for n in range(60)]
    lines = [line if "/" in line else line + "/32" for line in lines]
    good, others = ipv4_lines(lines)
    assert len(good) == 60 and not others
    assert _prefix_text("\n".join(lines) + "\n") == good
    for at in (0, 30, 60):
        mixed = lines[:at] + [odd] + lines[at:]
        text = "\n".join(mixed) + "\n"
        assert _prefix_text(text) is None
        found, others, count = ipv4_text(text, first_number=1)
        assert (found, others, count) == (good, [(at + 1, odd)], 61)


def test_packed_ends_carry_within_their_own_address_only() -> None:
    """Each end is its last address plus one, all added at once: an end whose addition carries
    through bytes (x.y.z.255, x.y.255.255, x.255.255.255, 255.255.255.254) must not disturb
    its neighbours, and the open interval at the top, never added to, stays an open element."""
    intervals = [(0, 0xFF), (0x200, 0xFFFF), (0x20000, 0xFFFFFF), (0x2000000, 0x02FFFFFF), (0x04000000, 0x04000000),
                 (0xFF000000, 0xFFFFFFFE)]
    for chosen in (intervals, intervals[:-1] + [(0xFF000000, TOP)]):
        plain = nftnetlink.element_batch("t", [nftnetlink.SetChange("s", 4, added=tuple(chosen))])
        packed = nftnetlink.element_batch("t", [nftnetlink.SetChange("s", 4, added=Ipv4Intervals.of(chosen))])
        assert b"".join(packed.parts) == b"".join(plain.parts)


@pytest.mark.parametrize("count", [0, 1, 1637, 1638, 1639, 3276, 3277, 5000])
@pytest.mark.parametrize("top", [False, True])
def test_packed_element_lists_are_byte_for_byte_the_plain_ones(count: int, top: bool) -> None:
    """Across the boundaries of one attribute's 1,638 elements, with and without an open last interval."""
    rng = random.Random(count * 2 + top)
    intervals = sorted_apart(rng, count, top=top)
    plain = nftnetlink.element_batch("t", [nftnetlink.SetChange("s", 4, added=tuple(intervals))])
    packed = nftnetlink.element_batch("t", [nftnetlink.SetChange("s", 4, added=Ipv4Intervals.of(intervals))])
    assert b"".join(packed.parts) == b"".join(plain.parts)
    assert (packed.count, packed.owners) == (plain.count, plain.owners)
    assert packed.size == len(b"".join(plain.parts))


def test_a_batch_is_built_in_parts_of_a_few_megabytes() -> None:
    intervals = Ipv4Intervals.of(sorted_apart(random.Random(5), 250_000))
    batch = nftnetlink.element_batch("t", [nftnetlink.SetChange("s", 4, added=intervals)])
    assert len(batch.parts) > 1 and max(map(len, batch.parts)) < 2 * nftnetlink.Batch.PART_BYTES
    assert batch.size == sum(map(len, batch.parts)) > 40 * len(intervals)


@pytest.mark.parametrize("seed", range(20))
def test_lookup_of_packed_intervals_finds_what_the_lookup_of_spans_finds(seed: int) -> None:
    rng = random.Random(seed)
    intervals = sorted_apart(rng, rng.randrange(60), top=rng.random() < 0.3)
    keys = [first if first == last else Span(first, last) for first, last in intervals]
    plain, packed = Lookup(keys), Lookup.of_intervals(Ipv4Intervals.of(intervals))
    probes = [p for first, last in intervals for p in (first - 1, first, (first + last) // 2, last, last + 1)]
    probes += [rng.randrange(1 << 32) for _ in range(50)] + [0, TOP, "10.0.0.1", None]
    for probe in probes:
        assert packed.find(probe) == plain.find(probe), probe
    if intervals:
        first, last = intervals[0][0], intervals[-1][1]
        assert sorted(packed.partition(first, last)) == sorted(plain.partition(first, last))


def test_a_nul_in_a_line_is_a_bad_address_not_a_crash() -> None:
    with pytest.raises(ValueError, match="is not an IP address"):
        parse_address("10.0.0.0\x00/8")
    assert ipv4_lines(["10.0.0.0\x00/8"]) == (Ipv4Intervals(), [(1, "10.0.0.0\x00/8")])


@pytest.mark.parametrize("seed", range(20))
def test_packed_covering_is_plain_covering(seed: int) -> None:
    """`AddressList.covers` bisects the packed words in place: the same answers as over tuples."""
    rng = random.Random(seed)
    outer = merge(random_intervals(rng, rng.randrange(1, 40), spread=1 << 16))
    packed = AddressList(v4=Ipv4Intervals.of(outer))
    for _ in range(50):
        inner = merge(random_intervals(rng, rng.randrange(1, 4), spread=1 << 16))
        plain = all(any(lo <= first and last <= hi for lo, hi in outer) for first, last in inner)
        assert packed.covers(AddressList(v4=Ipv4Intervals.of(inner))) == plain


@pytest.mark.parametrize("seed", range(20))
def test_packed_interval_changes_are_the_set_differences(seed: int) -> None:
    """What apply sends for a changed set: the intervals only in the old and only in the new, sorted."""
    rng = random.Random(seed)
    old = sorted_apart(rng, rng.randrange(0, 300), top=rng.random() < 0.3)
    new = [iv for iv in old if rng.random() < 0.9] + [(iv[0], iv[1] + 1) for iv in old[:3] if rng.random() < 0.5]
    new = merge(new + sorted_apart(rng, rng.randrange(0, 20)))
    removed, added = interval_changes(Ipv4Intervals.of(old), Ipv4Intervals.of(merge(new)))
    assert removed == sorted(set(old) - set(new)) and added == sorted(set(new) - set(old))
    assert interval_changes(tuple(old), tuple(new)) == (tuple(sorted(set(old) - set(new))),
                                                       tuple(sorted(set(new) - set(old))))


def test_a_journaled_packed_change_is_written_as_packed_text() -> None:
    """The journal writes a set change's packed intervals with `json_default` as the state record writes
    a set's elements: base64 of the big-endian words (`kernel/journal.py` reads it back)."""
    change = nftnetlink.SetChange("s", 4, removed=Ipv4Intervals.of([(1, 2)]), added=Ipv4Intervals.of([(5, 9), (11, 11)]))
    written = json.loads(json.dumps(Undo.set_update("x", "t", [change]).to_json(), default=json_default))
    added = written["undo"]["args"]["changes"][0]["added"]
    assert base64.b64decode(added) == bytes([0, 0, 0, 5, 0, 0, 0, 9, 0, 0, 0, 11, 0, 0, 0, 11])


def unequal_sides(rng: random.Random) -> tuple[list[Interval], list[Interval]]:
    """Two sets of sorted, disjoint intervals drawn from one universe, one side often far smaller than
    the other or empty; some intervals differ only in their first or their last address."""
    universe = sorted_apart(rng, rng.choice([0, 1, 5, 50, 400, 2000]), top=rng.random() < 0.3)
    shares = sorted([rng.choice([0.0, 0.001, 0.01, 0.2]), rng.choice([0.5, 0.9, 1.0])], reverse=rng.random() < 0.5)
    sides: list[list[Interval]] = []
    for share in shares:
        side = []
        for first, last in universe:
            if rng.random() < share:
                shifted = rng.random() < 0.02
                if shifted and last < TOP:
                    side.append((first, last + 1))  # sorted_apart leaves a gap of 2 or more: still disjoint
                elif shifted and first < last:
                    side.append((first + 1, last))
                else:
                    side.append((first, last))
        sides.append(side)
    return sides[0], sides[1]


@pytest.mark.parametrize("seed", range(60))
@pytest.mark.parametrize("path", ["chosen", "walked", "looked up"])
def test_interval_changes_of_unequal_sides_are_the_set_differences(
    seed: int, path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Whichever way the changes are found (walking both sides, or looking the smaller side's intervals
    up in the bigger: forced here, or as chosen by their sizes), they are the set differences, sorted."""
    if path != "chosen":
        monkeypatch.setattr(values, "_BISECT_RATIO", 0 if path == "looked up" else 1 << 62)
    rng = random.Random(seed)
    old, new = unequal_sides(rng)
    for before, after in ((old, new), (new, old)):
        removed, added = interval_changes(Ipv4Intervals.of(before), Ipv4Intervals.of(after))
        assert isinstance(removed, Ipv4Intervals) and isinstance(added, Ipv4Intervals)
        assert list(removed) == sorted(set(before) - set(after))
        assert list(added) == sorted(set(after) - set(before))
