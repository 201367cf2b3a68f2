"""`method: http`: a GET through the uplink; up when the status is the expected one.

Targets are URLs with an address for host: `http://192.0.2.80/health`,
`http://[2001:db8::80]:8080/`. (A name would need a resolver, reached through which
uplink? An address keeps the probe on the probed path and nothing else.) The status
must be one of `expect:` (default: any 2xx). This is the check for an uplink that
answers pings while its service does not: a captive portal answers 302 or 511, a
proxy in trouble 502. Plain HTTP only: TLS would need certificate handling that
says nothing about the path. One TCP connection per probe, closed with a reset.
"""

from __future__ import annotations

import errno
import ipaddress
import selectors
import socket
import struct
import time
from urllib.parse import urlsplit

from markroute.model import HealthCheck
from markroute.probes.method import Answer, Egress, Loop, Method, any_targets
from markroute.probes.sockets import address_tuple, drop_connection, pinned, version_of
from markroute.values import parse_whole, yaml_text


def parse_target(value: object) -> str:
    text = yaml_text(value)
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError:
        raise ValueError(f"'{text}' is not a URL") from None
    if parts.scheme != "http" or not parts.hostname:
        raise ValueError(f"'{text}' is not an http:// URL (e.g. http://192.0.2.80/health)")
    try:
        ipaddress.ip_address(parts.hostname)
    except ValueError:
        raise ValueError(f"'{text}': the host must be an address, not a name (probes use no resolver)") from None
    if port == 0:
        raise ValueError(f"'{text}': port 0")
    return text


def split(target: str) -> tuple[str, int, str]:
    """(address, port, path with query) of a URL target."""
    parts = urlsplit(target)
    assert parts.hostname is not None
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return str(ipaddress.ip_address(parts.hostname)), parts.port or 80, path


def canonical(target: str) -> str:
    host, port, path = split(target)
    return f"http://[{host}]:{port}{path}" if ":" in host else f"http://{host}:{port}{path}"


def status_of(data: bytes) -> int | None:
    """The status code of a response's first line, once it has arrived whole."""
    line, newline, _ = data.partition(b"\r\n")
    if not newline:
        return None
    fields = line.split()
    if len(fields) < 2 or not fields[0].startswith(b"HTTP/") or not fields[1].isdigit():
        return 0
    return int(fields[1])


class HttpProber:
    """A GET per probe; the status line decides."""

    def __init__(self, loop: Loop, egress: Egress, on_answer: Answer, check: HealthCheck) -> None:
        self.loop = loop
        self.egress = egress
        self.on_answer = on_answer
        self.expect = frozenset(int(code) for code in check.expect)
        self.pending: dict[tuple[str, int], tuple[socket.socket, float, bytes]] = {}

    def send(self, target: str, token: int) -> None:
        host, port, path = split(target)
        version = version_of(host)
        family = socket.AF_INET6 if version == 6 else socket.AF_INET
        sock = pinned(family, socket.SOCK_STREAM, 0, self.egress, version)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        code = sock.connect_ex(address_tuple(host, port, self.egress, version))
        if code not in (0, errno.EINPROGRESS):
            sock.close()
            raise OSError(code, f"connect to {target}: {errno.errorcode.get(code, code)}")
        key = (target, token)
        authority = f"[{host}]" if version == 6 else host
        request = (f"GET {path} HTTP/1.0\r\nHost: {authority}\r\nUser-Agent: markroute-probe\r\n"
                   "Connection: close\r\n\r\n").encode()
        self.pending[key] = (sock, time.time(), request)
        self.loop.watch(sock, selectors.EVENT_WRITE, lambda: self.connected(key))

    def connected(self, key: tuple[str, int]) -> None:
        sock, sent, request = self.pending[key]
        self.loop.unwatch(sock)
        try:
            if sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) != 0:
                raise OSError("connect failed")
            sock.send(request)  # a few hundred bytes: fits any fresh socket's buffer
        except OSError:
            self.forget(*key)
            return
        self.pending[key] = (sock, sent, b"")
        self.loop.watch(sock, selectors.EVENT_READ, lambda: self.readable(key))

    def readable(self, key: tuple[str, int]) -> None:
        sock, sent, data = self.pending[key]
        try:
            chunk = sock.recv(512)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            chunk = b""
        status = status_of(data + chunk) if chunk else 0
        if status is None:
            self.pending[key] = (sock, sent, data + chunk)
            return
        self.forget(*key)
        if status and (status in self.expect if self.expect else 200 <= status < 300):
            self.on_answer(key[0], key[1], time.time() - sent)

    def forget(self, target: str, token: int) -> None:
        drop_connection(self.loop, self.pending, target, token)

    def close(self) -> None:
        for target, token in list(self.pending):
            self.forget(target, token)


def open_prober(loop: Loop, egress: Egress, key: str, on_answer: Answer, check: HealthCheck) -> HttpProber:
    return HttpProber(loop, egress, on_answer, check)


def probe_bytes(target: str) -> int:
    """Handshake, request, a short response's headers (~200 bytes), teardown: an estimate."""
    host, _, path = split(target)
    per_packet = 60 if ":" in host else 40
    return 8 * per_packet + 100 + len(path) + 200


def parse_expect(value: object) -> str:
    return str(parse_whole(value, 100, 599))


METHOD = Method(
    name="http",
    parse_target=parse_target,
    invalid_targets=any_targets,
    default_gateways=(),
    canonical=canonical,
    prober_key=lambda target: "http",  # one prober; each probe has its own connection
    parse_expect=parse_expect,
    probe_bytes=probe_bytes,
    open_prober=open_prober,
)
