"""Echo server that tells each client which source address it saw.

Run inside a lab namespace as::

    python -m markroute.lab.echo --tcp PORT --udp PORT [--bind ::]

Every TCP line and every UDP datagram is answered with one JSON line
``{"src": ADDR, "sport": N, "dst": ADDR}``: ``src``/``sport`` are the
client's address and port as seen here (after any NAT on the way), ``dst``
the local address the client reached.  Because the lab's "internet"
namespace masquerades per ISP, ``src`` tells a test which ISP carried a flow.
TCP connections stay open as long as the client keeps sending so long-lived
flows can be checked for stickiness.

One dual-stack IPv6 socket per port serves IPv4 too (as v4-mapped
addresses).  UDP replies carry the destination address of the request as
their source (IPV6_PKTINFO): the lab's servers answer for whole ranges via
AnyIP routes, and a reply from any other address would be dropped by the
client's connected socket.  A single selector loop keeps thousands of short
connections cheap, and errors on one client never stop the server.
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import json
import selectors
import socket
import struct
import sys
from collections.abc import Sequence
from dataclasses import dataclass

_BACKLOG = 1024
_MAX_LINE = 65536
_SEND_TIMEOUT = 1.0
# struct in6_pktinfo { struct in6_addr ipi6_addr; int ipi6_ifindex; }
_PKTINFO = struct.Struct("=16si")
#: linux/in6.h; not exported by Python 3.11.  Needed to use AnyIP addresses
#: with IPv6, which (unlike IPv4) only trusts addresses configured on a device.
IPV6_FREEBIND = getattr(socket, "IPV6_FREEBIND", 78)


def plain_address(addr: str) -> str:
    """Show IPv4 clients of a dual-stack socket as IPv4, not ``::ffff:a.b.c.d``."""
    ip = ipaddress.ip_address(addr.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return str(ip)


def answer(src: tuple[str, int], dst: str) -> bytes:
    """The JSON line sent back for one request."""
    reply = {"src": plain_address(src[0]), "sport": src[1], "dst": plain_address(dst)}
    return json.dumps(reply).encode() + b"\n"


def v6_bind_address(bind: str) -> str:
    """Map an IPv4 bind address to its v4-mapped form for the IPv6 socket."""
    ip = ipaddress.ip_address(bind)
    return f"::ffff:{ip}" if ip.version == 4 else str(ip)


def _socket(kind: socket.SocketKind, bind: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET6, kind)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    sock.bind((v6_bind_address(bind), port))
    sock.setblocking(False)
    return sock


@dataclass
class _Client:
    """An accepted TCP connection: its fixed answer and any partial line."""

    reply: bytes
    pending: bytes = b""


class EchoServer:
    """Selector loop over the listening TCP, UDP and accepted sockets."""

    def __init__(self, bind: str, tcp_ports: Sequence[int], udp_ports: Sequence[int]) -> None:
        self.selector = selectors.DefaultSelector()
        self.clients: dict[socket.socket, _Client] = {}
        for port in tcp_ports:
            listener = _socket(socket.SOCK_STREAM, bind, port)
            listener.listen(_BACKLOG)
            self.selector.register(listener, selectors.EVENT_READ, self._accept)
        for port in udp_ports:
            dgram = _socket(socket.SOCK_DGRAM, bind, port)
            dgram.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_RECVPKTINFO, 1)
            # Lets the IPv6 PKTINFO source be an AnyIP (routed-local) address.
            dgram.setsockopt(socket.IPPROTO_IPV6, IPV6_FREEBIND, 1)
            self.selector.register(dgram, selectors.EVENT_READ, self._datagram)

    def serve_forever(self) -> None:
        while True:
            for key, _ in self.selector.select():
                try:
                    key.data(key.fileobj)
                except OSError as exc:  # one bad client must not stop the server
                    print(f"echo: {exc!r}", file=sys.stderr)

    def _accept(self, listener: socket.socket) -> None:
        conn, peer = listener.accept()
        # The answer never changes for a connection, so build it once.
        self.clients[conn] = _Client(answer(peer[:2], conn.getsockname()[0]))
        conn.settimeout(_SEND_TIMEOUT)
        self.selector.register(conn, selectors.EVENT_READ, self._receive)

    def _receive(self, conn: socket.socket) -> None:
        """Answer each complete line; drop the client on EOF, error or abuse."""
        client = self.clients[conn]
        try:
            data = conn.recv(65536)
            buffered = client.pending + data
            lines = buffered.count(b"\n")
            client.pending = buffered.rsplit(b"\n", 1)[-1]
            if not data or len(client.pending) > _MAX_LINE:
                raise ConnectionAbortedError("client closed or sent an overlong line")
            # Readable means recv will not block; sendall blocks at most
            # _SEND_TIMEOUT for a client that stopped reading.
            conn.sendall(client.reply * lines)
        except OSError:
            self._drop(conn)

    def _drop(self, conn: socket.socket) -> None:
        self.selector.unregister(conn)
        del self.clients[conn]
        conn.close()

    def _datagram(self, sock: socket.socket) -> None:
        _, ancdata, _, peer = sock.recvmsg(65536, socket.CMSG_SPACE(_PKTINFO.size))
        for level, kind, data in ancdata:
            if level == socket.IPPROTO_IPV6 and kind == socket.IPV6_PKTINFO:
                local, _ = _PKTINFO.unpack(data[: _PKTINFO.size])
                dst = socket.inet_ntop(socket.AF_INET6, local)
                # Answer from the address the client targeted (AnyIP ranges).
                cmsg = (level, kind, _PKTINFO.pack(local, 0))
                sock.sendmsg([answer(peer[:2], dst)], [cmsg], 0, peer)
                return


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m markroute.lab.echo", description=__doc__)
    parser.add_argument("--tcp", type=int, action="append", default=[], metavar="PORT")
    parser.add_argument("--udp", type=int, action="append", default=[], metavar="PORT")
    parser.add_argument("--bind", default="::", help="address to listen on (default: ::)")
    args = parser.parse_args(argv)
    if not args.tcp and not args.udp:
        parser.error("give at least one --tcp or --udp port")
    return args


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    server = EchoServer(args.bind, args.tcp, args.udp)
    print("READY", flush=True)  # Lab.serve_echo waits for this line
    with contextlib.suppress(KeyboardInterrupt):
        server.serve_forever()


if __name__ == "__main__":
    main()
