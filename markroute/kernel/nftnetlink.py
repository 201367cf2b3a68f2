"""What markroute tells and asks nf_tables over netlink itself: set elements, the generation,
whether a table exists.

Everything else goes through nft (`markroute.kernel.nft`); these jobs it does too
slowly (a process per question, or worse: see below).

**Set elements.**
nft 1.0.6 reads every element of a set before it runs an element command, and deletes
an interval element in time proportional to the set: 20 deletions in a 100,000-prefix
set took 4.4 s, and loading that set takes nft ~1 s, half of it nft's own work. The
kernel swaps 1,000 intervals of that set in ~30 ms. pyroute2 0.9.7 has the message
classes but builds every attribute as Python objects (~140 µs per element, ~20 s for
that set), so element lists are packed here with `struct`, one fixed layout per
element, and sent as one nfnetlink batch: one kernel transaction, all or nothing,
exactly as `nft -f` sends it.

Only markroute's own address sets go this way (`ipv4_addr`/`ipv6_addr`, flags
`interval`, created by nft with everything else). Elements are written as nft writes
them, so `nft list` shows them as if nft had loaded them: an interval is a start
element plus an end element one past its last address, flagged INTERVAL_END; an
interval that reaches the top of the address space has no end element, and its start
carries nft's "open interval" user data instead.

**The ruleset generation.** The kernel counts committed nf_tables transactions, anyone's,
in every table. apply reads it before its first transaction and records the count
after its own only if it moved by exactly the transactions apply committed (`commits`):
otherwise someone else committed meanwhile, and nothing is recorded. While the
recorded count is unchanged nothing in nftables has changed since, so checking an
unchanged config needs no listing of 100,000 elements (which takes nft seconds).
"""

from __future__ import annotations

import errno
import os
import socket
import struct
import threading
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

from markroute.kernel import KernelError
from markroute.kernel.netlinkwire import (
    ATTR_HEADER,
    NETLINK_CAP_ACK,
    NLA_F_NESTED,
    NLM_F_ACK,
    NLM_F_CREATE,
    NLM_F_REQUEST,
    NLMSG_ERROR,
    NLMSG_HEADER,
    SOL_NETLINK,
    attr,
    error_code,
)
from markroute.values import Interval, Ipv4Intervals

# Linux UAPI numbers (nfnetlink.h, nf_tables.h, libnftnl's udata flags; netlink.h's in `netlinkwire`).
NETLINK_NETFILTER = 12
SO_SNDBUFFORCE, SO_RCVBUFFORCE = 32, 33
NFNL_SUBSYS_NFTABLES = 10
NFNL_MSG_BATCH_BEGIN, NFNL_MSG_BATCH_END = 16, 17
NFT_MSG_NEWSETELEM, NFT_MSG_DELSETELEM = 12, 14
NFT_MSG_GETGEN = 16
NFT_MSG_GETTABLE = 1
NFTA_GEN_ID = 1
NFTA_TABLE_NAME = 1
NFPROTO_INET = 1
NFTA_SET_ELEM_LIST_TABLE, NFTA_SET_ELEM_LIST_SET, NFTA_SET_ELEM_LIST_ELEMENTS = 1, 2, 3
NFTA_LIST_ELEM = 1
NFTA_SET_ELEM_KEY, NFTA_SET_ELEM_FLAGS, NFTA_SET_ELEM_USERDATA = 1, 3, 6
NFTA_DATA_VALUE = 1
NFT_SET_ELEM_INTERVAL_END = 1
NFTNL_UDATA_SET_ELEM_FLAGS, NFTNL_SET_ELEM_F_INTERVAL_OPEN = 1, 1

NFGEN_HEADER = struct.Struct("=BBH")
MAX_ATTR_LENGTH = 0xFFFF  # an attribute's length is 16 bits: elements go in several messages
KEY_BYTES = {4: 4, 6: 16}
OPEN_USERDATA = bytes([NFTNL_UDATA_SET_ELEM_FLAGS, 4]) + struct.pack("=I", NFTNL_SET_ELEM_F_INTERVAL_OPEN)


@dataclass(frozen=True)
class SetChange:
    """Intervals (first, last) to remove from and add to one address set of the table."""

    name: str
    version: int
    removed: Sequence[Interval] = ()
    added: Sequence[Interval] = ()

    def inverse(self) -> SetChange:
        return SetChange(self.name, self.version, self.added, self.removed)


def update(table: str, changes: Iterable[SetChange]) -> None:
    """In one transaction, per set: delete its removed intervals, then add its added ones.

    Deleting an interval that is not there, or adding one that overlaps another, fails
    the whole batch and nothing changes (KernelError).
    """
    batch = element_batch(table, changes)
    if batch.count:
        _commit(batch)
        count_commit()


@dataclass
class Batch:
    """One nfnetlink batch of element messages, packed as it will be sent.

    Built in parts of a few megabytes, sent as one datagram by one `sendmsg` of all the
    parts: 1,000,000 intervals are ~42 MB of messages, and one buffer grown to that size
    was copied whole when it grew (the batch is built in apply's filling thread, whose
    malloc arena cannot extend a block in place), ~40 MB more at the peak.
    """

    parts: list[bytearray]
    count: int  # messages between batch begin and end, each acknowledged
    owners: dict[int, str]  # message sequence number -> the set it changes, for errors

    PART_BYTES = 4 << 20

    def add(self, message: bytes) -> None:
        if not self.parts or len(self.parts[-1]) >= self.PART_BYTES:
            self.parts.append(bytearray())
        self.parts[-1] += message

    @property
    def size(self) -> int:
        return sum(map(len, self.parts))


def element_batch(table: str, changes: Iterable[SetChange]) -> Batch:
    """The batch `update` sends for CHANGES; its count is 0 when there is nothing to send."""
    batch = Batch([], 0, {})
    batch.add(_message(NFNL_MSG_BATCH_BEGIN, NLM_F_REQUEST, 0, socket.AF_UNSPEC, b"", NFNL_SUBSYS_NFTABLES))
    for change in changes:
        for kind, intervals in ((NFT_MSG_DELSETELEM, change.removed), (NFT_MSG_NEWSETELEM, change.added)):
            flags = NLM_F_REQUEST | NLM_F_ACK | (NLM_F_CREATE if kind == NFT_MSG_NEWSETELEM else 0)
            for body in _element_lists(change.version, intervals):
                batch.count += 1
                batch.add(_message((NFNL_SUBSYS_NFTABLES << 8) | kind, flags, batch.count, NFPROTO_INET,
                                   _list_message(table, change.name, body)))
                batch.owners[batch.count] = change.name
    batch.add(_message(NFNL_MSG_BATCH_END, NLM_F_REQUEST, batch.count + 1, socket.AF_UNSPEC, b"",
                       NFNL_SUBSYS_NFTABLES))
    return batch


_commits = 0  # nf_tables transactions this process committed (`count_commit`)


def count_commit() -> None:
    """One more nf_tables transaction committed by this process (nft batches and `update`)."""
    global _commits
    _commits += 1


def commits() -> int:
    """How many nf_tables transactions this process committed: apply compares the generation's
    move with its own count to know whether anyone else committed meanwhile."""
    return _commits


def generation() -> int:
    """The ruleset generation of the current network namespace (NFT_MSG_GETGEN)."""
    reply = _ask(NFT_MSG_GETGEN, socket.AF_UNSPEC, b"", "reading the ruleset generation")
    if reply is None:
        raise KernelError("nf_tables: reading the ruleset generation failed: no reply")
    return _gen_id(reply)


def table_exists(name: str) -> bool:
    """Whether table `inet NAME` exists (NFT_MSG_GETTABLE): one round trip, where nft takes a process."""
    return _ask(NFT_MSG_GETTABLE, NFPROTO_INET, attr(NFTA_TABLE_NAME, name.encode() + b"\0"), "looking up a table") is not None


def acknowledged(messages: Iterable[tuple[int, int, Iterable[tuple[int, bytes]]]], what: str) -> None:
    """Send nfnetlink MESSAGES, each (subsystem << 8 | message type, family, attributes as
    (type, payload)), in one datagram, and wait until the kernel acknowledged every one:
    for requests of other netfilter subsystems (conntrack) that need no pyroute2 object and
    its socket set-up, a few milliseconds on the failover path."""
    data = bytearray()
    count = 0
    for kind, family, attributes in messages:
        count += 1
        data += _message(kind, NLM_F_REQUEST | NLM_F_ACK, count, family,
                         b"".join(attr(attribute, payload) for attribute, payload in attributes))
    with _requests.use() as sock:
        try:
            sock.setsockopt(SOL_NETLINK, NETLINK_CAP_ACK, 1)
            sock.sendall(data)
            failures = _acknowledgements(sock, count)
        except OSError as exc:
            raise KernelError(f"netfilter: {what} failed: {exc.strerror or exc}") from exc
    if failures:
        raise KernelError(f"netfilter: {what} failed: {os.strerror(failures[0][1])}")


def _ask(kind: int, family: int, body: bytes, what: str) -> bytes | None:
    """Send one nf_tables request; the attributes of its reply, or None when the kernel says ENOENT."""
    request = _message((NFNL_SUBSYS_NFTABLES << 8) | kind, NLM_F_REQUEST, 1, family, body)
    with _requests.use() as sock:
        try:
            sock.sendall(request)
            data = sock.recv(65536)
        except OSError as exc:
            raise KernelError(f"nf_tables: {what} failed: {exc.strerror or exc}") from exc
    _length, reply_kind, _flags, _seq, _pid = NLMSG_HEADER.unpack_from(data)
    if reply_kind == NLMSG_ERROR:
        code = error_code(data, 0)
        if code == errno.ENOENT:
            return None
        raise KernelError(f"nf_tables: {what} failed: {os.strerror(code)}")
    return data[NLMSG_HEADER.size + NFGEN_HEADER.size:]


def _gen_id(attributes: bytes) -> int:
    offset = 0
    while offset + ATTR_HEADER.size <= len(attributes):
        length, kind = ATTR_HEADER.unpack_from(attributes, offset)
        if kind & ~NLA_F_NESTED == NFTA_GEN_ID:
            gen_id: int = struct.unpack_from("!I", attributes, offset + ATTR_HEADER.size)[0]
            return gen_id
        offset += max((length + 3) & ~3, ATTR_HEADER.size)
    raise KernelError("nf_tables: the generation reply holds no generation")


class KeptSocket:
    """A netfilter socket of this process kept open in the current namespace, one thread at a time.

    Closing (or opening) a netfilter socket right after an nf_tables commit waits in the
    kernel while the committed transaction is freed: 5 to 20 ms after a small one
    (measured on a busy 2-core machine); after a batch deleting 100,000 set elements the
    daemon's reload took 217 ms with a new socket per batch against 188 ms kept, after
    1,000,000 1.80 s against 1.58 s (wall; its CPU the same; session 12, A/B in one lab).
    A socket that stays open answers in ~20 µs. One per namespace: a process that moves
    to another (tests do) closes the one of the last, which would otherwise keep that
    namespace alive. Use that fails closes it too: what it left unread must not answer
    the next request. The lock: apply's filling thread and its main thread may both
    send batches, and neither may read the other's acknowledgements.
    """

    def __init__(self) -> None:
        self.kept: tuple[int, socket.socket] | None = None  # (network namespace inode, the socket there)
        self.lock = threading.Lock()

    @contextmanager
    def use(self) -> Iterator[socket.socket]:
        with self.lock:
            namespace = os.stat("/proc/thread-self/ns/net").st_ino  # setns is per thread
            if self.kept is not None and self.kept[0] != namespace:
                self.kept[1].close()
                self.kept = None
            if self.kept is None:
                self.kept = (namespace, _socket())
            sock = self.kept[1]
            try:
                yield sock
            except BaseException:
                self.kept = None
                sock.close()
                raise


_requests = KeptSocket()  # small requests; the daemon reads the generation and deletes connections right after a failover
_batches = KeptSocket()  # element batches, once `keep_batch_socket` was called
_keeping_batches = False


def keep_batch_socket() -> None:
    """From now on element batches go through one socket kept open (`KeptSocket`), not a new one each.

    For the daemon, whose reload would otherwise wait for the kernel (~0.2 s after a batch
    deleting a million elements) before it answers, logs or probes again. A one-shot apply does not: its
    socket is closed by apply's filling thread while the main thread works on, so the
    wait overlaps; a kept one would be closed at exit, the wait then added at the end.
    """
    global _keeping_batches
    _keeping_batches = True


def _socket() -> socket.socket:
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
    sock.settimeout(60)
    sock.bind((0, 0))
    return sock


def _element_lists(version: int, intervals: Sequence[Interval]) -> Iterator[bytes | bytearray]:
    """The packed elements of INTERVALS, cut into lists that each fit one attribute."""
    width = KEY_BYTES[version]
    top = (1 << (8 * width)) - 1
    key_head = _attr_header(NFTA_SET_ELEM_KEY | NLA_F_NESTED, 8 + width) + _attr_header(NFTA_DATA_VALUE, 4 + width)
    start_head = _attr_header(NFTA_LIST_ELEM | NLA_F_NESTED, 4 + len(key_head) + width) + key_head
    end_flag = attr(NFTA_SET_ELEM_FLAGS, struct.pack("!I", NFT_SET_ELEM_INTERVAL_END))
    end_head = _attr_header(NFTA_LIST_ELEM | NLA_F_NESTED, 4 + len(key_head) + width + len(end_flag)) + key_head
    if isinstance(intervals, Ipv4Intervals):
        yield from _packed_lists(intervals, start_head, end_head, end_flag, key_head)
        return
    chunk: list[bytes] = []
    size = ATTR_HEADER.size
    for first, last in intervals:
        if last == top:
            packed = _open_element(key_head, first.to_bytes(width, "big"))
        else:
            packed = b"".join((start_head, first.to_bytes(width, "big"),
                               end_head, (last + 1).to_bytes(width, "big"), end_flag))
        if size + len(packed) > MAX_ATTR_LENGTH:
            yield b"".join(chunk)
            chunk, size = [], ATTR_HEADER.size
        chunk.append(packed)
        size += len(packed)
    if chunk:
        yield b"".join(chunk)


def _packed_lists(intervals: Ipv4Intervals, start_head: bytes, end_head: bytes, end_flag: bytes,
                  key_head: bytes) -> Iterator[bytearray]:
    """`_element_lists` of packed IPv4 intervals, byte for byte, without a Python step per interval.

    Every element but an open one (reaching 255.255.255.255, only ever the last) has
    the same 40 bytes around its two keys, so a list is that pattern repeated and the
    keys' bytes written into it by strided slice assignments, one per key byte.
    """
    words = intervals.words
    count = len(intervals)
    open_last = count > 0 and words[-1] == 0xFFFFFFFF
    closed = count - open_last
    pattern = start_head + bytes(4) + end_head + bytes(4) + end_flag
    step, first_at, end_at = len(pattern), len(start_head), len(start_head) + 4 + len(end_head)
    firsts = Ipv4Intervals(words[0:2 * closed:2]).big_endian()
    ends = _one_past(Ipv4Intervals(words[1:2 * closed:2]).big_endian())
    per_list = (MAX_ATTR_LENGTH - ATTR_HEADER.size) // step
    chunk = bytearray()
    for begin in range(0, closed, per_list):
        if chunk:
            yield chunk
        number = min(per_list, closed - begin)
        chunk = bytearray(pattern * number)
        for byte in range(4):
            chunk[first_at + byte::step] = firsts[4 * begin + byte:4 * (begin + number):4]
            chunk[end_at + byte::step] = ends[4 * begin + byte:4 * (begin + number):4]
    if open_last:
        element = _open_element(key_head, words[-2].to_bytes(4, "big"))
        if chunk and ATTR_HEADER.size + len(chunk) + len(element) > MAX_ATTR_LENGTH:
            yield chunk
            chunk = bytearray()
        chunk += element
    if chunk:
        yield chunk


def _one_past(lasts: bytes) -> bytes:
    """Each 4-byte big-endian address of LASTS plus one, all added as one big number.

    No sum carries into the next address: a closed interval never ends at 255.255.255.255.
    A map adding 1 to each took 4 of the 6 ms that packing 100,000 intervals took.
    """
    ones = int.from_bytes(b"\0\0\0\1" * (len(lasts) // 4), "big")
    return (int.from_bytes(lasts, "big") + ones).to_bytes(len(lasts), "big")


def _open_element(key_head: bytes, first: bytes) -> bytes:
    """An interval reaching the top of the address space: a start element flagged open, no end."""
    return attr(NFTA_LIST_ELEM | NLA_F_NESTED, key_head + first + attr(NFTA_SET_ELEM_USERDATA, OPEN_USERDATA))


def _attr_header(kind: int, length: int) -> bytes:
    return ATTR_HEADER.pack(length, kind)


def _list_message(table: str, set_name: str, elements: bytes | bytearray) -> bytes:
    return (attr(NFTA_SET_ELEM_LIST_TABLE, table.encode() + b"\0")
            + attr(NFTA_SET_ELEM_LIST_SET, set_name.encode() + b"\0")
            + ATTR_HEADER.pack(ATTR_HEADER.size + len(elements), NFTA_SET_ELEM_LIST_ELEMENTS | NLA_F_NESTED)
            + elements)


def _message(kind: int, flags: int, seq: int, family: int, body: bytes, resource: int = 0) -> bytes:
    header = NLMSG_HEADER.pack(NLMSG_HEADER.size + NFGEN_HEADER.size + len(body), kind, flags, seq, 0)
    return header + NFGEN_HEADER.pack(family, 0, socket.htons(resource)) + body


def _commit(batch: Batch) -> None:
    """Send BATCH (one datagram) and wait for every acknowledgement."""
    with _batches.use() if _keeping_batches else _socket() as sock:
        try:
            size = batch.size
            sock.setsockopt(socket.SOL_SOCKET, SO_SNDBUFFORCE, size + 65536)  # a batch must be one datagram
            sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 1 << 20)
            sock.setsockopt(SOL_NETLINK, NETLINK_CAP_ACK, 1)  # errors without a copy of our 64 KiB message
            if sock.sendmsg(batch.parts) != size:  # one datagram, gathered from the parts by the kernel
                raise KernelError("nf_tables: the element batch was not sent whole")
            failures = _acknowledgements(sock, batch.count)
        except OSError as exc:
            raise KernelError(f"nf_tables: sending set elements failed: {exc.strerror or exc}") from exc
    if failures:
        seq, code = failures[0]
        raise KernelError(f"nf_tables refused the elements of set {batch.owners.get(seq, '?')}: {_reason(code)}")


def _acknowledgements(sock: socket.socket, expected: int) -> list[tuple[int, int]]:
    """Read one acknowledgement per message; return the (seq, errno) of those that failed."""
    failures: list[tuple[int, int]] = []
    seen = 0
    while seen < expected:
        data = sock.recv(1 << 20)
        offset = 0
        while offset + NLMSG_HEADER.size <= len(data):
            length, kind, _flags, seq, _pid = NLMSG_HEADER.unpack_from(data, offset)
            if kind == NLMSG_ERROR:
                seen += 1
                code = error_code(data, offset)
                if code:
                    failures.append((seq, code))
            offset += max((length + 3) & ~3, NLMSG_HEADER.size)
    return failures


def _reason(code: int) -> str:
    if code == errno.ENOENT:
        return "an element to delete is not in the set (changed behind markroute's back?)"
    if code in (errno.EEXIST, errno.ENOTEMPTY):
        return "an element to add overlaps one already in the set (changed behind markroute's back?)"
    return os.strerror(code)
