"""The control socket's protocol without a daemon (markroute/daemon/control.py): a `ControlServer`
in a reactor thread under a temporary /run/markroute, and `ask` as `markroute apply` calls it."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from markroute.daemon import control
from markroute.daemon.reactor import Reactor
from markroute.kernel import EnvironmentProblem, rundir


@pytest.fixture
def run_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setattr(rundir, "RUN_DIR", tmp_path / "run")
    return tmp_path / "run"


@contextmanager
def serving(serve: Callable[[control.Request], control.Answer],
            errors: list[Exception] | None = None) -> Iterator[None]:
    """A ControlServer answering with SERVE, its reactor in a thread, stopped and closed at the end;
    ERRORS collects what reached the loop's error handler."""
    reactor = Reactor((errors if errors is not None else []).append)
    server = control.ControlServer(reactor, None, serve, lambda why: control.Answer("refused", 42, "", [why]))
    server.open()
    stop = threading.Event()

    def tick() -> None:  # the loop looks at STOP every 50 ms: timers are not for other threads to add
        if stop.is_set():
            server.close()
            reactor.stop()
        else:
            reactor.call_later(0.05, tick)

    tick()
    thread = threading.Thread(target=reactor.run, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(5)


@pytest.fixture
def served(run_dir: Path) -> Iterator[list[control.Request]]:
    """A server answering every request `applied`, with one change naming the request's file."""
    seen: list[control.Request] = []

    def serve(request: control.Request) -> control.Answer:
        seen.append(request)
        return control.Answer("applied", 42, "/etc/markroute/markroute.yaml", ["a warning"], [], [request.config])

    with serving(serve):
        yield seen


def never() -> bool:
    return False


def test_no_daemon_means_no_answer(run_dir: Path) -> None:
    assert control.ask(None, control.Request("/etc/markroute/markroute.yaml"), 1.0, never) is None
    assert control.ask("elsewhere", control.Request("/x"), 1.0, never) is None


def test_a_request_gets_the_servers_answer(served: list[control.Request]) -> None:
    answer = control.ask(None, control.Request("/srv/a.yaml", force=True), 5.0, never)
    assert answer == control.Answer("applied", 42, "/etc/markroute/markroute.yaml", ["a warning"], [], ["/srv/a.yaml"])
    assert served == [control.Request("/srv/a.yaml", True)]


def test_the_socket_is_roots_alone_and_a_second_server_is_refused(run_dir: Path,
                                                                  served: list[control.Request]) -> None:
    path = control.socket_path(None)
    assert path.stat().st_mode & 0o777 == 0o600 and path.parent.stat().st_mode & 0o777 == 0o700
    with pytest.raises(EnvironmentProblem, match="another markroute run serves this namespace"):
        control.ControlServer(Reactor(lambda exc: None), None, lambda r: control.Answer("applied", 1, ""),
                              lambda why: control.Answer("refused", 1, "")).open()


def test_a_stale_socket_is_replaced_and_removed_on_close(run_dir: Path) -> None:
    import socket

    path = rundir.secure_directory(None) / control.SOCKET_NAME
    left = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    left.bind(str(path))
    left.close()  # bound, never listening: what a daemon killed outright leaves
    assert control.ask(None, control.Request("/x"), 1.0, never) is None
    server = control.ControlServer(Reactor(lambda exc: None), None, lambda r: control.Answer("applied", 1, ""),
                                   lambda why: control.Answer("refused", 1, ""))
    server.open()
    assert path.exists()
    server.close()
    assert not path.exists()


def test_a_stop_request_ends_the_wait(run_dir: Path) -> None:
    """A listener that never answers (a frozen daemon): STOP ends the wait, and so does the deadline."""
    import socket

    path = rundir.secure_directory(None) / control.SOCKET_NAME
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as frozen:
        frozen.bind(str(path))
        frozen.listen(1)
        with pytest.raises(control.NoAnswer, match="stopped waiting"):
            control.ask(None, control.Request("/x"), 30.0, lambda: True)
        with pytest.raises(control.NoAnswer, match="no answer in time"):
            control.ask(None, control.Request("/x"), 0.3, never)


@contextmanager
def answering(line: bytes) -> Iterator[list[bytes]]:
    """A stand-in daemon that answers one request with LINE, whatever it asked; yields the requests it read."""
    import socket

    path = rundir.secure_directory(None) / control.SOCKET_NAME
    requests: list[bytes] = []
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as server:
        server.bind(str(path))
        server.listen(1)

        def answer() -> None:
            client, _ = server.accept()
            requests.append(client.makefile("rb").readline())
            client.sendall(line)
            client.close()

        thread = threading.Thread(target=answer)
        thread.start()
        try:
            yield requests
        finally:
            thread.join(5)


@pytest.mark.parametrize("line", [b"not json\n", b'{"outcome": "done", "pid": 1, "config": "", "protocol": 1}\n',
                                  b'{"outcome": "applied", "pid": "1", "config": "", "protocol": 1}\n',
                                  b'{"outcome": "applied", "pid": 1, "config": "", "protocol": 1, "new": 2}\n'])
def test_an_answer_that_cannot_be_read_is_no_answer(run_dir: Path, line: bytes) -> None:
    with answering(line), pytest.raises(control.NoAnswer, match="cannot be read"):
        control.ask(None, control.Request("/x"), 5.0, never)


@pytest.mark.parametrize(("line", "spoken"), [
    (b'{"outcome": "applied", "pid": 1, "config": "", "protocol": 2, "new": []}\n', "control protocol 2"),
    (b'{"outcome": "applied", "pid": 1, "config": ""}\n', "control protocol 0"),  # before the field existed
    (b'{"outcome": "applied", "pid": 1, "config": "", "protocol": "1"}\n', "no known control protocol"),
    (b"[1]\n", "no known control protocol"),
])
def test_an_answer_of_another_version_says_so(run_dir: Path, line: bytes, spoken: str) -> None:
    """A daemon of another markroute version: named as such (restart it), not misread, even where
    its answer would otherwise fit; the request carried this version's number."""
    with answering(line) as requests, pytest.raises(control.OtherVersion) as raised:
        control.ask(None, control.Request("/x"), 5.0, never)
    assert f"markroute run speaks {spoken} and this markroute control protocol {control.PROTOCOL}" in str(raised.value)
    assert "restart markroute run" in str(raised.value)
    assert json.loads(requests[0])["protocol"] == control.PROTOCOL


def test_apply_beside_a_daemon_of_another_version_fails_and_says_why(
        run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from markroute.commands import apply

    line = b'{"outcome": "refused", "pid": 7, "config": "", "protocol": 2, "errors": ["another version"]}\n'
    with answering(line), pytest.raises(SystemExit) as exited:
        apply.hand_over(str(tmp_path / "markroute.yaml"), None, False)
    assert exited.value.code == 1
    err = capsys.readouterr().err
    assert err.startswith("markroute: markroute run did not take the apply: markroute run speaks control protocol 2"), err


def test_an_answer_with_many_diagnostics_arrives_whole(run_dir: Path) -> None:
    """Answers are not capped at the request's size: a config with thousands of errors is answered in full."""
    errors = [f"/etc/markroute/markroute.yaml:{n}:3: error: policy {n}: unknown uplink 'isp_c'" for n in range(5000)]
    with serving(lambda r: control.Answer("invalid", 7, r.config, errors)):
        answer = control.ask(None, control.Request("/etc/markroute/markroute.yaml"), 10.0, never)
    assert answer is not None and answer.outcome == "invalid" and answer.errors == errors
    assert len("\n".join(errors)) > control.MAX_REQUEST


def test_a_request_that_fails_in_the_daemon_is_answered_and_logged(run_dir: Path) -> None:
    """An exception in the daemon's handling: the client hears `failed` at once (not after its
    timeout), and the loop's error handler gets the exception (the daemon logs its traceback)."""
    def broken(request: control.Request) -> control.Answer:
        raise RuntimeError("a bug")

    errors: list[Exception] = []
    with serving(broken, errors):
        started = time.monotonic()
        answer = control.ask(None, control.Request("/etc/markroute/markroute.yaml"), 30.0, never)
        assert time.monotonic() - started < 5
    assert answer is not None and answer.outcome == "failed" and "a bug" in answer.errors[0], answer
    assert [str(e) for e in errors] == ["a bug"]


@pytest.mark.parametrize("config", ["relative.yaml", r"/etc/markroute/\u0000.yaml", ""])  # JSON text: a NUL
def test_a_path_that_is_not_absolute_is_refused(served: list[control.Request], config: str) -> None:
    import socket

    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(10)
        sock.connect(str(control.socket_path(None)))
        sock.sendall(b'{"protocol": 1, "config": "' + config.encode() + b'"}\n')
        answer = json.loads(sock.makefile("rb").readline())
    assert answer["outcome"] == "refused" and "absolute path" in answer["errors"][0], answer
    assert served == []


@pytest.mark.parametrize("request_line", [b'{"config": "/etc/markroute/markroute.yaml"}\n',
                                          b'{"config": "/etc/markroute/markroute.yaml", "protocol": 2, "more": 1}\n'])
def test_a_request_of_another_version_is_refused(served: list[control.Request], request_line: bytes) -> None:
    """An `apply` of another markroute version: refused with both versions named, never served."""
    import socket

    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(10)
        sock.connect(str(control.socket_path(None)))
        sock.sendall(request_line)
        answer = json.loads(sock.makefile("rb").readline())
    assert answer["outcome"] == "refused" and answer["protocol"] == control.PROTOCOL, answer
    assert "the markroute asking speaks control protocol" in answer["errors"][0], answer
    assert f"this markroute control protocol {control.PROTOCOL}" in answer["errors"][0], answer
    assert served == []
