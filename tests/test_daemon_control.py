"""`markroute apply` while `markroute run` serves the namespace: the daemon applies (daemon/control.py).

Same lab as test_daemon_races: two ISPs, 203.0.113.0/24 through the failover group
[isp_a, isp_b], 198.18.0.0/15 (server_alt) pinned to isp_b; the other config pins it
to isp_a. Before the control socket, an apply beside the daemon was undone by it within
a second, said only in the daemon's log.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

from daemon_helpers import DaemonLab, dlab, python_env  # noqa: F401 (dlab: a fixture)
from kernelhelp import KERNEL, markroute
from test_daemon_races import CONFIG, OTHER, no_drift

from markroute.daemon import control

pytestmark = KERNEL

UNDONE = "another markroute command changed"


def table(d: DaemonLab) -> str:
    """The live table's rules and sets, counters left out (traffic moves them)."""
    listing = d.router.lab.run(d.rtr, ["nft", "-s", "list", "table", "inet", "markroute"]).stdout
    return "\n".join(line for line in listing.splitlines() if "counter" not in line)


def pinned_isp(d: DaemonLab) -> set[int | None]:
    r = d.router
    return d.isp_of(set(r.lab.probe(r.lan, "udp", r.server_alt, d.port, count=3)["seen"]))


def test_an_apply_of_the_daemons_file_is_applied_by_the_daemon_and_stays(dlab: DaemonLab) -> None:  # noqa: F811
    """The file changed (server_alt now via isp_a): `apply` prints the daemon's changes and
    exits 0, traffic follows, and seconds later it still does (the daemon did not put its
    old config back). Uplink states survive: with isp_a down, applying the same file again
    changes nothing and keeps isp_a down."""
    d = dlab
    path = d.write(CONFIG)
    daemon = d.start(path)
    d.wait_states({"isp_a": "up", "isp_b": "up"})
    assert pinned_isp(d) == {1}
    path.write_text(OTHER)
    result = markroute("apply", "-c", str(path), "--netns", d.rtr)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == f"applied by markroute run (pid {daemon.pid}), which keeps it true", result.stdout
    assert lines[-1].startswith("applied: ") and len(lines) > 2, result.stdout
    assert pinned_isp(d) == {0}
    time.sleep(2.5)  # the daemon's housekeeping looks every second
    assert pinned_isp(d) == {0}
    assert UNDONE not in d.log(), d.log()
    assert 'reason="markroute apply"' in d.log(), d.log()
    assert no_drift(d, str(path))
    assert daemon.poll() is None and d.record().pid == daemon.pid

    d.kill_upstream(0)
    d.wait_states({"isp_a": "down"})
    again = markroute("apply", "-c", str(path), "--netns", d.rtr)
    assert again.returncode == 0, again.stderr
    assert again.stdout.splitlines()[1:] == [
        "isp_a: down (probed by markroute run: out of service until it answers again)",
        "already up to date: nothing changed"], again.stdout
    assert d.states() == {"isp_a": "down", "isp_b": "up"}
    assert d.isp_of(set(d.router.lab.probe(d.router.lan, "udp", d.router.server, d.port, count=3)["seen"])) == {1}


def test_an_invalid_config_gets_its_errors_and_changes_nothing(dlab: DaemonLab) -> None:  # noqa: F811
    """The daemon's answer carries the diagnostics with file:line; exit 1; the table and the
    daemon's config stay as they were."""
    d = dlab
    path = d.write(CONFIG)
    daemon = d.start(path)
    before = table(d)
    path.write_text(CONFIG.replace("via: isp_b}", "via: isp_c}"))
    result = markroute("apply", "-c", str(path), "--netns", d.rtr)
    assert result.returncode == 1, (result.stdout, result.stderr)
    assert f"{path}:" in result.stderr and "isp_c" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr and "applied" not in result.stdout, (result.stdout, result.stderr)
    assert table(d) == before
    assert pinned_isp(d) == {1}
    assert daemon.poll() is None and "reload: the config is invalid" in d.log()


def test_another_file_or_force_is_refused_and_changes_nothing(dlab: DaemonLab) -> None:  # noqa: F811
    """The daemon would put its own file back, and it never takes over others' objects: both
    refused with the reason, exit 1, nothing changed."""
    d = dlab
    path = d.write(CONFIG)
    other = d.write(OTHER, "other.yaml")
    daemon = d.start(path)
    before = table(d)
    refused = markroute("apply", "-c", str(other), "--netns", d.rtr)
    assert refused.returncode == 1, (refused.stdout, refused.stderr)
    assert f"keeps {path} applied" in refused.stderr and f"over {other}" in refused.stderr, refused.stderr
    forced = markroute("apply", "--force", "-c", str(path), "--netns", d.rtr)
    assert forced.returncode == 1 and "--force" in forced.stderr, (forced.stdout, forced.stderr)
    assert table(d) == before and pinned_isp(d) == {1}
    assert daemon.poll() is None


def test_down_is_refused_while_the_daemon_runs_and_works_once_it_stopped(dlab: DaemonLab) -> None:  # noqa: F811
    """The daemon would apply its config again within a second: `down` says so, exits 1 and
    removes nothing; after the daemon stopped (its socket gone) it removes everything."""
    d = dlab
    path = d.write(CONFIG)
    daemon = d.start(path)
    before = table(d)
    refused = markroute("down", "--netns", d.rtr)
    assert refused.returncode == 1, (refused.stdout, refused.stderr)
    assert f"markroute run (pid {daemon.pid}) serves this namespace" in refused.stderr, refused.stderr
    assert table(d) == before and pinned_isp(d) == {1}
    os.killpg(daemon.pid, signal.SIGTERM)
    daemon.wait(timeout=20)
    removed = markroute("down", "--netns", d.rtr)
    assert removed.returncode == 0 and removed.stdout.splitlines()[-1] == "removed", (removed.stdout, removed.stderr)
    listed = d.router.lab.run(d.rtr, ["nft", "list", "tables"]).stdout
    assert "markroute" not in listed, listed


def test_a_second_daemon_is_refused_and_a_killed_ones_socket_is_no_obstacle(dlab: DaemonLab) -> None:  # noqa: F811
    """Two daemons would undo each other: the second exits 4. After a SIGKILL the socket file
    stays behind; `apply` then applies alone, and a new daemon starts."""
    d = dlab
    path = d.write(CONFIG)
    first = d.start(path)
    second = subprocess.run([sys.executable, "-m", "markroute", "run", "-c", str(path), "--netns", d.rtr],
                            capture_output=True, text=True, env=python_env(), timeout=60, check=False)
    assert second.returncode == 4 and "another markroute run serves this namespace" in second.stderr, second.stderr
    assert first.poll() is None
    os.killpg(first.pid, signal.SIGKILL)
    first.wait()
    assert control.socket_path(d.rtr).exists()
    path.write_text(OTHER)
    alone = markroute("apply", "-c", str(path), "--netns", d.rtr)
    assert alone.returncode == 0 and "markroute run" not in alone.stdout, (alone.stdout, alone.stderr)
    assert pinned_isp(d) == {0}
    again = d.start(path)
    d.wait_states({"isp_a": "up", "isp_b": "up"})
    answered = markroute("apply", "-c", str(path), "--netns", d.rtr)
    assert answered.stdout.startswith(f"applied by markroute run (pid {again.pid})"), answered.stdout
    os.killpg(again.pid, signal.SIGTERM)
    again.wait(timeout=20)
    assert not control.socket_path(d.rtr).exists(), "a daemon that stops removes its socket"


def test_garbage_and_silent_clients_do_not_stop_the_daemon(dlab: DaemonLab) -> None:  # noqa: F811
    """A line that is no request gets a refusal; a client that connects and says nothing holds
    nothing up (an apply is answered meanwhile) and is dropped; the daemon goes on probing."""
    d = dlab
    path = d.write(CONFIG)
    daemon = d.start(path)
    where = str(control.socket_path(d.rtr))
    for garbage in (b"not json\n", b'{"protocol": 1, "config": 5}\n',
                    b'{"protocol": 1, "config": "/x", "shell": "rm -rf /"}\n', b"[]\n", b'{"config": "/x"}\n'):
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(10)
            sock.connect(where)
            sock.sendall(garbage)
            answer = json.loads(sock.makefile("rb").readline())
        assert answer["outcome"] == "refused" and answer["pid"] == daemon.pid, (garbage, answer)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as silent:
        silent.connect(where)
        started = time.monotonic()
        result = markroute("apply", "-c", str(path), "--netns", d.rtr)
        assert result.returncode == 0 and "already up to date" in result.stdout, (result.stdout, result.stderr)
        assert time.monotonic() - started < control.REQUEST_WAIT
        silent.settimeout(control.REQUEST_WAIT + 5)
        assert silent.recv(1) == b"", "a client that never sends a line is dropped"
    d.kill_upstream(1)
    d.wait_states({"isp_b": "down"})
    assert daemon.poll() is None


def test_a_signal_stops_the_waiting_not_the_daemon(dlab: DaemonLab) -> None:  # noqa: F811
    """A frozen daemon does not answer: SIGINT ends the wait at once with exit 1 and says the
    daemon goes on; the daemon, woken, applies the file."""
    d = dlab
    path = d.write(CONFIG)
    daemon = d.start(path)
    path.write_text(OTHER)
    daemon.send_signal(signal.SIGSTOP)
    try:
        waiting = subprocess.Popen([sys.executable, "-m", "markroute", "apply", "-c", str(path), "--netns", d.rtr],
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=python_env())
        time.sleep(1.5)
        assert waiting.poll() is None
        waiting.send_signal(signal.SIGINT)
        out, err = waiting.communicate(timeout=5)
    finally:
        daemon.send_signal(signal.SIGCONT)
    assert waiting.returncode == 1 and "SIGINT: stopped waiting" in err and "Traceback" not in err, (out, err)
    deadline = time.monotonic() + 15
    while pinned_isp(d) != {0} and time.monotonic() < deadline:
        time.sleep(0.2)
    assert pinned_isp(d) == {0}, d.log()


def test_concurrent_applies_are_answered_one_after_the_other(dlab: DaemonLab) -> None:  # noqa: F811
    """Three applies of the changed file at once, and a SIGHUP among them: the daemon serves them in
    turn from its loop; each gets an answer and exit 0, exactly one made the change."""
    d = dlab
    path = d.write(CONFIG)
    daemon = d.start(path)
    path.write_text(OTHER)
    argv = [sys.executable, "-m", "markroute", "apply", "-c", str(path), "--netns", d.rtr]
    runs = [subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=python_env())
            for _ in range(3)]
    daemon.send_signal(signal.SIGHUP)
    outputs = [run.communicate(timeout=60) for run in runs]
    assert [run.returncode for run in runs] == [0, 0, 0], outputs
    assert all(out.startswith(f"applied by markroute run (pid {daemon.pid})") for out, _ in outputs), outputs
    made = [out for out, _ in outputs if out.splitlines()[-1].startswith("applied: ")]
    unchanged = [out for out, _ in outputs if out.splitlines()[-1] == "already up to date: nothing changed"]
    assert len(made) + len(unchanged) == 3 and len(made) <= 1, outputs  # the SIGHUP may have made it first
    assert pinned_isp(d) == {0} and no_drift(d, str(path))
    assert daemon.poll() is None and "internal error" not in d.log(), d.log()
