"""Shared pieces of the daemon's kernel tests and of benchmarks/bench_failover.py.

* `DaemonLab`: a router lab with two ISPs and an echo server, `markroute run` started as
  a subprocess with `--netns` (killed and `markroute down` at teardown, whatever happened),
  and ways to break an ISP: drop everything in its namespace (`kill_upstream`), or take
  a link down.
* A flow meter, run inside the LAN client's namespace (`python3 tests/daemon_helpers.py
  flow ...`): one UDP flow or one TCP connection sending a line every few milliseconds,
  recording when each answer came and which ISP's address (and source ports) the server saw. The longest
  silence between two answers is the flow's gap: what a user of that flow lived through.
* `ping_replies`: the same for `ping -D` from the LAN.

Run as a script, the module imports no part of markroute, so the meter starts fast.
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
GRACE = 1.0


# -- the flow meter (runs inside a lab namespace) -------------------------------------


def meter(proto: str, host: str, port: int, interval: float, duration: float, sport: int | None) -> dict[str, Any]:
    """Send a line every INTERVAL for DURATION seconds; every answer's arrival time and source.

    Answers still in flight when sending stops are waited for up to `GRACE` seconds, so
    a busy machine does not make late answers look like lost ones.
    """
    kind = socket.SOCK_DGRAM if proto == "udp" else socket.SOCK_STREAM
    sock = socket.socket(socket.AF_INET, kind)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("0.0.0.0", sport or 0))
    sock.connect((host, port))
    sock.setblocking(False)
    replies: list[tuple[float, str]] = []
    server_ports: set[int] = set()
    errors: list[tuple[float, str]] = []
    sent = 0
    pending = b""
    start = time.time()
    next_send = start
    end = start + duration
    broken = False
    while not broken:
        now = time.time()
        sending = now < end
        if not sending and (len(replies) >= sent or now >= end + GRACE):
            break
        if sending and now >= next_send:
            try:
                sock.send(f"{sent}\n".encode())
                sent += 1
            except OSError as exc:
                errors.append((now, errno.errorcode.get(exc.errno or 0, str(exc))))
                broken = proto == "tcp"
            next_send += interval
            if next_send < now:  # held up: skip the missed sends, keep the rhythm
                next_send = now + interval
        wake = min(next_send, end) if sending else end + GRACE
        ready, _, _ = select.select([sock], [], [], max(0.0, wake - time.time()))
        while ready:
            try:
                data = sock.recv(65536)
            except BlockingIOError:
                break
            except OSError as exc:
                errors.append((time.time(), errno.errorcode.get(exc.errno or 0, str(exc))))
                broken = proto == "tcp"
                break
            arrived = time.time()
            if proto == "tcp" and not data:
                errors.append((arrived, "EOF"))
                broken = True
                break
            lines = [data] if proto == "udp" else (pending + data).split(b"\n")
            if proto == "tcp":
                pending = lines.pop()
            answers = [json.loads(line) for line in lines if line.strip()]
            replies += [(arrived, answer["src"]) for answer in answers]
            server_ports.update(answer["sport"] for answer in answers)
    local_port = sock.getsockname()[1]
    sock.close()
    return {"proto": proto, "sport": local_port, "sent": sent, "replies": replies, "errors": errors, "start": start,
            "server_ports": sorted(server_ports)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python3 tests/daemon_helpers.py")
    sub = parser.add_subparsers(dest="command", required=True)
    flow = sub.add_parser("flow", help="measure one flow (see the module doc)")
    flow.add_argument("proto", choices=("udp", "tcp"))
    flow.add_argument("host")
    flow.add_argument("port", type=int)
    flow.add_argument("--interval", type=float, default=0.01)
    flow.add_argument("--duration", type=float, default=5.0)
    flow.add_argument("--sport", type=int)
    args = parser.parse_args(argv)
    json.dump(meter(args.proto, args.host, args.port, args.interval, args.duration, args.sport), sys.stdout)
    sys.stdout.write("\n")


# -- results --------------------------------------------------------------------------


@dataclass(frozen=True)
class Flow:
    """What a meter saw: answers (arrival time, source the server saw) and errors (time, errno name)."""

    proto: str
    sport: int
    sent: int
    replies: list[tuple[float, str]]
    errors: list[tuple[float, str]]
    start: float
    #: Source ports the server saw (after NAT): one unless the flow's NAT binding changed.
    server_ports: list[int] = field(default_factory=list)

    def gap(self, after: float = 0.0) -> float:
        """The longest silence between two answers that ends after AFTER (seconds)."""
        times = [t for t, _ in self.replies]
        return max((b - a for a, b in zip(times, times[1:], strict=False) if b > after), default=float("inf"))

    def sources(self, start: float = 0.0, end: float = float("inf")) -> set[str]:
        return {src for t, src in self.replies if start <= t < end}

    def answered_between(self, start: float, end: float) -> int:
        return sum(start <= t < end for t, _ in self.replies)


@dataclass
class Running:
    """A meter or ping still running in the lab; `result` waits for it."""

    process: subprocess.Popen[bytes]
    parse: Callable[[str], Any]

    def result(self, timeout: float = 60.0) -> Any:
        out, _ = self.process.communicate(timeout=timeout)
        return self.parse(out.decode())


def _flow(text: str) -> Flow:
    data = json.loads(text)
    return Flow(data["proto"], data["sport"], data["sent"], [tuple(r) for r in data["replies"]],
                [tuple(e) for e in data["errors"]], data["start"], data["server_ports"])


@dataclass(frozen=True)
class Pings:
    """Arrival times of ping's replies, and of the ICMP errors it got instead (`ping -D`)."""

    replies: list[float]
    unreachable: list[float]


def _pings(text: str) -> Pings:
    replies: list[float] = []
    unreachable: list[float] = []
    for line in text.splitlines():
        if line.startswith("["):
            at = float(line[1:line.index("]")])
            if "bytes from" in line:
                replies.append(at)
            elif "Unreachable" in line:
                unreachable.append(at)
    return Pings(replies, unreachable)


def gap_of(times: list[float]) -> float:
    return max((b - a for a, b in zip(times, times[1:], strict=False)), default=float("inf"))


# -- the lab --------------------------------------------------------------------------


def python_env() -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, (str(REPO), os.environ.get("PYTHONPATH")))))


# `python3 -c SENDER HOST PORT SECONDS`: one UDP datagram every 10 ms, each from a new socket (a new
# connection each time, so every datagram is classified afresh); send errors are ignored.
SENDER = """
import socket, sys, time
host, port, duration = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
end = time.monotonic() + duration
while time.monotonic() < end:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # a new flow each time: new connections too
    try:
        sock.sendto(b"x", (host, port))
    except OSError:
        pass
    sock.close()
    time.sleep(0.01)
"""


KILL_TABLE = "mrtestkill"
KILL_RULES = f"""
table inet {KILL_TABLE} {{
    chain input {{ type filter hook input priority -400; policy drop; }}
    chain forward {{ type filter hook forward priority -400; policy drop; }}
    chain output {{ type filter hook output priority -400; policy drop; }}
}}
"""


@dataclass
class DaemonLab:
    """A router lab, an echo server in `net`, and `markroute run` for it (see the module doc)."""

    router: Any  # markroute.lab.RouterLab
    workdir: Path
    port: int = 7300
    daemons: list[subprocess.Popen[bytes]] = field(default_factory=list)
    logs: list[Path] = field(default_factory=list)

    @property
    def rtr(self) -> str:
        return str(self.router.rtr)

    def write(self, config: str, name: str = "markroute.yaml") -> Path:
        path = self.workdir / name
        path.write_text(config)
        return path

    def start(self, config: Path, *args: str) -> subprocess.Popen[bytes]:
        """`markroute run` for CONFIG in the router namespace; returns once every uplink has been judged
        (an uplink the daemon has not probed yet is `unknown` and carries no traffic)."""
        log = self.workdir / f"daemon{len(self.logs)}.log"
        with open(log, "wb") as stderr:
            process = subprocess.Popen(
                [sys.executable, "-m", "markroute", "run", "-c", str(config), "--netns", self.rtr, *args],
                stdin=subprocess.DEVNULL, stdout=stderr, stderr=stderr, env=python_env(), start_new_session=True,
            )
        self.daemons.append(process)
        self.logs.append(log)
        self.wait(lambda r: r is not None and r.pid == process.pid and r.uplinks
                  and all(u.state != "unknown" for u in r.uplinks.values()), "the daemon to start", process=process)
        return process

    def record(self) -> Any:
        from markroute.kernel import state

        return state.load_daemon_record(self.rtr)

    def states(self) -> dict[str, str]:
        seen = self.record()
        return {name: uplink.state for name, uplink in seen.uplinks.items()} if seen else {}

    def wait(self, predicate: Callable[[Any], bool], what: str, timeout: float = 20.0,
             process: subprocess.Popen[bytes] | None = None) -> Any:
        """Poll the daemon's record until PREDICATE holds; fail with the daemon's log if it never does."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            seen = self.record()
            if predicate(seen):
                return seen
            if process is not None and process.poll() is not None:
                break
            time.sleep(0.05)
        raise AssertionError(f"timed out waiting for {what}; daemon log:\n{self.log()}")

    def wait_states(self, wanted: dict[str, str], timeout: float = 20.0) -> Any:
        return self.wait(lambda r: r is not None and all(
            r.uplinks.get(name) is not None and r.uplinks[name].state == state for name, state in wanted.items()
        ), f"uplink states {wanted}", timeout)

    def log(self) -> str:
        return "\n".join(path.read_text(errors="replace") for path in self.logs if path.exists())

    def flow(self, proto: str, host: str, duration: float, interval: float = 0.01, sport: int | None = None) -> Running:
        """Start a flow meter in the LAN client's namespace."""
        argv = [sys.executable, str(REPO / "tests" / "daemon_helpers.py"), "flow", proto, host, str(self.port),
                "--interval", str(interval), "--duration", str(duration)]
        if sport is not None:
            argv += ["--sport", str(sport)]
        process = self.router.lab.spawn(self.router.lan, argv, stdout=subprocess.PIPE, env=python_env())
        return Running(process, _flow)

    def ping(self, host: str, duration: float, interval: float = 0.05) -> Running:
        # A count, not a deadline (-w): with a deadline ping stops at the first ICMP error.
        argv = ["ping", "-D", "-n", "-i", str(interval), "-W", "1", "-c", str(round(duration / interval)), host]
        process = self.router.lab.spawn(self.router.lan, argv, stdout=subprocess.PIPE)
        return Running(process, _pings)

    # Each of these returns the time just before the change: it took effect after that.

    def kill_upstream(self, isp: int) -> float:
        """Drop every packet in ISP ISP's namespace (its link to the router stays up)."""
        before = time.time()
        self.router.lab.nft(self.router.isps[isp], KILL_RULES)
        return before

    def revive_upstream(self, isp: int) -> float:
        before = time.time()
        self.router.lab.run(self.router.isps[isp], ["nft", "delete", "table", "inet", KILL_TABLE])
        return before

    def set_link(self, ns: str, interface: str, up: bool) -> float:
        before = time.time()
        self.router.lab.ip(ns, "link", "set", interface, "up" if up else "down")
        return before

    def apply_behind(self, config: Path) -> None:
        """An apply that does not ask the daemon, as another writer would (a script driving the
        kernel layer, an older markroute): CONFIG installed from this process, under the lock."""
        from markroute.compile import compile_plan
        from markroute.config import load_model
        from markroute.kernel import state
        from markroute.kernel.apply import apply
        from markroute.kernel.netns import inside

        model, diagnostics = load_model(str(config))
        assert model is not None, [d.render() for d in diagnostics]
        with state.locked(self.rtr, "test: an apply behind the daemon's back"), inside(self.rtr):
            apply(compile_plan(model), self.rtr)

    def down_behind(self) -> None:
        """A `down` that does not ask the daemon (the CLI refuses while one runs): the kernel layer's, from here."""
        from markroute.kernel.down import down
        from markroute.kernel.netns import inside

        with inside(self.rtr):
            report = down(self.rtr)
        assert not report.errors, report.errors

    def isp_of(self, sources: set[str]) -> set[int | None]:
        return {self.router.which_isp(source) for source in sources}

    def close(self) -> None:
        """Kill every daemon started here, remove what markroute installed, forget its state."""
        import shutil

        from markroute.kernel.state import directory

        for process in self.daemons:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        subprocess.run([sys.executable, "-m", "markroute", "down", "--netns", self.rtr],
                       capture_output=True, env=python_env(), timeout=60, check=False)
        shutil.rmtree(directory(self.rtr), ignore_errors=True)


@pytest.fixture
def dlab(tmp_path: Path) -> Iterator[DaemonLab]:
    """A `daemon_lab` for one test."""
    with daemon_lab(tmp_path) as setup:
        yield setup


@contextmanager
def daemon_lab(tmp_path: Path, ipv6: bool = False) -> Iterator[DaemonLab]:
    """A DaemonLab with an echo server on port 7300 in `net`, torn down completely afterwards."""
    from markroute.lab import Lab, router_lab

    with Lab() as lab:
        router = router_lab(lab, isps=2, ipv6=ipv6)
        setup = DaemonLab(router, tmp_path)
        lab.serve_echo(router.net, setup.port)
        try:
            yield setup
        finally:
            setup.close()


def conntrack_entries(ns: str) -> list[tuple[int, int, int, int]]:
    """(protocol, original source port, original destination port, ct mark) of every entry in NS."""
    from pyroute2.conntrack import Conntrack

    from markroute.kernel.netns import inside

    with inside(ns), Conntrack() as ct:
        return [
            (entry.tuple_orig.proto, entry.tuple_orig.sport or 0, entry.tuple_orig.dport or 0, entry.mark or 0)
            for entry in ct.dump_entries()
        ]


if __name__ == "__main__":
    main()
