"""The records markroute keeps under /run/markroute, so `down` and `status` need no config.

One directory per network namespace (`/run/markroute`, or `/run/markroute/netns/NAME`
under `--netns NAME`; /run is per boot, like everything the files describe). Each file
has exactly one writer, and readers combine them through this module:

* `state.json` (`State`): what `apply` installed. Written only by `kernel.apply`
  (whether `markroute apply` or the daemon runs it), removed by `down`. The sysctl
  values it holds are the ones found before markroute first changed them: `down`
  puts those back.
* `table.json` (`TableAmendment`): what the daemon changed on top of the last apply.
  Written only by `markroute run` (`amend`): after a failover rewrote chains, the
  table as it now is (listing, digest, nf_tables generation); after every apply of a
  health plan, the digest of the config's plan with every uplink up, so `status -c
  FILE` keeps comparing against the config, not the health. It names the `state.json`
  it amends (inode and modification time); once apply writes a new one, the amendment
  is stale and ignored. `load` returns `state.json` with a current amendment applied,
  which is what every reader (apply, down, status) wants: the table as it really is.
* `daemon.json` (`DaemonRecord`): the daemon's view of the uplinks (state, RTT, loss),
  written only by `markroute run`, read by `status` and by the next daemon start.

Files are written atomically (temporary file, then rename), so a crash leaves either
the old record or the new one (and maybe the temporary file, which the next apply or
down removes: `remove_leftovers`). Two more files: `lock`, which every writer of the
namespace holds (`locked`: apply, down, the daemon's failover step and `amend`), and
`journal`, the undo log of an apply in progress, left behind only by one that died
before its commit (`kernel.journal`). The elements of address sets (maybe 100,000 intervals)
are kept packed, base64 of fixed-width (first, last) pairs per set (`nft_elements`),
not as nft JSON: writing, reading and comparing them then costs milliseconds.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import IO, Any, Literal

from markroute.kernel import KernelError, interrupt, nft
from markroute.plan import IpRule, Route, UplinkPlan
from markroute.plan.nftjson import SET_VERSIONS, AddressElements, json_default

RUN_DIR = Path("/run/markroute")
FORMAT = 2
READABLE_FORMATS = (1, FORMAT)  # format 1 kept set elements as nft JSON in the listing: still read as they are
STATE_RECORD = "state.json"  # written by apply
TABLE_AMENDMENT = "table.json"  # written by `markroute run`
DAEMON_RECORD = "daemon.json"  # written by `markroute run`
DAEMON_FORMAT = 1
JOURNAL = "journal"  # an apply in progress, or one that died before its commit (kernel.journal)
LOCK = "lock"  # flock'd by every writer of the namespace (`locked`)
LOCK_WAIT = 10.0  # seconds a second writer waits before it names the holder and gives up
LOCK_POLL = 0.05
UplinkState = Literal["up", "degraded", "down"]  # the daemon's verdict on an uplink (daemon.uplinkstate)
UPLINK_STATES: tuple[UplinkState, ...] = ("up", "degraded", "down")

Listing = list[dict[str, Any]]


@dataclass
class State:
    plan_digest: str
    nft_digest: str
    table_name: str
    mask: int
    rule_priority: int
    nft_listing: list[dict[str, Any]]
    rules: list[IpRule]
    routes: list[Route]
    sysctls_original: dict[str, str]
    sysctls_applied: dict[str, str]
    uplinks: list[UplinkPlan]
    policies: list[str]
    applied_at: str
    warnings: list[str] = field(default_factory=list)
    nft_generation: int | None = None  # nf_tables' transaction count after the apply (`nftnetlink.generation`)

    def to_json(self) -> dict[str, Any]:
        data = asdict(replace(self, nft_listing=[]))  # the listing is JSON already: no deep copy of its 100,000 elements
        data["nft_listing"], data["nft_elements"] = _packed(self.nft_listing)
        data["format"] = FORMAT
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> State:
        fields = {k: v for k, v in data.items() if k not in ("format", "nft_elements")}
        fields["nft_listing"] = _unpacked(data["nft_listing"], data.get("nft_elements", {}))
        fields["rules"] = [IpRule(**r) for r in data["rules"]]
        fields["routes"] = [Route(**r) for r in data["routes"]]
        fields["uplinks"] = [UplinkPlan(**{**u, "versions": tuple(u["versions"])}) for u in data["uplinks"]]
        return cls(**fields)


def _packed(listing: Listing) -> tuple[Listing, dict[str, str]]:
    """A listing without the elements of address sets, and those elements packed per set."""
    plain: Listing = []
    packed: dict[str, str] = {}
    for obj in listing:
        elements = obj.get("set", {}).get("elem")
        if isinstance(elements, AddressElements):
            packed[obj["set"]["name"]] = elements.packed_text()
            obj = nft.without_elements([obj])[0]
        plain.append(obj)
    return plain, packed


def _unpacked(listing: Listing, packed: dict[str, str]) -> Listing:
    return [
        {"set": {**obj["set"], "elem": AddressElements.from_packed_text(
            SET_VERSIONS[obj["set"]["type"]], packed[obj["set"]["name"]])}}
        if "set" in obj and obj["set"]["name"] in packed else obj
        for obj in listing
    ]


@dataclass(frozen=True)
class TableRewrite:
    """The table after the daemon rewrote chains: what apply compares against next time."""

    nft_digest: str
    nft_listing: Listing
    nft_generation: int | None  # nf_tables' generation read just before the listing


@dataclass(frozen=True)
class TableAmendment:
    """What the daemon changed on top of the `state.json` named by `amends` (see the module doc)."""

    amends: tuple[int, int]  # (inode, mtime_ns) of that state.json
    plan_digest: str
    table: TableRewrite | None = None

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"format": FORMAT, "amends": list(self.amends), "plan_digest": self.plan_digest}
        if self.table is not None:
            listing, packed = _packed(self.table.nft_listing)
            data["table"] = {"nft_digest": self.table.nft_digest, "nft_generation": self.table.nft_generation,
                             "nft_listing": listing, "nft_elements": packed}
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TableAmendment:
        table = data.get("table")
        return cls(
            (int(data["amends"][0]), int(data["amends"][1])),
            str(data["plan_digest"]),
            TableRewrite(table["nft_digest"], _unpacked(table["nft_listing"], table["nft_elements"]),
                         table["nft_generation"]) if table else None,
        )

    def applied_to(self, recorded: State) -> State:
        if self.table is None:
            return replace(recorded, plan_digest=self.plan_digest)
        return replace(recorded, plan_digest=self.plan_digest, nft_digest=self.table.nft_digest,
                       nft_listing=self.table.nft_listing, nft_generation=self.table.nft_generation)


@dataclass(frozen=True)
class UplinkRecord:
    """One uplink as the daemon last saw it (`daemon.uplinkstate.Snapshot` plus whether it is probed)."""

    state: UplinkState
    since: float
    rtt: float | None = None
    loss: float | None = None
    transitions: int = 0
    suppressed: bool = False
    probed: bool = True


@dataclass(frozen=True)
class DaemonRecord:
    """`daemon.json`: `markroute run`'s process and its view of the uplinks.

    `status` shows it, and a daemon that starts again (after a crash, a SIGKILL, an
    upgrade) takes each uplink's state from it instead of assuming everything is up:
    the rules it applies are then exactly the ones already installed, so the restart
    changes nothing and no flow moves.
    """

    pid: int
    started: float
    rule_changes: int = 0
    uplinks: dict[str, UplinkRecord] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["format"] = DAEMON_FORMAT
        return data

    @property
    def running(self) -> bool:
        """Whether the process that wrote this record still runs."""
        return _running(self.pid)


def directory(netns: str | None) -> Path:
    return RUN_DIR / "netns" / netns if netns else RUN_DIR


def load(netns: str | None) -> State | None:
    """What is installed: `state.json` with the daemon's current amendment applied (module doc)."""
    recorded = load_applied(netns)
    if recorded is None:
        return None
    amendment = _load_amendment(netns)
    if amendment is None or amendment.amends != written(netns):
        return recorded
    return amendment.applied_to(recorded)


def load_applied(netns: str | None) -> State | None:
    """`state.json` as apply wrote it."""
    path = directory(netns) / STATE_RECORD
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise KernelError(f"cannot read {path}: {exc}") from exc
    if data.get("format") not in READABLE_FORMATS:
        raise KernelError(f"{path} was written by another markroute version (format {data.get('format')})")
    try:
        return State.from_json(data)
    except (KeyError, TypeError, ValueError) as exc:
        raise KernelError(f"{path} is damaged: {exc}") from exc


def save(netns: str | None, state: State) -> None:
    """Apply's record of what it installed (apply is its only writer)."""
    write(netns, STATE_RECORD, state.to_json())


def written(netns: str | None) -> tuple[int, int] | None:
    """Which `state.json` is there (inode, mtime_ns), or None: a change means apply wrote it again."""
    try:
        stat = (directory(netns) / STATE_RECORD).stat()
    except FileNotFoundError:
        return None
    return stat.st_ino, stat.st_mtime_ns


def _load_amendment(netns: str | None) -> TableAmendment | None:
    """The daemon's amendment, or None if there is none or it cannot be used (then `state.json` stands)."""
    try:
        data = json.loads((directory(netns) / TABLE_AMENDMENT).read_text())
        return TableAmendment.from_json(data) if data.get("format") == FORMAT else None
    except (OSError, ValueError, KeyError, TypeError, IndexError):
        return None


def amend(netns: str | None, plan_digest: str, table: TableRewrite | None = None,
          against: tuple[int, int] | None = None) -> bool:
    """The daemon's side of the record (its only writer): the config's digest and, after a rewrite, the table.

    Without TABLE, a rewrite already recorded against the same `state.json` is kept.
    False (and nothing written) when nothing is applied, or when AGAINST names a
    state.json that is no longer there (the table was listed after another apply).
    """
    with locked(netns, "markroute run (record)"):
        amends = written(netns)
        if amends is None or (against is not None and against != amends):
            return False
        if table is None:
            current = _load_amendment(netns)
            if current is not None and current.amends == amends:
                if current.plan_digest == plan_digest:
                    return True
                table = current.table
        write(netns, TABLE_AMENDMENT, TableAmendment(amends, plan_digest, table).to_json())
        return True


def load_daemon_record(netns: str | None) -> DaemonRecord | None:
    """`daemon.json`, or None if there is none or it cannot be used (a fresh start is then safe)."""
    path = directory(netns) / DAEMON_RECORD
    try:
        data = json.loads(path.read_text())
        if data.get("format") != DAEMON_FORMAT:
            return None
        uplinks = {
            name: UplinkRecord(**fields)
            for name, fields in data["uplinks"].items() if fields.get("state") in UPLINK_STATES
        }
        return DaemonRecord(int(data["pid"]), float(data["started"]), int(data["rule_changes"]), uplinks)
    except (OSError, ValueError, KeyError, TypeError):
        return None


def save_daemon_record(netns: str | None, record: DaemonRecord) -> None:
    """The daemon's view of the uplinks (`markroute run` is its only writer)."""
    write(netns, DAEMON_RECORD, record.to_json())


def write(netns: str | None, name: str, data: dict[str, Any]) -> None:
    """Write one JSON record of the namespace atomically: a temporary file, then rename.

    Whatever stops it before the rename (an error, `interrupt.Interrupted`) removes the
    temporary file; a SIGKILL leaves it to `remove_leftovers`.
    """
    target = directory(netns)
    target.mkdir(parents=True, exist_ok=True)
    temporary = target / f".{name}.{os.getpid()}"
    try:
        with open(temporary, "w", encoding="utf-8") as handle:
            handle.write(json.dumps(data, default=json_default))  # compact and via dumps: only that path has json's C encoder
            handle.flush()
            os.fsync(handle.fileno())
        interrupt.point(f"{name} written, not yet renamed")
        os.replace(temporary, target / name)
    except OSError as exc:
        raise KernelError(f"cannot record state in {target}: {exc.strerror}") from exc
    finally:
        temporary.unlink(missing_ok=True)


def remove(netns: str | None) -> None:
    """Forget what was installed, the daemon's amendment to it and its view of the uplinks."""
    for name in (STATE_RECORD, TABLE_AMENDMENT, DAEMON_RECORD):
        (directory(netns) / name).unlink(missing_ok=True)


@dataclass
class _Hold:
    descriptor: int
    depth: int = 1


_held: dict[Path, _Hold] = {}  # the namespaces whose lock this process holds (`locked` nests)


@contextmanager
def locked(netns: str | None, purpose: str, wait: float = LOCK_WAIT) -> Iterator[None]:
    """One writer at a time per namespace: apply, down and the daemon's failover step.

    `flock` on the file `lock`, which is never removed while anyone may hold it: under
    --netns it goes (with the directory, so namespaces that come and go leave nothing in
    /run) only by its holder, when no state is left, and a waiter that then gets the lock
    of a removed file tries again on the new one. A second writer waits up to WAIT
    seconds, then fails naming the holder (pid and PURPOSE, which the holder writes into
    the file). A signal noted while waiting (`interrupt`) ends the wait: nothing changed
    yet. Taking the lock again in the same process (the daemon's failover running
    apply) nests.
    """
    target = directory(netns)
    hold = _held.get(target)
    if hold is not None:
        hold.depth += 1
        try:
            yield
        finally:
            hold.depth -= 1
        return
    descriptor = _acquire(target, purpose, wait)
    _held[target] = _Hold(descriptor)
    try:
        yield
    finally:
        del _held[target]
        _release(target, descriptor, bool(netns))


def _acquire(target: Path, purpose: str, wait: float) -> int:
    path = target / LOCK
    deadline = time.monotonic() + wait
    while True:
        try:
            target.mkdir(parents=True, exist_ok=True)
            descriptor = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
        except FileNotFoundError:
            continue  # its holder just removed the directory: make it again
        except OSError as exc:
            raise KernelError(f"cannot lock {path}: {exc.strerror}") from exc
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(descriptor)
            if time.monotonic() >= deadline:
                raise KernelError(
                    f"another markroute command is changing this namespace ({_holder(path)}); "
                    f"waited {wait:g} s for it: try again when it is done"
                ) from None
            if interrupt.received() is not None:
                raise KernelError(f"{interrupt.Interrupted(interrupt.received() or 0)} while waiting for the lock "
                                  f"({_holder(path)}): nothing was changed")
            time.sleep(LOCK_POLL)
            continue
        if _same_file(descriptor, path):
            os.ftruncate(descriptor, 0)
            os.pwrite(descriptor, f"{os.getpid()} {purpose}\n".encode(), 0)
            return descriptor
        os.close(descriptor)  # its last holder removed it while we waited: lock the new one


def _same_file(descriptor: int, path: Path) -> bool:
    try:
        return os.fstat(descriptor).st_ino == path.stat().st_ino
    except FileNotFoundError:
        return False


def _holder(path: Path) -> str:
    """Who holds the lock at PATH, as it wrote itself there: "pid N (what)"."""
    try:
        pid, _, purpose = path.read_text().strip().partition(" ")
    except OSError:
        return "holder unknown"
    return f"pid {pid} ({purpose})" if pid.isdigit() else "holder unknown"


def _release(target: Path, descriptor: int, removable: bool) -> None:
    """Let go of the lock; under --netns with nothing left to remember, remove it (while held) and the directory."""
    try:
        if removable and not any((target / name).exists() for name in (STATE_RECORD, JOURNAL)):
            (target / LOCK).unlink(missing_ok=True)
            with contextlib.suppress(OSError):
                target.rmdir()
        else:
            os.ftruncate(descriptor, 0)
    finally:
        os.close(descriptor)


def holds_lock(netns: str | None) -> bool:
    """Whether this process holds the namespace's lock (what writes under it assert)."""
    return directory(netns) in _held


# -- the journal of an apply in progress (kernel.journal) -------------------------------

def start_journal(netns: str | None, header: dict[str, Any]) -> IO[str]:
    """Create the journal file with HEADER as its first line; it is appended to line by line."""
    path = directory(netns) / JOURNAL
    try:
        handle = open(path, "w", encoding="utf-8")
        handle.write(json.dumps(header) + "\n")
        handle.flush()
    except OSError as exc:
        raise KernelError(f"cannot write {path}: {exc.strerror}") from exc
    return handle


def read_journal(netns: str | None) -> list[dict[str, Any]] | None:
    """The lines of a journal left behind (a torn last line is dropped), or None when there is none."""
    path = directory(netns) / JOURNAL
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise KernelError(f"cannot read {path}: {exc.strerror}") from exc
    lines: list[dict[str, Any]] = []
    for line in text.splitlines():
        try:
            lines.append(json.loads(line))
        except ValueError:
            break  # written when the process died
    return lines


def abandoned_journal(netns: str | None) -> int | None:
    """The pid of an apply that died before its commit and left its journal, or None.

    A journal is also there while an apply runs: then the lock is held, and this (a
    reader, which takes no lock) says nothing."""
    if not (directory(netns) / JOURNAL).exists():
        return None
    try:
        descriptor = os.open(directory(netns) / LOCK, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except OSError:
        descriptor = None
    if descriptor is not None:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return None  # an apply is running
        finally:
            os.close(descriptor)
    lines = read_journal(netns) or [{}]
    return int(lines[0].get("pid", 0))


def remove_journal(netns: str | None) -> None:
    (directory(netns) / JOURNAL).unlink(missing_ok=True)


def remove_leftovers(netns: str | None) -> list[str]:
    """Temporary files of records whose writer died before its rename; their names.

    Only this process (holding the lock) writes state.json and table.json, so theirs
    are all stale; daemon.json's only when the daemon that wrote it is gone.
    """
    removed: list[str] = []
    for path in directory(netns).glob(".*.json.*"):
        name, _, pid = path.name[1:].rpartition(".")
        if not pid.isdigit() or name not in (STATE_RECORD, TABLE_AMENDMENT, DAEMON_RECORD):
            continue
        if name == DAEMON_RECORD and _running(int(pid)):
            continue
        path.unlink(missing_ok=True)
        removed.append(path.name)
    return removed


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
