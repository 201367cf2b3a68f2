"""Traffic probe: many short flows to an echo server, summarised as JSON.

Run inside a lab client namespace as::

    python -m markroute.lab.probe tcp|udp HOST PORT [--count N] [--packets K]
        [--bind SRC] [--sport P] [--timeout S] [--parallel J]

It opens N flows (a fresh source port each, unless ``--sport`` pins one),
sends K lines on each and reads the :mod:`markroute.lab.echo` answers, which
name the source address the server saw.  Policy routing spreads flows over
ISPs, so the distribution of seen sources shows the balancing, and K > 1
shows stickiness: every answer on one flow must name the same source.  For
UDP a flow is a fresh connected socket.

Prints one JSON object::

    {"ok": n, "failed": n, "seen": {"198.51.100.2": n, ...},
     "inconsistent": n, "errors": {"TimeoutError": n, ...}}

``seen`` counts successful flows by the source of their first answer;
``inconsistent`` counts successful flows whose answers disagreed.  Flows run
concurrently in a thread pool so a thousand of them take a few seconds even
when some time out.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import socket
import struct
import sys
import threading
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from markroute.lab.addresses import check_lab_address
from markroute.lab.echo import IPV6_FREEBIND


@dataclass(frozen=True)
class FlowSpec:
    """What every flow of one probe run looks like."""

    proto: str
    host: str
    port: int
    bind: str | None
    sport: int | None
    packets: int
    timeout: float

    @property
    def family(self) -> socket.AddressFamily:
        version = ipaddress.ip_address(self.host).version
        return socket.AF_INET6 if version == 6 else socket.AF_INET


def _open(spec: FlowSpec) -> socket.socket:
    """A socket bound as requested and connected to the server."""
    kind = socket.SOCK_STREAM if spec.proto == "tcp" else socket.SOCK_DGRAM
    sock = socket.socket(spec.family, kind)
    try:
        sock.settimeout(spec.timeout)
        if spec.sport is not None:
            # Reuse the pinned port while the previous flow's socket lingers.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if spec.family == socket.AF_INET6:
            # Binding an AnyIP source (a remote client in net) needs this on IPv6.
            sock.setsockopt(socket.IPPROTO_IPV6, IPV6_FREEBIND, 1)
        if spec.bind is not None or spec.sport is not None:
            wildcard = "::" if spec.family == socket.AF_INET6 else "0.0.0.0"
            sock.bind((spec.bind or wildcard, spec.sport or 0))
        sock.connect((spec.host, spec.port))
    except BaseException:
        sock.close()
        raise
    return sock


def _close(sock: socket.socket, spec: FlowSpec) -> None:
    """Close a flow; with a pinned TCP port, reset it to leave no TIME_WAIT.

    TIME_WAIT on the pinned 4-tuple would make the next flow's connect fail.
    """
    if spec.proto == "tcp" and spec.sport is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


class PortLedger:
    """Source ports this run has used, so that each flow really is a new connection.

    The kernel may hand a closed flow's ephemeral port to a later flow; to the same
    server that is the same 5-tuple, which conntrack still holds (UDP entries live 30 s),
    so the router would see an old connection instead of a new one.
    """

    def __init__(self) -> None:
        self.used: set[int] = set()
        self.lock = threading.Lock()

    def open(self, spec: FlowSpec) -> socket.socket:
        if spec.sport is not None:
            return _open(spec)
        rejected: list[socket.socket] = []
        try:
            while True:
                sock = _open(spec)
                with self.lock:
                    port = sock.getsockname()[1]
                    if port not in self.used:
                        self.used.add(port)
                        return sock
                rejected.append(sock)  # held open so the kernel picks another port
        finally:
            for sock in rejected:
                sock.close()


def run_flow(spec: FlowSpec, index: int, ports: PortLedger) -> list[str]:
    """Send ``spec.packets`` lines on one new flow; return the source each answer saw."""
    sources: list[str] = []
    sock = ports.open(spec)
    reader = sock.makefile("rb") if spec.proto == "tcp" else None
    try:
        for packet in range(spec.packets):
            sock.sendall(f"probe {index} {packet}\n".encode())
            raw = reader.readline() if reader is not None else sock.recv(65536)
            if not raw:
                raise ConnectionResetError("server closed the connection")
            sources.append(json.loads(raw)["src"])
    finally:
        if reader is not None:
            reader.close()
        _close(sock, spec)
    return sources


def _safe_flow(spec: FlowSpec, index: int, ports: PortLedger) -> list[str] | BaseException:
    """run_flow, with failure returned as a value so one flow cannot abort the run."""
    try:
        return run_flow(spec, index, ports)
    except (OSError, ValueError, KeyError) as exc:
        return exc


def summarise(results: Sequence[list[str] | BaseException]) -> dict[str, object]:
    """Fold per-flow outcomes into the JSON summary described in the module doc."""
    seen: Counter[str] = Counter()
    errors: Counter[str] = Counter()
    inconsistent = 0
    for result in results:
        if isinstance(result, BaseException):
            errors[type(result).__name__] += 1
            continue
        seen[result[0]] += 1
        inconsistent += len(set(result)) > 1
    ok = sum(seen.values())
    return {
        "ok": ok,
        "failed": len(results) - ok,
        "seen": dict(seen),
        "inconsistent": inconsistent,
        "errors": dict(errors),
    }


def probe(spec: FlowSpec, count: int, parallel: int) -> dict[str, object]:
    """Run *count* flows, *parallel* at a time (one at a time with a pinned port)."""
    workers = 1 if spec.sport is not None else max(1, min(parallel, count))
    ports = PortLedger()
    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = list(pool.map(lambda i: _safe_flow(spec, i, ports), range(count)))
    return summarise(results)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m markroute.lab.probe", description=__doc__)
    parser.add_argument("proto", choices=("tcp", "udp"))
    parser.add_argument("host", type=check_lab_address, help="server address (lab ranges only)")
    parser.add_argument("port", type=int)
    parser.add_argument("--count", type=int, default=1, help="number of flows")
    parser.add_argument("--packets", type=int, default=1, help="lines sent per flow")
    parser.add_argument("--bind", type=check_lab_address, help="source address")
    parser.add_argument("--sport", type=int, help="fixed source port for every flow")
    parser.add_argument("--timeout", type=float, default=2.0, help="seconds per reply")
    parser.add_argument("--parallel", type=int, default=32, help="concurrent flows")
    args = parser.parse_args(argv)
    if args.count < 1 or args.packets < 1:
        parser.error("--count and --packets must be at least 1")
    return args


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    spec = FlowSpec(
        args.proto, args.host, args.port, args.bind, args.sport, args.packets, args.timeout
    )
    json.dump(probe(spec, args.count, args.parallel), sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
