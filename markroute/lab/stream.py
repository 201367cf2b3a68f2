"""One long-lived flow to an echo server, timed: how long did a failover interrupt it?

Run inside a lab client namespace as::

    python -m markroute.lab.stream tcp|udp HOST PORT [--interval S] [--duration S]

Unlike :mod:`markroute.lab.probe` (many short flows), this keeps a single TCP
connection or a single connected UDP socket for *duration* seconds and sends
one line every *interval*.  Every :mod:`markroute.lab.echo` answer names the
source address and port the server saw, so a test can tell whether a router
takeover kept the connection's NAT binding (same address and port before and
after) and how long no answer came back (the largest gap between answers).
A TCP connection that is reset ends the run early with the error recorded.

Prints one JSON object::

    {"sent": n, "answers": n, "sources": [[addr, port], ...],
     "max_gap": s, "gap_start": s, "error": null | "ConnectionResetError: ..."}

``sources`` lists each distinct (address, port) in the order first seen;
``gap_start`` is when the largest gap began, in seconds after the first send.
"""

from __future__ import annotations

import argparse
import json
import select
import socket
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from markroute.lab.addresses import check_lab_address

_CONNECT_TIMEOUT = 5.0


@dataclass
class StreamLog:
    """What one run observed: answer arrival times and the sources they named."""

    started: float
    sent: int = 0
    arrivals: list[float] = field(default_factory=list)
    sources: list[tuple[str, int]] = field(default_factory=list)
    error: str | None = None

    def answer(self, raw: bytes) -> None:
        """Record one echo answer (a JSON line) arriving now."""
        reply = json.loads(raw)
        self.arrivals.append(time.monotonic())
        source = (str(reply["src"]), int(reply["sport"]))
        if source not in self.sources:
            self.sources.append(source)

    def summary(self) -> dict[str, object]:
        """The JSON object described in the module docstring."""
        times = [self.started, *self.arrivals]
        gaps = [(b - a, a) for a, b in zip(times, times[1:], strict=False)]
        max_gap, gap_at = max(gaps, default=(0.0, self.started))
        return {
            "sent": self.sent,
            "answers": len(self.arrivals),
            "sources": [list(s) for s in self.sources],
            "max_gap": round(max_gap, 3),
            "gap_start": round(gap_at - self.started, 3),
            "error": self.error,
        }


def _connect(proto: str, host: str, port: int) -> socket.socket:
    kind = socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, kind)
    sock.settimeout(_CONNECT_TIMEOUT)
    sock.connect((host, port))
    sock.setblocking(False)
    return sock


def _read_answers(sock: socket.socket, proto: str, pending: bytes, log: StreamLog) -> bytes:
    """Consume whatever answers are readable now; return an incomplete TCP line left over."""
    while True:
        try:
            data = sock.recv(65536)
        except BlockingIOError:
            return pending
        if proto == "udp":
            log.answer(data)
            continue
        if not data:
            raise ConnectionResetError("server closed the connection")
        *lines, pending = (pending + data).split(b"\n")
        for line in lines:
            log.answer(line)


def run_stream(proto: str, host: str, port: int, interval: float, duration: float) -> StreamLog:
    """Send a line every *interval* for *duration* seconds on one flow and log the answers."""
    sock = _connect(proto, host, port)
    log = StreamLog(started=time.monotonic())
    deadline = log.started + duration
    pending = b""
    try:
        next_send = log.started
        while (now := time.monotonic()) < deadline:
            try:
                if now >= next_send:
                    next_send += interval
                    log.sent += 1
                    sock.send(f"stream {log.sent}\n".encode())
                wait = max(0.0, min(next_send, deadline) - time.monotonic())
                select.select([sock], [], [], wait)
                pending = _read_answers(sock, proto, pending, log)
            except ConnectionRefusedError:
                # An ICMP error on a UDP socket (a router without the route yet)
                # is one lost exchange, not the end of the flow.
                if proto != "udp":
                    raise
    except OSError as exc:
        log.error = f"{type(exc).__name__}: {exc}"
    finally:
        sock.close()
    return log


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m markroute.lab.stream", description=__doc__)
    parser.add_argument("proto", choices=("tcp", "udp"))
    parser.add_argument("host", type=check_lab_address, help="server address (lab ranges only)")
    parser.add_argument("port", type=int)
    parser.add_argument("--interval", type=float, default=0.02, help="seconds between lines")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds to run")
    args = parser.parse_args(argv)
    if args.interval <= 0 or args.duration <= 0:
        parser.error("--interval and --duration must be positive")
    return args


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    log = run_stream(args.proto, args.host, args.port, args.interval, args.duration)
    json.dump(log.summary(), sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
