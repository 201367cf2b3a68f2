"""rtnetlink (NETLINK_ROUTE) spoken directly: the links, addresses, routes and ip rules markroute reads and writes.

Why not pyroute2, which the daemon still uses for its event socket and conntrack:
`import pyroute2` costs ~80 ms of CPU (its `__init__` imports IPDB, NDB, conntrack and
the rest), and each request of its 0.9 `IPRoute` runs an asyncio event loop (~0.3 ms a
call). `markroute apply` is measured against the kernel's own insert of its set
elements (issue 15: within 1.5x), and with 100,000 prefixes that insert takes ~0.15 s:
the import alone was half of it. What apply and `kernel.rpdb` need is four dumps and
two kinds of change, a few dozen lines of `struct` here.

Messages are decoded into `Message`: header fields under pyroute2's names
(`msg["family"]`, `msg["dst_len"]`, a next hop's `hop["oif"]`) and attributes under the
kernel's (`msg.get_attr("RTA_OIF")`), decoded as pyroute2 decodes them (addresses as
text, a MAC as `aa:bb:..`, a port range as "start:end"): the shape `kernel.ipjson` and
its callers read, whichever socket a message came from. Attributes not listed here are
left out.

Routes and rules are dumped per family (AF_INET, then AF_INET6), as `ip route` and
`ip -6 route` show them. The socket's port is this process's pid plus a number << 22,
as pyroute2 numbers its sockets, so the daemon tells its own changes from others' the
same way for both (`daemon.churn.own`). A refused change raises `RtnetlinkError` with
the kernel's extended acknowledgement message when it gives one.
"""

from __future__ import annotations

import errno
import os
import socket
import struct
from collections.abc import Callable, Iterator
from types import TracebackType
from typing import Any, NoReturn

from markroute.kernel.netlinkwire import (
    NETLINK_CAP_ACK,
    NETLINK_EXT_ACK,
    NLM_F_ACK,
    NLM_F_ACK_TLVS,
    NLM_F_APPEND,
    NLM_F_CREATE,
    NLM_F_DUMP,
    NLM_F_DUMP_INTR,
    NLM_F_EXCL,
    NLM_F_REQUEST,
    NLMSG_DONE,
    NLMSG_ERROR,
    NLMSG_HEADER,
    NLMSGERR_ATTR_MSG,
    SOL_NETLINK,
    attr,
    attributes,
    error_code,
)

NETLINK_ROUTE = 0
RTM_NEWLINK, RTM_GETLINK = 16, 18
RTM_NEWADDR, RTM_GETADDR = 20, 22
RTM_NEWROUTE, RTM_DELROUTE, RTM_GETROUTE = 24, 25, 26
RTM_NEWRULE, RTM_DELRULE, RTM_GETRULE = 32, 33, 34
RT_TABLE_UNSPEC = 0
RTN_UNICAST = 1
RT_SCOPE_UNIVERSE, RT_SCOPE_NOWHERE = 0, 255
FR_ACT_TO_TBL = 1
PORT_SLOTS = 1024  # sockets per process, numbered into the port's top 10 bits
RECEIVE_BYTES = 1 << 16
DUMP_TRIES = 5  # a dump the kernel flags as interrupted by a change is asked for again
TIMEOUT = 60.0

Decoder = Callable[[bytes | memoryview], Any]


class RtnetlinkError(Exception):
    """The kernel refused a request: CODE is the errno, DETAIL its extended acknowledgement or strerror."""

    def __init__(self, code: int, detail: str) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail


class Message:
    """One decoded rtnetlink message (or a next hop of a multipath route): header fields and attributes."""

    __slots__ = ("fields", "attrs")

    def __init__(self, fields: dict[str, int], attrs: dict[str, Any]) -> None:
        self.fields = fields
        self.attrs = attrs

    def __getitem__(self, name: str) -> Any:  # Any, as for pyroute2's messages: callers index dicts by family
        return self.fields[name]

    def get(self, name: str, default: Any = None) -> Any:
        return self.fields.get(name, default)

    def get_attr(self, name: str) -> Any:
        return self.attrs.get(name)

    def __repr__(self) -> str:
        return f"Message({self.fields!r}, {self.attrs!r})"


# -- decoding -------------------------------------------------------------------------

def _u8(data: bytes | memoryview) -> int:
    return int(data[0])


def _u16(data: bytes | memoryview) -> int:
    return int(struct.unpack_from("=H", data)[0])


def _u32(data: bytes | memoryview) -> int:
    return int(struct.unpack_from("=I", data)[0])


def _be64(data: bytes | memoryview) -> int:
    return int(struct.unpack_from("!Q", data)[0])


def _text(data: bytes | memoryview) -> str:
    return bytes(data).split(b"\0", 1)[0].decode(errors="replace")


def _address(data: bytes | memoryview) -> str:
    return socket.inet_ntop(socket.AF_INET6 if len(data) == 16 else socket.AF_INET, bytes(data))


def _mac(data: bytes | memoryview) -> str:
    return ":".join(f"{byte:02x}" for byte in bytes(data))


def _range(fmt: str) -> Decoder:
    layout = struct.Struct(fmt)
    return lambda data: "{}:{}".format(*layout.unpack_from(data))


def _named(names: tuple[str, ...], fmt: str) -> Decoder:
    """A C struct of fields NAMES: as many as the kernel sent (older kernels send fewer)."""
    size = struct.calcsize(fmt[:2])

    def decode(data: bytes | memoryview) -> dict[str, int]:
        count = min(len(names), len(data) // size)
        return dict(zip(names, struct.unpack_from(fmt[0] + fmt[1:count + 1], data)))
    return decode


STATS64 = ("rx_packets", "tx_packets", "rx_bytes", "tx_bytes", "rx_errors", "tx_errors", "rx_dropped", "tx_dropped",
           "multicast", "collisions")
CACHEINFO = ("rta_clntref", "rta_lastuse", "rta_expires", "rta_error", "rta_used", "rta_id", "rta_ts", "rta_tsage")

LINK_ATTRS: dict[int, tuple[str, Decoder]] = {
    1: ("IFLA_ADDRESS", _mac), 2: ("IFLA_BROADCAST", _mac), 3: ("IFLA_IFNAME", _text), 4: ("IFLA_MTU", _u32),
    5: ("IFLA_LINK", _u32), 10: ("IFLA_MASTER", _u32), 16: ("IFLA_OPERSTATE", _u8),
    23: ("IFLA_STATS64", _named(STATS64, "=" + "Q" * len(STATS64))),
}
ADDR_ATTRS: dict[int, tuple[str, Decoder]] = {
    1: ("IFA_ADDRESS", _address), 2: ("IFA_LOCAL", _address), 3: ("IFA_LABEL", _text),
    4: ("IFA_BROADCAST", _address), 8: ("IFA_FLAGS", _u32),
}
ROUTE_ATTRS: dict[int, tuple[str, Decoder]] = {
    1: ("RTA_DST", _address), 2: ("RTA_SRC", _address), 3: ("RTA_IIF", _u32), 4: ("RTA_OIF", _u32),
    5: ("RTA_GATEWAY", _address), 6: ("RTA_PRIORITY", _u32), 7: ("RTA_PREFSRC", _address),
    11: ("RTA_FLOW", _u32), 12: ("RTA_CACHEINFO", _named(CACHEINFO, "=IIiIIIII")), 15: ("RTA_TABLE", _u32),
    16: ("RTA_MARK", _u32), 20: ("RTA_PREF", _u8), 21: ("RTA_ENCAP_TYPE", _u16),
}
RULE_ATTRS: dict[int, tuple[str, Decoder]] = {
    1: ("FRA_DST", _address), 2: ("FRA_SRC", _address), 3: ("FRA_IIFNAME", _text), 4: ("FRA_GOTO", _u32),
    6: ("FRA_PRIORITY", _u32), 10: ("FRA_FWMARK", _u32), 11: ("FRA_FLOW", _u32), 12: ("FRA_TUN_ID", _be64),
    13: ("FRA_SUPPRESS_IFGROUP", _u32), 14: ("FRA_SUPPRESS_PREFIXLEN", _u32), 15: ("FRA_TABLE", _u32),
    16: ("FRA_FWMASK", _u32), 17: ("FRA_OIFNAME", _text), 19: ("FRA_L3MDEV", _u8),
    20: ("FRA_UID_RANGE", _range("=II")), 21: ("FRA_PROTOCOL", _u8), 22: ("FRA_IP_PROTO", _u8),
    23: ("FRA_SPORT_RANGE", _range("=HH")), 24: ("FRA_DPORT_RANGE", _range("=HH")),
}
MULTIPATH = 9  # RTA_MULTIPATH: a list of next hops, each a header and route attributes

LINK_HEADER = (struct.Struct("=BxHiII"), ("family", "ifi_type", "index", "flags", "change"))
ADDR_HEADER = (struct.Struct("=BBBBI"), ("family", "prefixlen", "flags", "scope", "index"))
ROUTE_HEADER = (struct.Struct("=BBBBBBBBI"),
                ("family", "dst_len", "src_len", "tos", "table", "proto", "scope", "type", "flags"))
RULE_HEADER = (struct.Struct("=BBBBBBBBI"),
               ("family", "dst_len", "src_len", "tos", "table", "res1", "res2", "action", "flags"))
NEXTHOP_HEADER = (struct.Struct("=HBBi"), ("length", "flags", "hops", "oif"))
KINDS = {
    RTM_NEWLINK: (LINK_HEADER, LINK_ATTRS), RTM_NEWADDR: (ADDR_HEADER, ADDR_ATTRS),
    RTM_NEWROUTE: (ROUTE_HEADER, ROUTE_ATTRS), RTM_NEWRULE: (RULE_HEADER, RULE_ATTRS),
}


def decode(kind: int, data: bytes | memoryview) -> Message:
    """The payload DATA (after the netlink header) of a message of type KIND (RTM_NEW*)."""
    (header, names), known = KINDS[kind]
    return Message(dict(zip(names, header.unpack_from(data))), _attrs(data, header.size, len(data), known))


def _attrs(data: bytes | memoryview, offset: int, end: int, known: dict[int, tuple[str, Decoder]]) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for kind, payload in attributes(data, offset, end):
        if kind == MULTIPATH and known is ROUTE_ATTRS:
            found["RTA_MULTIPATH"] = _next_hops(payload)
        elif kind in known:
            name, decoder = known[kind]
            found[name] = decoder(payload)
    return found


def _next_hops(data: bytes | memoryview) -> list[Message]:
    header, names = NEXTHOP_HEADER
    hops: list[Message] = []
    offset = 0
    while offset + header.size <= len(data):
        values = header.unpack_from(data, offset)
        length = values[0]
        if length < header.size:
            break
        hops.append(Message(dict(zip(names, values)), _attrs(data, offset + header.size, offset + length, ROUTE_ATTRS)))
        offset += (length + 3) & ~3
    return hops


# -- encoding -------------------------------------------------------------------------

def rule_request(command: str, fields: dict[str, Any]) -> tuple[int, int, bytes]:
    """(message type, flags, payload) of an ip rule "add" or "del" from pyroute2-style FIELDS.

    FIELDS: family, priority, protocol, action (default: lookup when a table is
    given), table, fwmark, fwmask, src/src_len, dst/dst_len. A table above 255 goes in
    FRA_TABLE only, as iproute2 sends it.
    """
    family = fields["family"]
    table = fields.get("table")
    action = fields.get("action", FR_ACT_TO_TBL if table is not None else 0)
    header = RULE_HEADER[0].pack(family, fields.get("dst_len", 0), fields.get("src_len", 0), fields.get("tos", 0),
                                 table if table is not None and table < 256 else RT_TABLE_UNSPEC, 0, 0, action, 0)
    body = [header, attr(6, struct.pack("=I", fields.get("priority", 0)))]
    if table is not None:
        body.append(attr(15, struct.pack("=I", table)))
    for key, number in (("fwmark", 10), ("fwmask", 16)):
        if fields.get(key) is not None:
            body.append(attr(number, struct.pack("=I", fields[key])))
    for key, number in (("src", 2), ("dst", 1)):
        if fields.get(key) is not None:
            body.append(attr(number, socket.inet_pton(family, fields[key])))
    if fields.get("protocol") is not None:
        body.append(attr(21, bytes([fields["protocol"]])))
    if command == "add":
        return RTM_NEWRULE, NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL, b"".join(body)
    return RTM_DELRULE, NLM_F_REQUEST | NLM_F_ACK, b"".join(body)


def route_request(command: str, fields: dict[str, Any]) -> tuple[int, int, bytes]:
    """(message type, flags, payload) of a route "append" or "del" from pyroute2-style FIELDS.

    FIELDS: family, table, dst/dst_len, oif, gateway, proto, scope, type, tos,
    priority, flow. A deletion without a scope or type matches any (RT_SCOPE_NOWHERE,
    type 0), as `ip route del` does; an added route is unicast, scope universe unless given.
    """
    family = fields["family"]
    table = fields["table"]
    adding = command == "append"
    scope = fields.get("scope", RT_SCOPE_UNIVERSE if adding else RT_SCOPE_NOWHERE)
    kind = fields.get("type", RTN_UNICAST if adding else 0)
    header = ROUTE_HEADER[0].pack(family, fields.get("dst_len", 0), 0, fields.get("tos", 0),
                                  table if table < 256 else RT_TABLE_UNSPEC, fields.get("proto", 0), scope, kind, 0)
    body = [header, attr(15, struct.pack("=I", table))]
    for key, number in (("dst", 1), ("gateway", 5)):
        if fields.get(key) is not None:
            body.append(attr(number, socket.inet_pton(family, fields[key])))
    for key, number in (("oif", 4), ("priority", 6), ("flow", 11)):
        if fields.get(key) is not None:
            body.append(attr(number, struct.pack("=I", fields[key])))
    if adding:
        return RTM_NEWROUTE, NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_APPEND, b"".join(body)
    return RTM_DELROUTE, NLM_F_REQUEST | NLM_F_ACK, b"".join(body)


# -- the socket -------------------------------------------------------------------------

class Rtnetlink:
    """One rtnetlink socket in the current namespace: dumps, and changes acknowledged one by one."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, NETLINK_ROUTE)
        try:
            self.sock.setsockopt(SOL_NETLINK, NETLINK_EXT_ACK, 1)
            self.sock.setsockopt(SOL_NETLINK, NETLINK_CAP_ACK, 1)
            self.sock.settimeout(TIMEOUT)
            self.port = _bind(self.sock)
        except BaseException:
            self.sock.close()
            raise
        self.seq = 0

    def __enter__(self) -> Rtnetlink:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        self.sock.close()

    def get_links(self) -> list[Message]:
        return self.dump(RTM_GETLINK, LINK_HEADER[0].pack(socket.AF_UNSPEC, 0, 0, 0, 0))

    def get_addr(self) -> list[Message]:
        return self.dump(RTM_GETADDR, ADDR_HEADER[0].pack(socket.AF_UNSPEC, 0, 0, 0, 0))

    def get_routes(self) -> list[Message]:
        """Every IPv4 and IPv6 route of every table."""
        return [msg for family in (socket.AF_INET, socket.AF_INET6)
                for msg in self.dump(RTM_GETROUTE, ROUTE_HEADER[0].pack(family, 0, 0, 0, 0, 0, 0, 0, 0))]

    def get_rules(self, family: int) -> list[Message]:
        return self.dump(RTM_GETRULE, RULE_HEADER[0].pack(family, 0, 0, 0, 0, 0, 0, 0, 0))

    def rule(self, command: str, **fields: Any) -> None:
        """Add ("add") or delete ("del") one ip rule (`rule_request`)."""
        self.request(*rule_request(command, fields))

    def route(self, command: str, **fields: Any) -> None:
        """Append ("append") or delete ("del") one route (`route_request`)."""
        self.request(*route_request(command, fields))

    def dump(self, kind: int, payload: bytes) -> list[Message]:
        """The messages of a dump request of type KIND: a consistent picture (a dump that another
        process's change interrupted is asked for again)."""
        for _ in range(DUMP_TRIES):
            found, interrupted = self._dump_once(kind, payload)
            if not interrupted:
                return found
        raise RtnetlinkError(errno.EAGAIN, f"the kernel's list changed during each of {DUMP_TRIES} tries to read it")

    def _dump_once(self, kind: int, payload: bytes) -> tuple[list[Message], bool]:
        seq = self._send(kind, NLM_F_REQUEST | NLM_F_DUMP, payload)
        found: list[Message] = []
        interrupted = False
        for reply, data, offset, length in self._replies(seq):
            interrupted |= bool(NLMSG_HEADER.unpack_from(data, offset)[2] & NLM_F_DUMP_INTR)
            if reply == NLMSG_DONE:
                break
            if reply == NLMSG_ERROR:
                _raise(data, offset, length)
            if reply in KINDS:
                found.append(decode(reply, data[offset + NLMSG_HEADER.size:offset + length]))
        return found, interrupted

    def request(self, kind: int, flags: int, payload: bytes) -> None:
        """Send one change and wait for its acknowledgement; a refusal raises `RtnetlinkError`."""
        seq = self._send(kind, flags, payload)
        for reply, data, offset, length in self._replies(seq):
            if reply == NLMSG_ERROR:
                if error_code(data, offset):
                    _raise(data, offset, length)
                return

    def _send(self, kind: int, flags: int, payload: bytes) -> int:
        self.seq += 1
        try:
            self.sock.sendall(NLMSG_HEADER.pack(NLMSG_HEADER.size + len(payload), kind, flags, self.seq, self.port)
                              + payload)
        except OSError as exc:
            raise RtnetlinkError(exc.errno or 0, f"sending to the kernel failed: {exc.strerror or exc}") from exc
        return self.seq

    def _replies(self, seq: int) -> Iterator[tuple[int, bytes, int, int]]:
        """(type, datagram, offset, length) of each reply message to request SEQ, until the caller stops."""
        while True:
            try:
                data = self.sock.recv(RECEIVE_BYTES)
            except OSError as exc:
                raise RtnetlinkError(exc.errno or 0, f"reading the kernel's answer failed: {exc.strerror or exc}") from exc
            offset = 0
            while offset + NLMSG_HEADER.size <= len(data):
                length, kind, _flags, number, _port = NLMSG_HEADER.unpack_from(data, offset)
                if length < NLMSG_HEADER.size:
                    break
                if number == seq:
                    yield kind, data, offset, length
                offset += (length + 3) & ~3


def _bind(sock: socket.socket) -> int:
    """Bind to the first free port pid + n << 22 (pyroute2's numbering); the port."""
    pid = os.getpid() & 0x3FFFFF
    for slot in range(PORT_SLOTS):
        port = pid | slot << 22
        try:
            sock.bind((port, 0))
            return port
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE:
                raise
    sock.bind((0, 0))
    bound: int = sock.getsockname()[0]
    return bound


def _raise(data: bytes, offset: int, length: int) -> NoReturn:
    """Raise the refusal in the NLMSG_ERROR message at OFFSET, with the kernel's own words when it sent some."""
    code = error_code(data, offset)
    detail = os.strerror(code)
    _length, _kind, flags, _seq, _port = NLMSG_HEADER.unpack_from(data, offset)
    if flags & NLM_F_ACK_TLVS:  # after the errno, the request's header (NETLINK_CAP_ACK: not its payload)
        for kind, payload in attributes(data, offset + 2 * NLMSG_HEADER.size + 4, offset + length):
            if kind == NLMSGERR_ATTR_MSG:
                detail = _text(payload)
    raise RtnetlinkError(code, detail)
