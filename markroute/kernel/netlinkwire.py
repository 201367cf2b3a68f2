"""Netlink framing shared by markroute's own netlink modules (`nftnetlink`, `rtnetlink`).

A netlink message is a 16-byte header (length, type, flags, sequence, port) and a
payload; attributes are (length, type) headers with their payload, each padded to 4
bytes. Linux UAPI numbers from netlink.h.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator

SOL_NETLINK = 270
NETLINK_CAP_ACK, NETLINK_EXT_ACK = 10, 11
NLMSG_ERROR, NLMSG_DONE = 2, 3
NLM_F_REQUEST, NLM_F_MULTI, NLM_F_ACK = 0x1, 0x2, 0x4
NLM_F_DUMP_INTR = 0x10  # on a dump's message: the object list changed while it was dumped
NLM_F_ROOT, NLM_F_MATCH = 0x100, 0x200
NLM_F_DUMP = NLM_F_ROOT | NLM_F_MATCH
NLM_F_EXCL, NLM_F_CREATE, NLM_F_APPEND = 0x200, 0x400, 0x800
NLM_F_ACK_TLVS = 0x200  # on an NLMSG_ERROR: extended acknowledgement attributes follow
NLMSGERR_ATTR_MSG = 1
NLA_F_NESTED = 0x8000
NLA_TYPE_MASK = 0x3FFF

NLMSG_HEADER = struct.Struct("=IHHII")
ATTR_HEADER = struct.Struct("=HH")


def attr(kind: int, payload: bytes) -> bytes:
    """One attribute, padded to 4 bytes."""
    length = ATTR_HEADER.size + len(payload)
    return ATTR_HEADER.pack(length, kind) + payload + bytes(-length % 4)


def attributes(data: bytes | memoryview, offset: int, end: int) -> Iterator[tuple[int, bytes | memoryview]]:
    """(type without its flag bits, payload) of each attribute between OFFSET and END."""
    while offset + ATTR_HEADER.size <= end:
        length, kind = ATTR_HEADER.unpack_from(data, offset)
        if length < ATTR_HEADER.size:
            return
        yield kind & NLA_TYPE_MASK, data[offset + ATTR_HEADER.size:offset + length]
        offset += (length + 3) & ~3


def error_code(data: bytes | memoryview, offset: int) -> int:
    """The errno of the NLMSG_ERROR message at OFFSET (0 for an acknowledgement)."""
    return -int(struct.unpack_from("=i", data, offset + NLMSG_HEADER.size)[0])
