"""Parsing of the scalar values a config holds: addresses, ports, MACs, DSCP, marks, names.

Each parser takes the value YAML produced (text, a number, a boolean) and returns plain
data, or raises `ValueError` with a message fit to show the user who wrote it; no input
makes one raise anything else, so validation can never end in a traceback. Address
lists become merged integer intervals per family, because that is the shape both
nftables interval sets and the simulator want, and merging once here keeps the
per-packet work independent of how the list was written.
"""

from __future__ import annotations

import difflib
import ipaddress
import re
import socket
import sys
from array import array
from bisect import bisect_left
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from itertools import chain, islice, repeat
from operator import add, and_, itemgetter, lshift, lt, or_, rshift
from typing import overload

Interval = tuple[int, int]

PROTOCOLS = {"tcp": 6, "udp": 17, "icmp": 1, "icmpv6": 58, "sctp": 132}
PROTOCOL_NAMES = {number: name for name, number in PROTOCOLS.items()}
PORT_PROTOCOLS = frozenset({6, 17, 132})

DSCP_CLASSES = {
    **{f"cs{n}": n * 8 for n in range(8)},
    **{f"af{c}{d}": c * 8 + d * 2 for c in range(1, 5) for d in range(1, 4)},
    "ef": 46,
    "va": 44,
    "le": 1,
}

RESERVED_TABLES = {0: "unspec", 253: "default", 254: "main", 255: "local"}
FOREIGN_TABLES = {52: "Tailscale", 51820: "wg-quick"}  # routing tables other software fills on its own
#: an uplink's bound table (`compile.bound`) is its table id plus this: realms fit 16 bits, so only
#: tables up to 0xFFFF are pinned, and their bound tables (0x10000-0x1FFFF) never meet a pinned one
BOUND_TABLE_OFFSET = 0x10000

_INTERFACE = re.compile(r"^[^\s/:'\"]{1,15}$")
IFNAME_BYTES = 15  # IFNAMSIZ less the terminating NUL: the kernel's and nftables' limit, in bytes
# Words nftables' JSON parser reads as a protocol wherever a value is expected, even where an
# interface name is (`iifname "tcp"` fails with "datatype mismatch"): found by `nft -j -c`.
NFT_PROTOCOL_WORDS = frozenset(
    ("ah", "comp", "dccp", "esp", "icmp", "icmpv6", "redirect", "sctp", "tcp", "udp", "udplite"))
POLICY_NAME_CHARS = 64
# nftables keeps a rule comment of at most 128 bytes; a policy's name goes into "policy NAME" and
# "N policies from NAME" (a merged run), so 100 bytes leave room for either.
POLICY_NAME_BYTES = 100
_MAC = re.compile(r"^[0-9a-fA-F]{2}([:-])[0-9a-fA-F]{2}(\1[0-9a-fA-F]{2}){4}$")


class Ipv4Intervals(Sequence[Interval]):
    """IPv4 intervals packed in one array of 32-bit words, first and last of each in turn: 8 bytes an interval.

    A set file of 1,000,000 prefixes held as tuples of ints takes ~120 MB; packed, 8 MB.
    As a sequence it gives (first, last) tuples made on the fly, so a consumer of a few
    intervals sees what it always saw; the big consumers (the netlink batch, the state
    record, the simulator's bisect) read `words`, `starts` and `ends` without any tuple.
    The intervals of an `AddressList` are sorted and disjoint (`merge_ipv4`); others
    (`ipv4_lines`) are in the order read.
    """

    __slots__ = ("words",)

    def __init__(self, words: array[int] | None = None) -> None:
        self.words: array[int] = words if words is not None else array("I")

    @classmethod
    def of(cls, intervals: Iterable[Interval]) -> Ipv4Intervals:
        return cls(array("I", chain.from_iterable(intervals)))

    @classmethod
    def from_big_endian(cls, data: bytes) -> Ipv4Intervals:
        """The intervals `big_endian` wrote (the state record keeps them so)."""
        if len(data) % 8:
            raise ValueError("packed IPv4 intervals must be a multiple of 8 bytes")
        words = array("I", data)
        if sys.byteorder == "little":
            words.byteswap()
        return cls(words)

    def big_endian(self) -> bytes:
        """The words in network byte order: the kernel's key bytes, and the state record's."""
        if sys.byteorder == "big":
            return self.words.tobytes()
        swapped = array("I", self.words)
        swapped.byteswap()
        return swapped.tobytes()

    @property
    def starts(self) -> array[int]:
        return self.words[0::2]

    @property
    def ends(self) -> array[int]:
        return self.words[1::2]

    def __len__(self) -> int:
        return len(self.words) // 2

    @overload
    def __getitem__(self, index: int) -> Interval: ...

    @overload
    def __getitem__(self, index: slice) -> tuple[Interval, ...]: ...

    def __getitem__(self, index: int | slice) -> Interval | tuple[Interval, ...]:
        if isinstance(index, slice):
            return tuple(self[i] for i in range(len(self))[index])
        position = range(len(self))[index] * 2  # IndexError and negative indexes as a tuple has them
        return self.words[position], self.words[position + 1]

    def __iter__(self) -> Iterator[Interval]:
        words = iter(self.words)
        return zip(words, words)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Ipv4Intervals):
            return self.words == other.words
        if isinstance(other, (tuple, list)):
            return len(other) == len(self) and all(map(tuple.__eq__, self, map(tuple, other)))
        return NotImplemented

    def __hash__(self) -> int:
        return hash(self.words.tobytes())

    def __repr__(self) -> str:
        shown = ", ".join(map(str, islice(self, 3)))
        return f"Ipv4Intervals({len(self)}: {shown}{', ...' if len(self) > 3 else ''})"


@dataclass(frozen=True)
class AddressList:
    """Addresses as merged, sorted, inclusive integer intervals for each IP family (IPv4 packed)."""

    v4: Ipv4Intervals = Ipv4Intervals()
    v6: tuple[Interval, ...] = ()

    def family(self, version: int) -> Sequence[Interval]:
        return self.v4 if version == 4 else self.v6

    @property
    def versions(self) -> frozenset[int]:
        return frozenset(v for v in (4, 6) if self.family(v))

    def covers(self, other: AddressList) -> bool:
        """True when every address of `other` is also in this list."""
        return all(
            _intervals_cover(self.family(v), other.family(v)) for v in (4, 6)
        )

    def __len__(self) -> int:
        return len(self.v4) + len(self.v6)


def _intervals_cover(outer: Sequence[Interval], inner: Sequence[Interval]) -> bool:
    import bisect

    if isinstance(outer, Ipv4Intervals):  # firsts and lasts in turn, all in order: bisected as they lie
        words = outer.words
        return all((index := (bisect.bisect_right(words, first) - 1) // 2) >= 0 and words[2 * index + 1] >= last
                   for first, last in inner)
    starts = [first for first, _ in outer]
    for first, last in inner:
        index = bisect.bisect_right(starts, first) - 1
        if index < 0 or outer[index][1] < last:
            return False
    return True


def yaml_text(value: object) -> str:
    """A scalar as the user wrote it in YAML (true, not True), for messages and text parsing."""
    if type(value) is str:
        return value.strip()
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    return str(value).strip()


def parse_address(value: object) -> tuple[int, Interval]:
    """One address, prefix or `a-b` range as (IP version, interval)."""
    text = yaml_text(value)
    quick = _plain_prefix(text)
    if quick is not None:
        return quick
    if "-" in text:
        first_text, _, last_text = text.partition("-")
        try:
            first = ipaddress.ip_address(first_text.strip())
            last = ipaddress.ip_address(last_text.strip())
        except ValueError:
            raise ValueError(f"'{text}' is not an IP address, prefix or range") from None
        if first.version != last.version:
            raise ValueError(f"range '{text}' mixes IPv4 and IPv6")
        if int(first) > int(last):
            raise ValueError(f"range '{text}' ends before it starts")
        return first.version, (int(first), int(last))
    try:
        if "/" in text:
            network = ipaddress.ip_network(text, strict=True)
        else:
            address = ipaddress.ip_address(text)
            return address.version, (int(address), int(address))
    except ValueError as exc:
        if "has host bits set" in str(exc):
            network = ipaddress.ip_network(text, strict=False)
            raise ValueError(
                f"'{text}' has host bits set; the network is {network}"
            ) from None
        raise ValueError(f"'{text}' is not an IP address, prefix or range") from None
    return network.version, (int(network.network_address), int(network.broadcast_address))


def _plain_prefix(text: str) -> tuple[int, Interval] | None:
    """A canonical address or prefix parsed by the C library: set files hold 100,000 of them.

    Anything unusual (ranges, scopes, host bits set, mistakes) returns None and goes the
    slow, thorough way through `ipaddress`, which also words the error.
    """
    address, slash, length = text.partition("/")
    version, family, bits = (6, socket.AF_INET6, 128) if ":" in address else (4, socket.AF_INET, 32)
    try:
        first = int.from_bytes(socket.inet_pton(family, address), "big")
    except (OSError, ValueError):  # ValueError: a NUL in the text
        return None
    prefix_length = bits
    if slash:
        if not (length.isascii() and length.isdigit()) or (length[0] == "0" and length != "0"):
            return None
        prefix_length = int(length)
        if prefix_length > bits:
            return None
    size = 1 << (bits - prefix_length)
    if first % size:
        return None
    return version, (first, first + size - 1)


def ipv4_lines(lines: Sequence[str], first_number: int = 1) -> tuple[Ipv4Intervals, list[tuple[int, str]]]:
    """The IPv4 addresses and prefixes of a set file's lines, read in bulk, and every other line.

    Set files hold 1,000,000 prefixes, so the common line, `a.b.c.d` or `a.b.c.d/len`
    written canonically with nothing around it, is read here without a Python step per
    line when a whole piece of the file is such lines (`_canonical_ipv4`), and with one C
    call and a dict lookup otherwise. Everything else, comments, blanks, IPv6, ranges and
    mistakes, comes back as (line number, text without comment) for `parse_address`,
    which reads it thoroughly and words errors; blank and comment-only lines are dropped
    there. LINES are numbered from FIRST_NUMBER; the intervals come in the order read.
    """
    bulk = _canonical_ipv4(lines)
    if bulk is not None:
        return bulk, []
    found = array("I")
    others: list[tuple[int, str]] = []
    keep = found.append
    pton, family, to_int = socket.inet_pton, socket.AF_INET, int.from_bytes
    masks = _SUFFIX_MASKS
    for number, line in enumerate(lines, start=first_number):
        address, slash, length = line.partition("/")
        mask = masks.get(slash + length)
        if mask is not None:
            try:
                first = to_int(pton(family, address), "big")
            except (OSError, ValueError):  # ValueError: a NUL in the line
                pass
            else:
                if not first & mask:
                    keep(first)
                    keep(first | mask)
                    continue
        text = line.partition("#")[0].strip()
        if text:
            others.append((number, text))
    return Ipv4Intervals(found), others


def ipv4_text(text: str, first_number: int = 1) -> tuple[Ipv4Intervals, list[tuple[int, str]], int]:
    """`ipv4_lines` of TEXT's lines, and how many lines that is.

    The usual set file, `a.b.c.d/len` on every line and nothing else, is cut at its
    slashes and newlines in one go (`_prefix_text`), without a list of lines.
    """
    bulk = _prefix_text(text)
    if bulk is not None:
        return bulk, [], len(bulk)
    lines = text.splitlines()
    found, others = ipv4_lines(lines, first_number)
    return found, others, len(lines)


_TWO_SLASHES = re.compile(r"/[^\n/]*/")  # two slashes on one line


def _prefix_text(text: str) -> Ipv4Intervals | None:
    """TEXT read as one canonical IPv4 prefix a line by C loops alone, or None if it is anything else.

    As many slashes as lines and no line with two means one slash on every line, so the
    pieces between slashes and newlines are address, length, address, length...: any
    other character (a space, `\\r`, another line break `str.splitlines` knows) lands
    inside a piece, which `inet_pton` or the length table then refuses.
    """
    ended = text.endswith("\n")
    if not text or text.count("/") != text.count("\n") + (not ended) or _TWO_SLASHES.search(text):
        return None
    pieces = text.replace("\n", "/").split("/")
    if ended:
        pieces.pop()  # the empty piece after the last line's newline (no copy of TEXT without it)
    return _packed_ipv4(pieces[0::2], list(map(_LENGTH_HOST_BITS.get, pieces[1::2])))


def _canonical_ipv4(lines: Sequence[str]) -> Ipv4Intervals | None:
    """LINES read as IPv4 addresses and prefixes by C loops alone (`map`), or None if any
    line is something else (then each line is looked at on its own)."""
    parts = list(map(str.partition, lines, repeat("/")))
    masks = list(map(_LENGTH_HOST_BITS.get, map(itemgetter(2), parts)))  # every line a prefix: the length says it
    if None in masks:  # a bare address, or something else
        masks = list(map(_SUFFIX_HOST_BITS.get,
                         map(str.__add__, map(itemgetter(1), parts), map(itemgetter(2), parts))))
    return _packed_ipv4(list(map(itemgetter(0), parts)), masks)


def _packed_ipv4(addresses: list[str], host_bits: list[bytes | None]) -> Ipv4Intervals | None:
    """ADDRESSES with the HOST_BITS of their lengths (4 bytes each) as intervals, or None if an
    address is not canonical IPv4, a length was not (a None) or host bits are set.

    Both are joined into one big number each: one `&` finds host bits set anywhere and one
    `|` makes every last address, with no carry between the 32-bit fields (a map over the
    intervals twice took half of this function's time).
    """
    try:
        packed = b"".join(map(socket.inet_pton, repeat(socket.AF_INET), addresses))
        masks = b"".join(host_bits)  # type: ignore[arg-type]  # a None: TypeError
    except (OSError, ValueError, TypeError):  # ValueError: a NUL in a line
        return None
    firsts, wide = int.from_bytes(packed, "big"), int.from_bytes(masks, "big")
    if firsts & wide:  # host bits set: `parse_address` words that
        return None
    words = array("I", bytes(2 * len(packed)))
    words[0::2] = array("I", packed)
    words[1::2] = array("I", (firsts | wide).to_bytes(len(packed), "big"))
    if sys.byteorder == "little":
        words.byteswap()
    return Ipv4Intervals(words)


# The host bits of a prefix length: "24" -> 0xff. With the slash (the partition's separator and length
# joined): "/24" -> 0xff, "" (a bare address) -> 0; anything else ("/", "/33", "/08") is not canonical.
# As numbers for a line read alone (`ipv4_lines`), as 4 big-endian bytes for lines read in bulk.
_LENGTH_MASKS = {str(n): (1 << (32 - n)) - 1 for n in range(33)}
_LENGTH_HOST_BITS = {length: mask.to_bytes(4, "big") for length, mask in _LENGTH_MASKS.items()}
_SUFFIX_MASKS = {"": 0, **{f"/{length}": mask for length, mask in _LENGTH_MASKS.items()}}
_SUFFIX_HOST_BITS = {suffix: mask.to_bytes(4, "big") for suffix, mask in _SUFFIX_MASKS.items()}


def merge(intervals: list[Interval]) -> tuple[Interval, ...]:
    """Sort and join overlapping or adjacent intervals.

    An interval nothing joins is kept as the same tuple, not copied.
    """
    ordered = sorted(intervals)
    if not ordered:
        return ()
    merged: list[Interval] = []
    current = ordered[0]
    for interval in islice(ordered, 1, None):
        if interval[0] <= current[1] + 1:
            if interval[1] > current[1]:
                current = (current[0], interval[1])
        else:
            merged.append(current)
            current = interval
    merged.append(current)
    return tuple(merged)


def merge_ipv4(intervals: Ipv4Intervals) -> Ipv4Intervals:
    """`merge` for packed IPv4 intervals, which it may take over (no copy).

    Set files are mostly written sorted, with no two prefixes touching: that is checked
    by C loops and the same intervals are kept. Otherwise each interval becomes one
    64-bit key (first, last) to sort, ~40 MB at 1,000,000 for as long as the sort runs.
    """
    words = intervals.words
    if all(map(lt, map(add, words[1:-1:2], repeat(1)), words[2::2])):
        return intervals
    keys = list(_interval_keys(intervals))
    keys.sort()
    merged = array("I")
    keep = merged.append
    first, last = keys[0] >> 32, keys[0] & 0xFFFFFFFF
    for key in islice(keys, 1, None):
        start, end = key >> 32, key & 0xFFFFFFFF
        if start <= last + 1:
            if end > last:
                last = end
        else:
            keep(first)
            keep(last)
            first, last = start, end
    keep(first)
    keep(last)
    return Ipv4Intervals(merged)


def interval_changes(old: Sequence[Interval], new: Sequence[Interval]) -> tuple[Sequence[Interval], Sequence[Interval]]:
    """(removed, added): the intervals of OLD not in NEW and of NEW not in OLD, both sorted as OLD and NEW are.

    Packed IPv4 intervals are walked side by side as one 64-bit number each (first,
    last), in order: sets of 1,000,000 tuples on both sides took ~400 MB and over a
    second for a change of 1,000 prefixes. When one side is much smaller (a set file
    switched between one prefix and 100,000), each of its intervals is looked up in the
    other instead (`_looked_up`), which leaves the other's words to C loops: walking
    100,000 intervals for one took ~22 ms of a reload.
    """
    if not old or not new:  # all removed, or all added
        return old, new
    if not (isinstance(old, Ipv4Intervals) and isinstance(new, Ipv4Intervals)):
        before, after = set(old), set(new)
        return tuple(sorted(before - after)), tuple(sorted(after - before))
    if old == new:
        return Ipv4Intervals(), Ipv4Intervals()
    if len(old) * _BISECT_RATIO < len(new):
        return _looked_up(old, new)
    if len(new) * _BISECT_RATIO < len(old):
        only_new, rest = _looked_up(new, old)
        return rest, only_new
    removed: list[int] = []
    added: list[int] = []
    olds, news = _interval_keys(old), _interval_keys(new)
    was, now = next(olds, None), next(news, None)
    while was is not None and now is not None:
        if was == now:
            was, now = next(olds, None), next(news, None)
        elif was < now:
            removed.append(was)
            was = next(olds, None)
        else:
            added.append(now)
            now = next(news, None)
    removed += [] if was is None else [was, *olds]
    added += [] if now is None else [now, *news]
    return _from_keys(removed), _from_keys(added)


# One side this many times smaller or more: its intervals are looked up. At 100,000 intervals on the other
# side the lookups took 14 ms for 25,000 where the walk took 20, 7 for 12,500 (walk 18), 0.1 for one (walk 16).
_BISECT_RATIO = 4


def _looked_up(small: Ipv4Intervals, big: Ipv4Intervals) -> tuple[Ipv4Intervals, Ipv4Intervals]:
    """(SMALL's intervals not in BIG, BIG's not in SMALL), both sorted: each of SMALL's looked up in BIG.

    Sorted, disjoint intervals make BIG's words one ascending sequence (first <= last < next
    first), so `bisect_left` on the words finds where an interval would start: it is in BIG
    if a first (an even position) is there with the same last. BIG's other words are copied
    in runs between the ones found; each search starts after the last one found.
    """
    words, found_in = small.words, big.words
    missing, rest = array("I"), array("I")
    size, copied = len(found_in), 0
    for position in range(0, len(words), 2):
        first, last = words[position], words[position + 1]
        at = bisect_left(found_in, first, copied)
        if at < size and not at & 1 and found_in[at] == first and found_in[at + 1] == last:
            rest += found_in[copied:at]
            copied = at + 2
        else:
            missing.append(first)
            missing.append(last)
    rest += found_in[copied:]
    return Ipv4Intervals(missing), Ipv4Intervals(rest)


def _interval_keys(intervals: Ipv4Intervals) -> Iterator[int]:
    return map(or_, map(lshift, intervals.starts, repeat(32)), intervals.ends)


def _from_keys(keys: list[int]) -> Ipv4Intervals:
    words = array("I", bytes(8 * len(keys)))
    words[0::2] = array("I", map(rshift, keys, repeat(32)))
    words[1::2] = array("I", map(and_, keys, repeat(0xFFFFFFFF)))
    return Ipv4Intervals(words)


def address_list(items: list[tuple[int, Interval]], v4: Ipv4Intervals | None = None) -> AddressList:
    """ITEMS of both versions, and V4 (IPv4 intervals read in bulk, see `ipv4_lines`; taken over), merged."""
    bulk = v4 if v4 is not None else Ipv4Intervals()
    bulk.words.extend(chain.from_iterable(iv for version, iv in items if version == 4))
    return AddressList(
        v4=merge_ipv4(bulk),
        v6=merge([iv for version, iv in items if version == 6]),
    )


def parse_port(value: object) -> Interval:
    """A port number or `a-b` range."""
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise ValueError(f"'{yaml_text(value)}' is not a port or port range (expected N or A-B)")
    if isinstance(value, int):
        first = last = value
    else:
        text = value.strip()
        match = re.fullmatch(r"(\d+)\s*(?:-\s*(\d+))?", text)
        if not match:
            raise ValueError(f"'{text}' is not a port or port range (expected N or A-B)")
        first = int(match.group(1))
        last = int(match.group(2) or first)
    for port in (first, last):
        if not 0 < port < 65536:
            raise ValueError(f"port {port} is out of range 1-65535")
    if first > last:
        raise ValueError(f"port range {first}-{last} ends before it starts")
    return first, last


def parse_protocol(value: object) -> int:
    """A protocol name (tcp, udp, icmp, icmpv6, sctp) or number 0-255."""
    if isinstance(value, int) and not isinstance(value, bool):
        if 0 <= value <= 255:
            return value
        raise ValueError(f"protocol number {value} is out of range 0-255")
    text = yaml_text(value).lower()
    if text in PROTOCOLS:
        return PROTOCOLS[text]
    if text.isdigit() and int(text) <= 255:
        return int(text)
    close = difflib.get_close_matches(text, list(PROTOCOLS), n=1)
    hint = f"; did you mean '{close[0]}'?" if close else f" (known: {', '.join(PROTOCOLS)} or a number)"
    raise ValueError(f"unknown protocol '{yaml_text(value)}'{hint}")


def parse_mac(value: object) -> str:
    text = yaml_text(value)
    if not isinstance(value, str) or not _MAC.match(text):
        raise ValueError(f"'{text}' is not a MAC address (expected six hex pairs like 52:54:00:12:34:56)")
    return text.lower().replace("-", ":")


def parse_dscp(value: object) -> int:
    """A DSCP number 0-63 or class name (ef, af11, cs1, ...)."""
    if isinstance(value, int) and not isinstance(value, bool):
        if 0 <= value <= 63:
            return value
        raise ValueError(f"DSCP {value} is out of range 0-63")
    text = yaml_text(value).lower()
    if text in DSCP_CLASSES:
        return DSCP_CLASSES[text]
    if text.isdigit() and int(text) <= 63:
        return int(text)
    raise ValueError(f"unknown DSCP class '{yaml_text(value)}' (use 0-63 or a name like ef, af41, cs1)")


def parse_mark(value: object) -> int:
    """A mark or mask written as a number or hex text, within 32 bits."""
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise ValueError(f"'{yaml_text(value)}' is not a whole number (write 0xff00 or 65280)")
    if isinstance(value, int):
        number = value
    else:
        try:
            number = int(value.strip(), 0)
        except ValueError:
            raise ValueError(f"'{value}' is not a number (write 0xff00 or 65280)") from None
    if not 0 <= number <= 0xFFFFFFFF:
        raise ValueError(f"{yaml_text(value)} does not fit in 32 bits (0 to 0xffffffff)")
    return number


def parse_table(value: object) -> int:
    """A routing table id; the kernel's own tables (0, 253-255) are not markroute's to take."""
    number = parse_mark(value)
    if number in RESERVED_TABLES:
        raise ValueError(f"table {number} is the kernel's '{RESERVED_TABLES[number]}' table; pick another id")
    return number


def shown(text: str, limit: int = 40) -> str:
    """TEXT for a message: control characters escaped, at most LIMIT characters (hostile input stays short)."""
    escaped = text.encode("unicode_escape").decode("ascii") if not text.isprintable() else text
    return escaped if len(escaped) <= limit else escaped[:limit] + "..."


def parse_interface(value: object) -> str:
    """A network interface name as both the kernel and nftables (text and JSON) take it."""
    text = yaml_text(value)
    if not isinstance(value, (str, int)) or isinstance(value, bool) or not _INTERFACE.match(text) \
            or not text.isprintable() or text in (".", ".."):
        raise ValueError(f"'{shown(text)}' is not a valid interface name "
                         "(1-15 printable characters, no spaces, quotes, '/' or ':')")
    if len(text.encode()) > IFNAME_BYTES:
        raise ValueError(f"'{text}' is {len(text.encode())} bytes in UTF-8; an interface name has at most "
                         f"{IFNAME_BYTES}")
    if text.startswith("@"):
        raise ValueError(f"'{text}' starts with '@', which nftables reads as a set name")
    if text == "*":
        raise ValueError("'*' alone is nftables' wildcard for every name, which it refuses; name an interface")
    if text in NFT_PROTOCOL_WORDS:
        raise ValueError(f"'{text}' is a protocol name to nftables, which cannot match an interface called so")
    return text


def parse_ip(value: object) -> str:
    """A single IPv4 or IPv6 address, normalised."""
    try:
        return str(ipaddress.ip_address(yaml_text(value)))
    except ValueError:
        raise ValueError(f"'{yaml_text(value)}' is not an IP address") from None


#: `gateway: auto`: the next hop is learned from the kernel at apply time (DHCP, RA, a tunnel's peer).
AUTO_GATEWAY = "auto"


def parse_gateway(value: object, version: int) -> str:
    """A next hop of the given family, or `auto`; the other family's address names the other key."""
    if value == AUTO_GATEWAY:
        return AUTO_GATEWAY
    if isinstance(value, str) and value.strip().isalpha():
        raise ValueError(f"'{value}' is not an IP address; write 'auto' to learn the gateway from the kernel "
                         "(DHCP, router advertisements, a tunnel's peer)")
    address = ipaddress.ip_address(parse_ip(value))
    if address.version != version:
        other = "gateway6" if version == 4 else "gateway"
        raise ValueError(f"{address} is IPv{address.version}; write it as '{other}:'")
    return str(address)


def parse_weight(value: object) -> int:
    """A balancing weight: a whole number 1-1000 (numgen needs a small integer range)."""
    if isinstance(value, str) and value.strip().isdigit():
        raise ValueError(f"'{value}' is text, not a number; remove the quotes")
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"'{yaml_text(value)}' is not a positive whole number")
    if value > 1000:
        raise ValueError(f"{value} is too large (at most 1000)")
    return value


def parse_whole(value: object, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"expected a whole number, got '{yaml_text(value)}'")
    if not low <= value <= high:
        raise ValueError(f"{value} is out of range {low}-{high}")
    return value


def parse_bool(value: object) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"expected true or false, got '{yaml_text(value)}'")
    return value


def parse_seconds(value: object) -> float:
    """A duration: seconds as a number, or text with an `s` or `ms` suffix."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        text = yaml_text(value)
        factor = 0.001 if text.endswith("ms") else 1.0
        try:
            value = float(text.removesuffix("ms").removesuffix("s")) * factor
        except ValueError:
            raise ValueError(f"'{text}' is not a duration (e.g. 0.2, 200ms, 1s)") from None
    if not 0 < float(value) <= 3600:
        raise ValueError(f"{value} is out of range (0-3600 s)")
    return float(value)


def parse_fraction(value: object) -> float:
    """A share 0-1, written as a number or a percentage."""
    text = yaml_text(value)
    if isinstance(value, bool):
        raise ValueError(f"'{text}' is not a fraction (e.g. 0.2 or 20%)")
    try:
        number = float(text.removesuffix("%")) / (100 if text.endswith("%") else 1)
    except ValueError:
        raise ValueError(f"'{text}' is not a fraction (e.g. 0.2 or 20%)") from None
    if not 0 <= number <= 1:
        raise ValueError(f"{text} is out of range 0-1")
    return number


def parse_probe_target(value: object) -> str:
    """An address to probe, optionally with a port: 192.0.2.1, 192.0.2.1:443, [2001:db8::1]:443."""
    text = yaml_text(value)
    host = text
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        if rest:
            if not rest.startswith(":"):
                raise ValueError(f"'{text}' is not an address or address:port")
            parse_port(rest[1:])
    elif text.count(":") == 1:
        host, _, port = text.partition(":")
        parse_port(port)
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"'{text}' is not an address or address:port") from None
    return text


def parse_argument(value: object) -> str:
    """One word of a command line: any text but empty or with a NUL (which execve cannot pass)."""
    text = yaml_text(value)
    if not text or "\0" in text:
        raise ValueError(f"'{text}' is not a usable command argument (empty, or with a NUL)")
    return text


def parse_policy_name(value: object) -> str:
    """A policy name; it ends up in nft comments, so no quotes or backslashes."""
    text = yaml_text(value)
    if value is None or isinstance(value, bool) or not text or len(text) > POLICY_NAME_CHARS or '"' in text \
            or "\\" in text or not text.isprintable():
        raise ValueError(f"'{shown(text)}' is not a usable policy name "
                         f"(1-{POLICY_NAME_CHARS} printable characters, no quotes)")
    if len(text.encode()) > POLICY_NAME_BYTES:
        raise ValueError(f"'{shown(text)}' is {len(text.encode())} bytes in UTF-8; nftables keeps a policy name "
                         f"of at most {POLICY_NAME_BYTES} bytes in its rule comments")
    return text


DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(value: object) -> int:
    """A lifetime in whole seconds: a number, or text such as `90s`, `30m`, `6h`, `1d`.

    Set element timeouts are whole seconds in the kernel's eyes; up to 30 days, so a typo
    of an extra zero is caught rather than keeping stale addresses for a year.
    """
    if isinstance(value, bool):
        raise ValueError(f"'{yaml_text(value)}' is not a duration (e.g. 3600, 90s, 30m, 6h, 1d)")
    text = yaml_text(value)
    factor = DURATION_UNITS.get(text[-1:], 1) if text else 1
    digits = text[:-1] if text[-1:] in DURATION_UNITS else text
    if not digits.isdigit():
        raise ValueError(f"'{text}' is not a duration (e.g. 3600, 90s, 30m, 6h, 1d)")
    seconds = int(digits) * factor
    if not 1 <= seconds <= 30 * 86400:
        raise ValueError(f"{text} is out of range (1 s to 30 d)")
    return seconds
