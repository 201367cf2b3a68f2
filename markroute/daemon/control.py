"""`markroute apply` beside `markroute run`: the apply is handed to the daemon over a unix socket.

Why: the daemon keeps its config true. An apply by another process changed what was
installed, the daemon noticed within a second and applied its own config again, so the
admin's `apply` was undone, said so only in the daemon's log. Now `apply` first asks
the namespace's daemon, if one listens: the daemon reads its config file again (as on
SIGHUP), applies it keeping every uplink's state, and answers with what it did, which
`apply` prints and turns into its exit code. An apply of another file than the daemon's
is refused: the daemon would put its own back; so is a `down` (it would apply its
config again within a second). The daemon already has its modules
loaded, so the handed-over apply is also the cheaper one (issue 15, `BENCHMARKS.md`).

The socket is `control` in the namespace's directory under /run/markroute (0700, root's:
only root reaches it). One connection per request: the client sends one JSON line
(`Request`), the daemon answers one JSON line (`Answer`) and closes. A daemon that
starts while another one answers on the socket refuses to start: two daemons would undo
each other's failovers.

Both lines carry `protocol`, the version of this exchange. A daemon still running the
markroute of before an upgrade and a newer `apply` (or the other way round) differ in
it, and each side says so instead of misreading the other: the daemon refuses the
request, the client reports the answer as from another version. Restarting the daemon
ends it. A line without `protocol` is version 0, the exchange before the field existed.
"""

from __future__ import annotations

import errno
import json
import os
import selectors
import socket
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from markroute.daemon.reactor import Reactor, Timer
from markroute.kernel import EnvironmentProblem, rundir
from markroute.kernel.records import RecordError, typed

SOCKET_NAME = "control"
MAX_REQUEST = 64 * 1024  # a request is a path
MAX_ANSWER = 16 * 1024 * 1024  # an answer quotes the config's diagnostics, as many as there are
REQUEST_WAIT = 5.0  # a client that connected sends its line at once; one that does not is dropped
OUTCOMES = ("applied", "unchanged", "invalid", "failed", "refused")
PROTOCOL = 1  # raise when a request or answer changes shape: both ends then say so (`protocol_problem`)


@dataclass(frozen=True)
class Request:
    """Apply CONFIG (an absolute path) again; FORCE is `apply --force`, which the daemon refuses."""

    config: str
    force: bool = False
    protocol: int = PROTOCOL

    def __post_init__(self) -> None:
        if not self.config.startswith("/") or "\0" in self.config:
            raise RecordError("config", "must be an absolute path")


@dataclass(frozen=True)
class Answer:
    """What the daemon did with a `Request`.

    outcome: applied | unchanged (nothing differed) | invalid (the config; nothing changed) |
    failed (the kernel refused; the previous config stays) | refused (not this daemon's to do).
    errors: lines for stderr (diagnostics with file:line, warnings, why it failed);
    notes: for stdout before the changes: uplinks that wait (`waiting:` lines, as `apply` prints
    them) or that the daemon holds out of service (down, unknown); changes: the changes made.
    """

    outcome: str
    pid: int
    config: str
    errors: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    changes: list[str] = field(default_factory=list)
    protocol: int = PROTOCOL

    def __post_init__(self) -> None:
        if self.outcome not in OUTCOMES:
            raise RecordError("outcome", f"must be one of {', '.join(OUTCOMES)}, not {self.outcome!r}")


class NoAnswer(Exception):
    """The daemon took the request but did not answer; what it did is in its log."""


class OtherVersion(NoAnswer):
    """The daemon answered in another version of this exchange; it refuses such requests, so it did nothing."""


def protocol_problem(data: object, sender: str) -> str | None:
    """Why DATA, a request or answer read from SENDER, is of another version of this exchange, or None.

    Checked before the line is read as a `Request` or `Answer`, whose fields may be
    what changed between the versions."""
    version = data.get("protocol", 0) if isinstance(data, dict) else None
    if version == PROTOCOL:
        return None
    shown = f"control protocol {version}" if isinstance(version, int) else "no known control protocol"
    return (f"{sender} speaks {shown} and this markroute control protocol {PROTOCOL}: they are different "
            "versions of markroute; restart markroute run after an upgrade (systemctl restart markroute)")


def socket_path(netns: str | None) -> Path:
    return rundir.directory(netns) / SOCKET_NAME


def ask(netns: str | None, request: Request, wait: float, stop: Callable[[], bool]) -> Answer | None:
    """The namespace's daemon's answer to REQUEST, or None when no daemon listens (apply goes on alone).

    Waits up to WAIT seconds for the answer, and stops waiting when STOP() says so (a
    signal came); both raise NoAnswer, as does an answer that cannot be read.
    """
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        try:
            sock.connect(str(socket_path(netns)))
        except OSError as exc:
            if exc.errno in (errno.ENOENT, errno.ECONNREFUSED, errno.ENOTDIR, errno.EACCES, errno.ENAMETOOLONG):
                return None  # no daemon (a socket left by one killed outright refuses), or not root
            raise NoAnswer(f"cannot reach markroute run: {exc.strerror or exc}") from exc
        sock.sendall(json.dumps(asdict(request)).encode() + b"\n")
        data = _read_line(sock, time.monotonic() + wait, stop)
    finally:
        sock.close()
    try:
        decoded = json.loads(data)
        problem = protocol_problem(decoded, "markroute run")
        if problem is not None:
            raise OtherVersion(problem)
        return typed(Answer, decoded)
    except (ValueError, RecordError) as exc:
        raise NoAnswer(f"markroute run's answer cannot be read: {exc}") from exc


def _read_line(sock: socket.socket, deadline: float, stop: Callable[[], bool]) -> bytes:
    data = bytearray()
    while not data.endswith(b"\n"):
        if stop():
            raise NoAnswer("stopped waiting")
        left = deadline - time.monotonic()
        if left <= 0:
            raise NoAnswer("no answer in time")
        sock.settimeout(min(left, 0.2))  # short slices: a noted signal is seen within 0.2 s
        try:
            chunk = sock.recv(1 << 16)
        except TimeoutError:
            continue
        if not chunk:
            raise NoAnswer("it closed the connection without an answer")
        data += chunk
        if len(data) > MAX_ANSWER:
            raise NoAnswer("its answer is too long")
    return bytes(data)


def serving(netns: str | None) -> bool:
    """Whether a daemon listens on the namespace's control socket (one left by a daemon killed
    outright refuses connections); `down` asks, and a daemon about to start."""
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        probe.connect(str(socket_path(netns)))
        return True
    except OSError:
        return False
    finally:
        probe.close()


class ControlServer:
    """The daemon's end: accepts connections in the daemon's loop and answers each request with SERVE."""

    def __init__(self, reactor: Reactor, netns: str | None, serve: Callable[[Request], Answer],
                 refuse: Callable[[str], Answer]) -> None:
        self.reactor = reactor
        self.netns = netns
        self.serve = serve
        self.refuse = refuse  # the answer to a request that cannot be read
        self.sock: socket.socket | None = None
        self.identity: tuple[int, int] | None = None  # the socket file's (device, inode): ours to remove
        self.clients: dict[socket.socket, tuple[bytes, Timer]] = {}

    def open(self) -> None:
        """Listen on the namespace's control socket; refuse when another daemon answers there."""
        path = rundir.secure_directory(self.netns) / SOCKET_NAME
        if serving(self.netns):
            raise EnvironmentProblem(f"another markroute run serves this namespace (it listens on {path}); "
                                     "stop it first")
        try:
            path.unlink(missing_ok=True)
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK)
            sock.bind(str(path))
            os.chmod(path, 0o600)
            sock.listen(8)
        except OSError as exc:
            raise EnvironmentProblem(f"cannot listen on {path}: {exc.strerror or exc}") from exc
        info = path.stat()
        self.sock, self.identity = sock, (info.st_dev, info.st_ino)
        self.reactor.watch(sock, selectors.EVENT_READ, self.accept)

    def close(self) -> None:
        for client in list(self.clients):
            self.drop(client)
        if self.sock is None:
            return
        self.reactor.unwatch(self.sock)
        self.sock.close()
        self.sock = None
        path = socket_path(self.netns)
        try:
            info = path.stat()
            if (info.st_dev, info.st_ino) == self.identity:  # not a later daemon's
                path.unlink()
        except OSError:
            pass

    def accept(self) -> None:
        assert self.sock is not None
        try:
            client, _ = self.sock.accept()
        except (BlockingIOError, InterruptedError):
            return
        client.setblocking(False)
        timer = self.reactor.call_later(REQUEST_WAIT, lambda: self.drop(client))
        self.clients[client] = (b"", timer)
        self.reactor.watch(client, selectors.EVENT_READ, lambda: self.read(client))

    def read(self, client: socket.socket) -> None:
        data, timer = self.clients[client]
        try:
            chunk = client.recv(MAX_REQUEST)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            chunk = b""
        data += chunk
        if not chunk or len(data) > MAX_REQUEST:
            self.drop(client)
            return
        if not data.endswith(b"\n"):
            self.clients[client] = (data, timer)
            return
        self.reactor.unwatch(client)
        timer.cancel()
        del self.clients[client]
        try:
            decoded = json.loads(data)
            problem = protocol_problem(decoded, "the markroute asking")
            if problem is not None:
                self.send(client, self.refuse(problem))
                return
            request = typed(Request, decoded)
        except (ValueError, RecordError) as exc:
            self.send(client, self.refuse(f"a request markroute run cannot read: {exc}"))
            return
        try:
            answer = self.serve(request)
        except Exception as exc:
            self.send(client, Answer("failed", os.getpid(), "", [f"markroute run failed on this request ({exc!r}); "
                                                                 "its log has the details"]))
            raise  # to the loop's error handler, which logs the traceback and goes on
        self.send(client, answer)

    @staticmethod
    def send(client: socket.socket, answer: Answer) -> None:
        """ANSWER as one line, then the connection closed, whatever happens."""
        try:
            client.setblocking(True)
            client.settimeout(REQUEST_WAIT)
            client.sendall(json.dumps(asdict(answer)).encode() + b"\n")
        except OSError:
            pass  # the client gave up waiting; the daemon's log has what it did
        finally:
            client.close()

    def drop(self, client: socket.socket) -> None:
        entry = self.clients.pop(client, None)
        if entry is not None:
            entry[1].cancel()
        self.reactor.unwatch(client)
        client.close()
