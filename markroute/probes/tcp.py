"""`method: tcp`: a TCP connect per probe to `host:port` targets (no default targets)."""

from __future__ import annotations

import errno
import ipaddress
import selectors
import socket
import struct
import time

from markroute.model import HealthCheck
from markroute.probes.method import Answer, Egress, Loop, Method, no_expect
from markroute.probes.sockets import (
    address_tuple,
    drop_connection,
    pinned,
    split_target,
    version_of,
)
from markroute.values import parse_probe_target


def invalid_targets(targets: tuple[str, ...]) -> str | None:
    if any(":" not in target.rsplit("]", 1)[-1] for target in targets):
        return "tcp checks need targets as host:port"
    return None


def canonical(target: str) -> str:
    host, port = split_target(target)
    host = str(ipaddress.ip_address(host))
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class TcpProber:
    """A TCP connect per probe: an accepted connection or a refusal proves the path works.

    Sockets close with a reset (SO_LINGER 0), so probing ten times a second leaves no
    TIME_WAIT behind.
    """

    def __init__(self, loop: Loop, egress: Egress, on_answer: Answer) -> None:
        self.loop = loop
        self.egress = egress
        self.on_answer = on_answer
        self.pending: dict[tuple[str, int], tuple[socket.socket, float]] = {}

    def send(self, target: str, token: int) -> None:
        host, port = split_target(target)
        version = version_of(host)
        family = socket.AF_INET6 if version == 6 else socket.AF_INET
        sock = pinned(family, socket.SOCK_STREAM, 0, self.egress, version)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        code = sock.connect_ex(address_tuple(host, port, self.egress, version))
        if code not in (0, errno.EINPROGRESS):
            sock.close()
            raise OSError(code, f"connect to {target}: {errno.errorcode.get(code, code)}")
        key = (target, token)
        self.pending[key] = (sock, time.time())
        self.loop.watch(sock, selectors.EVENT_WRITE, lambda: self.connected(key))

    def connected(self, key: tuple[str, int]) -> None:
        sock, sent = self.pending.pop(key)
        self.loop.unwatch(sock)
        code = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        sock.close()
        if code in (0, errno.ECONNREFUSED):
            self.on_answer(key[0], key[1], time.time() - sent)

    def forget(self, target: str, token: int) -> None:
        drop_connection(self.loop, self.pending, target, token)

    def close(self) -> None:
        for target, token in list(self.pending):
            self.forget(target, token)


def open_prober(loop: Loop, egress: Egress, key: str, on_answer: Answer, check: HealthCheck) -> TcpProber:
    return TcpProber(loop, egress, on_answer)


METHOD = Method(
    name="tcp",
    parse_target=parse_probe_target,
    invalid_targets=invalid_targets,
    default_gateways=(),
    canonical=canonical,
    prober_key=lambda target: "tcp",  # one prober; each probe has its own socket
    parse_expect=no_expect,
    probe_bytes=lambda target: (60 if "[" in target else 0) + 60 + 60 + 40,  # SYN, SYN-ACK or RST, our RST
    open_prober=open_prober,
)
