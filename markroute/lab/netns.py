"""Network-namespace lab: build throwaway topologies and always tear them down.

Kernel tests of markroute need real packets crossing real routing tables, so
the lab creates network namespaces, links them with veth pairs and runs
programs inside them.  Three properties matter more than convenience:

* Isolation.  Every namespace of a :class:`Lab` is named
  ``mr-<6 random hex>-<role>``, so two labs (parallel test runs, a demo next
  to a test) never touch each other's namespaces, and the lab only ever runs
  commands inside namespaces it created itself: nothing is sent from the
  root namespace.
* Guaranteed teardown.  Leaked namespaces keep interfaces, routes and
  processes alive and make later runs fail in confusing ways, so teardown is
  wired to the context manager, to ``atexit`` and (best effort) to SIGTERM.
* No shell.  Commands are argument lists, so a role or an address can never
  be interpreted by a shell.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import logging
import os
import re
import secrets
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from types import FrameType, TracebackType
from typing import IO, Any

from markroute.kernel import KernelError
from markroute.kernel.down import forget_vanished
from markroute.lab.addresses import check_lab_address, check_tokens

log = logging.getLogger(__name__)

#: Roles become part of namespace names; keep them short and shell/ip-safe.
_ROLE_RE = re.compile(r"^[a-z][a-z0-9]{0,7}$")

#: Settings a new namespace would otherwise inherit from the host (IPv4 copies
#: the host's current values), which would make lab behaviour depend on the
#: machine: forwarding stays off until a topology asks for it, rp_filter is
#: off until a test turns it on, and DAD is skipped so link-local IPv6
#: addresses are usable at once instead of after a second or two.
_BASELINE_SYSCTLS: Mapping[str, str] = {
    "net.ipv4.ip_forward": "0",
    "net.ipv4.conf.all.rp_filter": "0",
    "net.ipv4.conf.default.rp_filter": "0",
    "net.ipv6.conf.all.accept_dad": "0",
    "net.ipv6.conf.default.accept_dad": "0",
}

_NETNS_DIR = Path("/run/netns")
#: Files ``ip netns exec NS`` bind-mounts over ``/etc`` come from ``NETNS_ETC/NS``.
NETNS_ETC = Path("/etc/netns")
_PROCESS_GRACE_SECONDS = 2.0


class LabError(RuntimeError):
    """Misuse of the lab, e.g. a namespace the lab did not create."""


class CommandError(subprocess.CalledProcessError):
    """A lab command failed; unlike its base class, the message shows stderr."""

    def __str__(self) -> str:
        detail = (self.stderr or "").strip()
        return f"{super().__str__()}: {detail}" if detail else super().__str__()


def _execute(
    argv: Sequence[str],
    *,
    input: str | None = None,
    timeout: float | None = 30.0,
    check: bool = True,
    env: Mapping[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run *argv* (never through a shell) and capture its text output."""
    proc = subprocess.run(
        list(argv),
        input=input,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=None if env is None else dict(env),
        check=False,
    )
    if check and proc.returncode != 0:
        raise CommandError(proc.returncode, proc.args, proc.stdout, proc.stderr)
    return proc


def _python_env() -> dict[str, str]:
    """Environment that lets ``python -m markroute.lab.*`` import this very copy.

    ``ip netns exec`` keeps the caller's working directory and environment,
    but the caller may run from anywhere; pointing PYTHONPATH at the
    directory holding this package makes the helpers importable regardless.
    """
    root = str(Path(__file__).resolve().parents[2])
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    return env


def _kill_namespace_processes(name: str) -> None:
    """SIGKILL whatever still runs inside namespace *name*.

    A process left inside keeps the namespace (and its interfaces) alive
    after ``ip netns del``.  Only namespaces the caller owns reach here.
    """
    pids = _execute(["ip", "netns", "pids", name], check=False).stdout.split()
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.kill(int(pid), signal.SIGKILL)


def _remove_etc_overlay(name: str) -> None:
    """Remove namespace *name*'s ``/etc`` overlay, and ``/etc/netns`` once it is empty."""
    overlay = NETNS_ETC / name
    if not overlay.exists():
        return
    shutil.rmtree(overlay, ignore_errors=True)
    with contextlib.suppress(OSError):
        NETNS_ETC.rmdir()


def cleanup(names: Iterable[str]) -> None:
    """Kill processes in and delete the namespaces *names* and their ``/etc`` overlays,
    and forget markroute's record of each (a lab need not run ``down`` before it closes).

    Missing ones are ignored.
    Meant for namespaces a crashed run left behind when their names are
    known (e.g. printed by a failed test); it deliberately offers no
    pattern matching so it can never delete someone else's namespace.
    """
    for name in names:
        _remove_etc_overlay(name)
        if (_NETNS_DIR / name).exists():
            _kill_namespace_processes(name)
            result = _execute(["ip", "netns", "del", name], check=False)
            if result.returncode != 0 and (_NETNS_DIR / name).exists():
                log.warning("could not delete namespace %s: %s", name, result.stderr.strip())
                continue
        try:
            forget_vanished(name)  # its record under /run/markroute would otherwise stay until the next boot
        except (OSError, KernelError) as err:
            log.warning("could not forget markroute's record of namespace %s: %s", name, err)


def _stop_process(proc: subprocess.Popen[Any]) -> None:
    """Terminate a spawned process group politely, then forcibly, and close its pipes."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        if proc.poll() is not None:
            break
        try:
            os.killpg(proc.pid, sig)
            proc.wait(timeout=_PROCESS_GRACE_SECONDS)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            continue
    for stream in (proc.stdout, proc.stderr):
        if stream is not None:
            stream.close()


class _Registry:
    """Labs still open, so atexit and SIGTERM can tear them down.

    Holds strong references on purpose: a Lab that was merely forgotten must
    still be cleaned up at exit rather than silently leak namespaces.
    """

    def __init__(self) -> None:
        self._labs: set[Lab] = set()
        # Re-entrant: the SIGTERM handler may interrupt add()/discard().
        self._lock = threading.RLock()
        self._sigterm_hooked = False

    def add(self, lab: Lab) -> None:
        with self._lock:
            self._labs.add(lab)
        self._hook_sigterm()

    def discard(self, lab: Lab) -> None:
        with self._lock:
            self._labs.discard(lab)

    def close_all(self) -> None:
        with self._lock:
            labs = list(self._labs)
        for lab in labs:
            lab.close()

    def _hook_sigterm(self) -> None:
        """Chain a SIGTERM handler that tears labs down first.

        Only possible from the main thread, and skipped if SIGTERM is
        ignored (the owner of the process decided it must not stop).
        """
        if self._sigterm_hooked or threading.current_thread() is not threading.main_thread():
            return
        previous = signal.getsignal(signal.SIGTERM)
        if previous == signal.SIG_IGN:
            return

        def on_sigterm(signum: int, frame: FrameType | None) -> None:
            self.close_all()
            if callable(previous):
                previous(signum, frame)
                return
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGTERM)

        signal.signal(signal.SIGTERM, on_sigterm)
        self._sigterm_hooked = True


_REGISTRY = _Registry()
atexit.register(_REGISTRY.close_all)


class Lab:
    """A set of namespaces and processes that live and die together.

    Use as a context manager.  Every method that takes a namespace accepts
    only names returned by :meth:`add_ns` of this very lab.
    """

    def __init__(self) -> None:
        self.prefix = f"mr-{secrets.token_hex(3)}"
        self._namespaces: list[str] = []
        self._processes: list[subprocess.Popen[Any]] = []
        self._on_close: list[Callable[[], None]] = []
        self._closed = False
        _REGISTRY.add(self)

    def __enter__(self) -> Lab:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @property
    def namespaces(self) -> tuple[str, ...]:
        """Names of the namespaces created so far, in creation order."""
        return tuple(self._namespaces)

    # -- building ---------------------------------------------------------

    def add_ns(self, role: str) -> str:
        """Create namespace ``<prefix>-<role>`` with ``lo`` up; return its name."""
        if self._closed:
            raise LabError("lab is closed")
        if not _ROLE_RE.match(role):
            raise LabError(f"role {role!r} must match {_ROLE_RE.pattern}")
        name = f"{self.prefix}-{role}"
        if name in self._namespaces:
            raise LabError(f"role {role!r} already exists in this lab")
        _execute(["ip", "netns", "add", name])
        self._namespaces.append(name)
        self.sysctls(name, _BASELINE_SYSCTLS)
        self.ip(name, "link", "set", "lo", "up")
        return name

    def veth(
        self,
        ns_a: str,
        if_a: str,
        ns_b: str,
        if_b: str,
        mac_a: str | None = None,
        mac_b: str | None = None,
    ) -> None:
        """Connect *ns_a*/*if_a* to *ns_b*/*if_b* with a veth pair, both ends up.

        The pair is created inside *ns_a* with its peer placed directly in
        *ns_b*, so no interface ever appears in the root namespace.
        """
        self._own(ns_b)
        end_a = [if_a] + (["address", mac_a] if mac_a else [])
        end_b = [if_b] + (["address", mac_b] if mac_b else [])
        self.ip(ns_a, "link", "add", *end_a, "type", "veth", "peer", "name", *end_b, "netns", ns_b)
        self.ip(ns_a, "link", "set", if_a, "up")
        self.ip(ns_b, "link", "set", if_b, "up")

    def bridge(self, ns: str, name: str, ports: Sequence[str]) -> None:
        """Create bridge *name* in *ns*, enslave *ports* and bring it up.

        Multicast snooping is off so IPv6 neighbour discovery floods like on
        a dumb switch instead of depending on MLD state.
        """
        self.ip(ns, "link", "add", name, "type", "bridge", "mcast_snooping", "0")
        for port in ports:
            self.ip(ns, "link", "set", port, "master", name)
        self.ip(ns, "link", "set", name, "up")

    def addr(self, ns: str, ifname: str, cidr: str) -> None:
        """Add address *cidr* to *ifname*; IPv6 skips DAD so it is usable at once."""
        check_lab_address(cidr)
        extra = ["nodad"] if ":" in cidr else []
        self.ip(ns, "addr", "add", cidr, "dev", ifname, *extra)

    def route(self, ns: str, *args: str) -> None:
        """``ip -n NS route add ARGS...``; IPv6 is inferred from the addresses."""
        self.ip(ns, *self._family_flag(args), "route", "add", *args)

    def ip(self, ns: str, *args: str) -> subprocess.CompletedProcess[str]:
        """Run ``ip -n NS ARGS...``; every address in ARGS must be a lab address."""
        self._own(ns)
        check_tokens(args)
        return _execute(["ip", "-n", ns, *args])

    def sysctl(self, ns: str, key: str, value: str | int) -> None:
        """Set one sysctl inside *ns* (net.* keys are per namespace)."""
        self.sysctls(ns, {key: str(value)})

    def sysctls(self, ns: str, settings: Mapping[str, str]) -> None:
        """Set several sysctls inside *ns* with a single process."""
        pairs = [f"{key}={value}" for key, value in settings.items()]
        self.run(ns, ["sysctl", "-q", "-w", *pairs])

    def forwarding(self, ns: str, ipv6: bool = False) -> None:
        """Make *ns* a router: IPv4 forwarding, and IPv6 forwarding if asked."""
        settings = {"net.ipv4.ip_forward": "1"}
        if ipv6:
            settings["net.ipv6.conf.all.forwarding"] = "1"
        self.sysctls(ns, settings)

    def nft(self, ns: str, text: str) -> None:
        """Load an nft ruleset given as text (``nft -f -``) inside *ns*."""
        self.run(ns, ["nft", "-f", "-"], input=text)

    # -- running ----------------------------------------------------------

    def run(
        self,
        ns: str,
        argv: Sequence[str],
        *,
        timeout: float | None = 60.0,
        check: bool = True,
        input: str | None = None,
        env: Mapping[str, str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run *argv* inside *ns* and wait; output is captured as text."""
        self._own(ns)
        return _execute(
            ["ip", "netns", "exec", ns, *argv], input=input, timeout=timeout, check=check, env=env
        )

    def spawn(
        self,
        ns: str,
        argv: Sequence[str],
        *,
        stdout: int | IO[Any] | None = subprocess.DEVNULL,
        stderr: int | IO[Any] | None = None,
        env: Mapping[str, str] | None = None,
    ) -> subprocess.Popen[bytes]:
        """Start *argv* in the background inside *ns*; it is killed at teardown.

        The process gets its own session so teardown can kill anything it
        forks along with it.
        """
        self._own(ns)
        proc = subprocess.Popen(
            ["ip", "netns", "exec", ns, *argv],
            stdin=subprocess.DEVNULL,
            stdout=stdout,
            stderr=stderr,
            env=None if env is None else dict(env),
            start_new_session=True,
        )
        self._processes.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen[Any]) -> None:
        """Stop one process :meth:`spawn` started (SIGTERM, then SIGKILL), now rather than at teardown.

        SIGTERM first so daemons say goodbye the way they do on a real
        shutdown (radvd sends a final advertisement with router lifetime 0).
        """
        _stop_process(proc)
        if proc in self._processes:
            self._processes.remove(proc)

    def tempdir(self, name: str) -> Path:
        """A fresh private directory for a daemon's files, removed at teardown."""
        path = Path(tempfile.mkdtemp(prefix=f"{self.prefix}-{name}-"))
        self.on_close(lambda: shutil.rmtree(path, ignore_errors=True))
        return path

    def serve_echo(
        self,
        ns: str,
        port: int,
        *,
        udp: bool = True,
        bind: str = "::",
        timeout: float = 10.0,
        stderr: int | IO[Any] | None = None,
    ) -> subprocess.Popen[bytes]:
        """Start :mod:`markroute.lab.echo` in *ns* and return once it listens.

        TCP and (unless ``udp=False``) UDP are served on the same *port*.
        Waiting for the server's READY line avoids racing the first probe
        against the server's ``bind()``.  *stderr* defaults to this
        process's; a server meant to outlive it (:meth:`release`) must not
        hold a pipe its reader waits on.
        """
        argv = [sys.executable, "-m", "markroute.lab.echo", "--tcp", str(port), "--bind", bind]
        if udp:
            argv += ["--udp", str(port)]
        proc = self.spawn(ns, argv, stdout=subprocess.PIPE, stderr=stderr, env=_python_env())
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], timeout)
        line = proc.stdout.readline() if ready else b""
        if line.strip() != b"READY":
            _stop_process(proc)
            raise LabError(f"echo server in {ns} did not start (port {port})")
        return proc

    def probe(
        self,
        ns: str,
        proto: str,
        host: str,
        port: int,
        *,
        count: int = 1,
        packets: int = 1,
        bind: str | None = None,
        sport: int | None = None,
        timeout: float = 2.0,
        parallel: int = 32,
    ) -> dict[str, Any]:
        """Run :mod:`markroute.lab.probe` in *ns* and return its JSON summary.

        The result has keys ``ok``, ``failed``, ``seen`` (source address the
        server saw -> number of connections), ``inconsistent`` and
        ``errors`` (exception name -> count).
        """
        check_lab_address(host)
        argv = [
            sys.executable, "-m", "markroute.lab.probe", proto, host, str(port),
            "--count", str(count), "--packets", str(packets),
            "--timeout", str(timeout), "--parallel", str(parallel),
        ]  # fmt: skip
        if bind is not None:
            argv += ["--bind", bind]
        if sport is not None:
            argv += ["--sport", str(sport)]
        # Worst case every connection times out on every packet, in waves.
        waves = -(-count // (1 if sport is not None else parallel))
        budget = 30.0 + waves * (packets + 1) * timeout
        result = self.run(ns, argv, timeout=budget, env=_python_env())
        summary: dict[str, Any] = json.loads(result.stdout)
        return summary

    # -- inspection -------------------------------------------------------

    def nft_counter(self, ns: str, family: str, table: str, name: str) -> int:
        """Packets counted so far by named nft counter *name* in *table*."""
        out = self.run(ns, ["nft", "-j", "list", "counter", family, table, name]).stdout
        for item in json.loads(out)["nftables"]:
            if "counter" in item:
                return int(item["counter"]["packets"])
        raise LabError(f"counter {family} {table} {name} not found in {ns}")

    # -- teardown ---------------------------------------------------------

    def on_close(self, action: Callable[[], None]) -> None:
        """Run *action* at teardown, after the processes stop (last registered first).

        For what the lab creates outside namespaces, e.g. a daemon's files or
        the ``/etc/netns/NS`` overlay ``ip netns exec`` mounts: teardown must
        remove them too, even when a test fails.
        """
        self._on_close.append(action)

    def release(self) -> tuple[str, ...]:
        """Give up ownership: namespaces and processes outlive this process.

        For ``markroute demo --keep``, whose user explores the lab after the
        demo exits; :func:`cleanup` with the returned names removes it later.
        """
        self._closed = True
        _REGISTRY.discard(self)
        return self.namespaces

    def close(self) -> None:
        """Kill spawned processes and delete every namespace; safe to repeat."""
        if self._closed:
            return
        self._closed = True
        try:
            for proc in self._processes:
                _stop_process(proc)
            for action in reversed(self._on_close):
                try:
                    action()
                except OSError as err:
                    log.warning("lab teardown step failed: %s", err)
            cleanup(reversed(self._namespaces))
        finally:
            _REGISTRY.discard(self)

    # -- helpers ----------------------------------------------------------

    def _own(self, ns: str) -> None:
        """Refuse to act on any namespace this lab did not create."""
        if ns not in self._namespaces:
            raise LabError(f"namespace {ns!r} does not belong to this lab")

    @staticmethod
    def _family_flag(args: Sequence[str]) -> list[str]:
        """``-6`` if any argument is an IPv6 address, so ``default`` means ::/0."""
        return ["-6"] if any(":" in arg for arg in args) else []
