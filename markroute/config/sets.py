"""The `sets:` section: named address lists, written inline or kept in a file a line each,
and dynamic sets others fill at run time (`markroute.config.dynamicsets`).

Sets are read before anything refers to them. A set that is itself wrong is reported
where it is defined; it stays in `DeclaredSets.where` so a policy naming it is not
reported again as naming an unknown set.
"""

from __future__ import annotations

import os
import stat
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from markroute.config import dynamicsets
from markroute.config.reader import Reader
from markroute.config.source import Node, byte_position
from markroute.diagnostics import Where
from markroute.model import DynamicSet
from markroute.values import (
    AddressList,
    Interval,
    Ipv4Intervals,
    address_list,
    ipv4_text,
    parse_address,
    shown,
    yaml_text,
)

MAX_BAD_SET_LINES = 10
MAX_SET_FILE_BYTES = 64 * 1024 * 1024  # a million prefixes fit in a quarter of this
QUOTED_PREFIX = 20  # characters of a bad line an error quotes: a set file may be something else entirely
RACY_NS = 2_000_000_000  # a file modified this recently may change again within one timestamp tick: not kept


class SetFileError(Exception):
    """The set file cannot be used as one (not a regular file, too large, unreadable)."""


@dataclass(frozen=True)
class FileIdentity:
    """What says a file is the one read before: replaced (device, inode) or written (size, times)."""

    device: int
    inode: int
    size: int
    modified_ns: int
    changed_ns: int

    @classmethod
    def of(cls, info: os.stat_result) -> FileIdentity:
        return cls(info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns)


class SetFiles:
    """Set files read before, each with the identity it had: a reader that lives on reads an unchanged file once.

    Why: the daemon reads its config again on every SIGHUP and handed-over `apply`, and
    reading and checking a set file of 1,000,000 prefixes is ~0.4 s of a reload that
    changed one policy. A file is taken from here only while its device, inode, size,
    modification and change times are what they were when it was read. One modified less
    than RACY_NS before it was read is not kept: a second write within the file system's
    timestamp tick, of the same size, would look unchanged (git's index does the same).
    Only files that were valid are kept, so a bad file is read, and reported, every time;
    a file no longer named by the config is forgotten at the end of the next read.
    """

    def __init__(self) -> None:
        self.known: dict[Path, tuple[FileIdentity, AddressList]] = {}
        self.named: set[Path] = set()  # the files the read in progress named

    def lookup(self, path: Path) -> AddressList | None:
        self.named.add(path)
        entry = self.known.get(path)
        if entry is None:
            return None
        try:
            same = FileIdentity.of(os.stat(path)) == entry[0]
        except OSError:
            same = False
        if not same:
            del self.known[path]
            return None
        return entry[1]

    def keep(self, path: Path, info: os.stat_result, addresses: AddressList) -> None:
        if time.time_ns() - info.st_mtime_ns >= RACY_NS:
            self.known[path] = (FileIdentity.of(info), addresses)

    def forget_unnamed(self) -> None:
        """Ends a read: the files it did not name are dropped (their addresses would only hold memory)."""
        for path in set(self.known) - self.named:
            del self.known[path]
        self.named = set()


def read_set_file(path: Path) -> tuple[bytes, os.stat_result]:
    """The bytes of a regular file, read once through one descriptor, and the file's status as read.

    Opened non-blocking, so a FIFO fails here instead of hanging `check` (and with it the
    daemon's reload); a device, socket or directory is refused before anything is read,
    and a file over MAX_SET_FILE_BYTES is refused instead of exhausting memory (/dev/zero).
    """
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):  # a socket cannot even be opened: say what it is not
            raise SetFileError(f"set file {path} is not a regular file")
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError as exc:
        raise SetFileError(f"cannot read set file {path}: {exc.strerror or exc}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):  # replaced between the two looks
            raise SetFileError(f"set file {path} is not a regular file")
        if info.st_size > MAX_SET_FILE_BYTES:
            raise SetFileError(f"set file {path} is {info.st_size} bytes; at most {MAX_SET_FILE_BYTES} are read")
        chunks: list[bytes] = []
        size = 0
        while chunk := os.read(fd, 1 << 20):
            size += len(chunk)
            if size > MAX_SET_FILE_BYTES:  # grew while being read
                raise SetFileError(f"set file {path} is over {MAX_SET_FILE_BYTES} bytes")
            chunks.append(chunk)
        return b"".join(chunks), info
    except OSError as exc:
        raise SetFileError(f"cannot read set file {path}: {exc.strerror or exc}") from None
    finally:
        os.close(fd)


@dataclass
class DeclaredSets:
    """The valid sets' addresses, and where every declared set (valid or not) was named.

    A dynamic set is in `dynamic` and, empty, in `addresses` (a policy may name it).
    """

    addresses: dict[str, AddressList] = field(default_factory=dict)
    where: dict[str, Where] = field(default_factory=dict)
    dynamic: dict[str, DynamicSet] = field(default_factory=dict)


def read_sets(reader: Reader, node: Node | None, files: SetFiles | None = None) -> DeclaredSets:
    """The `sets:` section; FILES, when given, has the set files read before (`SetFiles`)."""
    declared = DeclaredSets()
    if node is None or not reader.kind(node, "map", "sets"):
        if files is not None:
            files.forget_unnamed()
        return declared
    for key, value in node.items.items():
        where = node.key_where[key]
        if not reader.name(key, where, "a set"):
            continue
        declared.where[key] = where
        if dynamicsets.is_dynamic(value):
            dynamic = dynamicsets.read(reader, key, value, where)
            if dynamic is not None:
                declared.dynamic[key] = dynamic
                declared.addresses[key] = AddressList()
            continue
        if value.kind == "map":
            reader.known_keys(value, ("file",), f"set '{key}'")
            file_node = value.items.get("file")
            if file_node is None:
                reader.diag.error(value.where, f"set '{key}' needs 'file:' or a list of addresses")
                continue
            addresses = set_file(reader, key, file_node, files)
        else:
            parsed = reader.one_or_many(value, f"set '{key}'", parse_address)
            addresses = address_list(parsed) if parsed is not None else None
        if addresses is not None:
            declared.addresses[key] = addresses
    if files is not None:
        files.forget_unnamed()
    return declared


def set_file(reader: Reader, name: str, node: Node, files: SetFiles | None = None) -> AddressList | None:
    """One address, prefix or range a line; '#' starts a comment. Bad lines are reported there."""
    text_path = reader.scalar(node, "file", yaml_text)
    if text_path is None:
        return None
    path = Path(text_path)
    if not path.is_absolute():
        path = Path(reader.path).parent / path
    known = files.lookup(path) if files is not None else None
    if known is not None:
        return known
    try:
        data, info = read_set_file(path)
    except SetFileError as exc:
        reader.diag.error(node.where, str(exc), "name a regular file holding one address or prefix a line")
        return None
    try:
        content = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        reader.diag.error(byte_position(str(path), data, exc.start),
                          f"set file is not UTF-8 text (byte {data[exc.start]:#04x})", "save it as UTF-8")
        return None
    del data  # 15 MB for 1,000,000 prefixes, not needed past the decoding
    v4 = Ipv4Intervals()
    others: list[tuple[int, str]] = []
    number = 1
    for piece in _pieces(content):
        found, odd, count = ipv4_text(piece, number)
        v4.words.extend(found.words)
        others += odd
        number += count
    lines: list[str] = []  # split again only to word errors
    items: list[tuple[int, Interval]] = []
    bad = 0
    for number, text in others:
        try:
            items.append(parse_address(text))
        except ValueError as exc:
            bad += 1
            if bad <= MAX_BAD_SET_LINES:
                lines = lines or content.splitlines()
                line = lines[number - 1]
                message = str(exc).replace(text, shown(text, QUOTED_PREFIX))
                reader.diag.error(Where(str(path), number, len(line) - len(line.lstrip()) + 1), message)
    if bad > MAX_BAD_SET_LINES:
        reader.diag.error(node.where, f"{bad} bad lines in set file {path} (first {MAX_BAD_SET_LINES} shown)")
    if bad:
        return None
    if not items and not v4:
        reader.diag.error(node.where, f"set file {path} holds no addresses",
                          f"a policy using '@{name}' would never match; add one prefix a line")
        return None
    addresses = address_list(items, v4)
    if files is not None:
        files.keep(path, info, addresses)
    return addresses


def _pieces(text: str, chunk: int = 1 << 16) -> Iterator[str]:
    """TEXT about 64 KiB (~4,000 lines) at a time: the list of a 1,000,000-line file's lines held ~70 MB at once.

    Small pieces reuse the memory the last one's strings freed while it is still mapped
    and cached: megabyte pieces took 4 times as many page faults, ~60 ms of CPU to read
    100,000 prefixes where 64 KiB pieces take ~44, and ~470 ms for 1,000,000 where they
    take ~350 (peak RSS after reading 68 MB -> 55 MB). Below ~16 KiB nothing more is gained (issue 15).

    Each piece ends just after a newline, which ends a line wherever it stands, so the
    pieces' lines, one after the other, are the whole text's lines, numbered alike.
    """
    start = 0
    while start < len(text):
        end = text.find("\n", start + chunk)
        end = len(text) if end < 0 else end + 1
        yield text[start:end]
        start = end


def warn_unused_sets(reader: Reader, declared: dict[str, Where], used: set[str]) -> None:
    """Run after the policies: a set no policy names is probably a forgotten reference."""
    for name, where in declared.items():
        if name not in used:
            reader.diag.warning(where, f"set '{name}' is not used by any policy", "refer to it as '@" + name + "'")
