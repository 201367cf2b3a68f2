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
* `ha.json` (`kernel.ha.HaRecord`): the HA role keepalived's hook last announced, written
  only by `markroute ha`, read by apply (the hold), `markroute run` (whose connections
  to delete) and `status`.

Files are written atomically (temporary file, then rename), so a crash leaves either
the old record or the new one (and maybe the temporary file, which the next apply or
down removes: `remove_leftovers`). They steer what root's `down` writes, so they are
private (directories 0700, files 0600, whatever the umask), opened level by level with
O_NOFOLLOW (a planted symlink is never followed) and type-checked on read
(`records.typed`): a damaged `state.json` raises `DamagedState` naming the file and
the field, a damaged `table.json` or `daemon.json` is ignored with a warning, a damaged
`ha.json` is a `KernelError` naming the file and the field. Two more
files, private the same way: `lock`, which every writer of the namespace holds
(`locked`: apply, down, the daemon's failover step and `amend`), and `journal`, the
undo log of an apply in progress, left behind only by one that died before its commit
(`kernel.journal`). The elements of address sets (maybe 100,000 intervals)
are kept packed, base64 of fixed-width (first, last) pairs per set (`nft_elements`),
not as nft JSON: writing, reading and comparing them then costs milliseconds.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import stat
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import IO, Any, Literal

from markroute.kernel import KernelError, interrupt, nft, sysctl
from markroute.kernel.records import RecordError, typed, value_of
from markroute.kernel.rundir import directory, directory_fd
from markroute.match.cgroup import parse_path as parse_cgroup_path
from markroute.plan import GroupPlan, IpRule, Route, UplinkPlan
from markroute.plan.nftjson import (
    SET_VERSIONS,
    AddressElements,
    compact_json,
)

FORMAT = 2
READABLE_FORMATS = (1, FORMAT)  # format 1 kept set elements as nft JSON in the listing: still read as they are
STATE_RECORD = "state.json"  # written by apply
TABLE_AMENDMENT = "table.json"  # written by `markroute run`
DAEMON_RECORD = "daemon.json"  # written by `markroute run`
HA_RECORD = "ha.json"  # written by `markroute ha` (`kernel.ha`)
DAEMON_FORMAT = 1
JOURNAL = "journal"  # an apply in progress, or one that died before its commit (kernel.journal)
LOCK = "lock"  # flock'd by every writer of the namespace (`locked`)
LOCK_WAIT = 10.0  # seconds a second writer waits before it names the holder and gives up
LOCK_POLL = 0.05
# The daemon's verdict on an uplink (daemon.uplinkstate); "unknown": not probed enough yet, carries no
# traffic; "waiting": no address or next hop yet (kernel.gateways), carries no traffic either.
UplinkState = Literal["up", "degraded", "down", "unknown", "waiting"]
UPLINK_STATES: tuple[UplinkState, ...] = ("up", "degraded", "down", "unknown", "waiting")

Listing = list[dict[str, Any]]
Warn = Callable[[str], None]
FILE_MODE = 0o600
MAX_RECORD_BYTES = 256 * 1024 * 1024  # far above a state with a million set elements


class DamagedState(KernelError):
    """`state.json` exists but cannot be used; `down --force` removes what is found instead."""

    def __init__(self, problem: str) -> None:
        super().__init__(f"{problem} (`markroute down --force` removes what markroute installed without it)")


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
    groups: list[GroupPlan] = field(default_factory=list)
    cgroups: list[str] = field(default_factory=list)  # configured cgroup paths (their sets' elements are run-time data)
    connection_records: bool = True  # `settings.connection_records`: the labels say which rule decided

    def to_json(self) -> dict[str, Any]:
        data = asdict(replace(self, nft_listing=[]))  # the listing is JSON already: no deep copy of its 100,000 elements
        data["nft_listing"], data["nft_elements"] = _packed(self.nft_listing)
        data["format"] = FORMAT
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> State:
        """The record read back, every field type-checked (`records.typed`) and its values sane.

        A damaged field raises `RecordError` naming it: the sysctl paths `down` would write
        to are confined to /proc/sys/net, the table name is one markroute could have written.
        """
        recorded = typed(cls, data, ignore=("format", "nft_elements"))
        packed = value_of(dict[str, str], data.get("nft_elements", {}), "nft_elements")
        _check_listing(recorded.nft_listing, "nft_listing")
        for name in ("sysctls_original", "sysctls_applied"):
            _check_sysctls(name, getattr(recorded, name))
        if not _TABLE_NAME.match(recorded.table_name):
            raise RecordError("table_name", "is not a name markroute gives its table")
        for name in ("mask", "rule_priority"):
            if not 0 <= getattr(recorded, name) <= 0xFFFFFFFF:
                raise RecordError(name, "is out of range")
        for path in recorded.cgroups:  # status looks each up under /sys/fs/cgroup: plain relative paths only
            try:
                parse_cgroup_path(path)
            except ValueError:
                raise RecordError("cgroups", "holds something that is not a cgroup path") from None
        try:
            recorded.nft_listing = _unpacked(recorded.nft_listing, packed)
        except (KeyError, TypeError, ValueError) as exc:
            raise RecordError("nft_elements", f"cannot be unpacked ({exc})") from None
        return recorded


_SYSCTL_VALUE = re.compile(r"^[^\n\x00]{0,256}$")
_TABLE_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,63}$")


def _check_sysctls(name: str, values: dict[str, str]) -> None:
    """Sysctl paths confined to /proc/sys/net and one-line values: `down` writes them as root."""
    for path, value in values.items():
        if not sysctl.valid_path(path):
            raise RecordError(name, f"names '{path[:80]}', which is not a networking sysctl")
        if not _SYSCTL_VALUE.match(value):
            raise RecordError(f"{name}.{path}", "is not a sysctl value")


@dataclass(frozen=True)
class Salvage:
    """What `down --force` can still use of a damaged `state.json`: the sysctls to put back, if intact."""

    sysctls_original: dict[str, str]
    sysctls_applied: dict[str, str]


def salvage(netns: str | None) -> Salvage | None:
    """The sysctl fields of a damaged `state.json` if both still pass their checks, else None."""
    try:
        text = read_record(netns, STATE_RECORD)
        data = json.loads(text) if text is not None else None
    except (OSError, ValueError, RecursionError):
        return None
    if not isinstance(data, dict):
        return None
    try:
        fields = {name: value_of(dict[str, str], data.get(name), name)
                  for name in ("sysctls_original", "sysctls_applied")}
        for name, values in fields.items():
            _check_sysctls(name, values)
    except RecordError:
        return None
    return Salvage(fields["sysctls_original"], fields["sysctls_applied"])


def _check_listing(listing: Listing, where: str) -> None:
    """Each entry of an nft listing is one object `{KIND: {...}}`; what is inside is nft's business."""
    for index, entry in enumerate(listing):
        if len(entry) != 1 or not all(isinstance(v, dict) for v in entry.values()):
            raise RecordError(f"{where}[{index}]", "is not an nftables object")


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
        amends = value_of(tuple[int, ...], data.get("amends"), "amends")
        if len(amends) != 2:
            raise RecordError("amends", "must hold an inode and a time")
        table = value_of(dict[str, Any] | None, data.get("table"), "table")
        rewrite = None
        if table is not None:
            listing = value_of(list[dict[str, Any]], table.get("nft_listing"), "table.nft_listing")
            _check_listing(listing, "table.nft_listing")
            packed = value_of(dict[str, str], table.get("nft_elements"), "table.nft_elements")
            rewrite = TableRewrite(value_of(str, table.get("nft_digest"), "table.nft_digest"),
                                   _unpacked(listing, packed),
                                   value_of(int | None, table.get("nft_generation"), "table.nft_generation"))
        return cls((amends[0], amends[1]), value_of(str, data.get("plan_digest"), "plan_digest"), rewrite)

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
    probe_bytes_per_day: int | None = None  # probe traffic both ways at the configured rate (metered links)


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


def load(netns: str | None, warn: Warn | None = None) -> State | None:
    """What is installed: `state.json` with the daemon's current amendment applied (module doc).

    WARN hears about a damaged `table.json`, which is then ignored.
    """
    recorded = load_applied(netns)
    if recorded is None:
        return None
    amendment = _load_amendment(netns, warn)
    if amendment is None or amendment.amends != written(netns):
        return recorded
    return amendment.applied_to(recorded)


def load_applied(netns: str | None) -> State | None:
    """`state.json` as apply wrote it; `DamagedState` naming the file and the field if it cannot be used."""
    path = directory(netns) / STATE_RECORD
    try:
        text = read_record(netns, STATE_RECORD)
    except OSError as exc:
        raise DamagedState(f"cannot read {path}: {exc.strerror or exc}") from exc
    if text is None:
        return None
    try:
        data = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise DamagedState(f"{path} is damaged: not JSON ({str(exc)[:80]})") from None
    if not isinstance(data, dict):
        raise DamagedState(f"{path} is damaged: it holds {type(data).__name__}, not a record")
    if data.get("format") not in READABLE_FORMATS:
        raise DamagedState(f"{path} was written by another markroute version (format {str(data.get('format'))[:20]})")
    try:
        return State.from_json(data)
    except RecordError as exc:
        raise DamagedState(f"{path} is damaged: {exc}") from None


def save(netns: str | None, state: State) -> None:
    """Apply's record of what it installed (apply is its only writer)."""
    write(netns, STATE_RECORD, state.to_json())


def written(netns: str | None) -> tuple[int, int] | None:
    """Which `state.json` is there (inode, mtime_ns), or None: a change means apply wrote it again."""
    try:
        info = os.stat(directory(netns) / STATE_RECORD, follow_symlinks=False)
    except (FileNotFoundError, NotADirectoryError):
        return None
    return info.st_ino, info.st_mtime_ns


def _load_amendment(netns: str | None, warn: Warn | None = None) -> TableAmendment | None:
    """The daemon's amendment, or None if there is none or it cannot be used (then `state.json` stands)."""
    data = _optional_record(netns, TABLE_AMENDMENT, warn)
    if data is None or data.get("format") != FORMAT:
        return None
    try:
        return TableAmendment.from_json(data)
    except (RecordError, KeyError, TypeError, ValueError) as exc:
        _ignored(netns, TABLE_AMENDMENT, str(exc), warn)
        return None


def _optional_record(netns: str | None, name: str, warn: Warn | None) -> dict[str, Any] | None:
    """A record the daemon keeps (amendment, uplinks) as a JSON object, or None: a damaged one is ignored."""
    try:
        text = read_record(netns, name)
        if text is None:
            return None
        data = json.loads(text)
    except (OSError, ValueError, RecursionError) as exc:
        _ignored(netns, name, str(exc)[:80], warn)
        return None
    if not isinstance(data, dict):
        _ignored(netns, name, f"it holds {type(data).__name__}, not a record", warn)
        return None
    return data


def _ignored(netns: str | None, name: str, why: str, warn: Warn | None) -> None:
    if warn is not None:
        warn(f"{directory(netns) / name} is damaged and ignored: {why}")


def amend(netns: str | None, plan_digest: str, table: TableRewrite | None = None,
          against: tuple[int, int] | None = None) -> bool:
    """The daemon's side of the record (its only writer): the config's digest and, after a rewrite, the table.

    Without TABLE, a rewrite already recorded against the same `state.json` is kept.
    False (and nothing written) when nothing is applied, or when AGAINST names a
    state.json that is no longer there (another apply came first). Not synced to disk
    (`write`): the daemon writes it after every failover.
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
        write(netns, TABLE_AMENDMENT, TableAmendment(amends, plan_digest, table).to_json(), durable=False)
        return True


def load_daemon_record(netns: str | None, warn: Warn | None = None) -> DaemonRecord | None:
    """`daemon.json`, or None if there is none or it cannot be used (a fresh start is then safe).

    WARN hears why a damaged record was ignored.
    """
    data = _optional_record(netns, DAEMON_RECORD, warn)
    if data is None or data.get("format") != DAEMON_FORMAT:
        return None
    try:
        uplinks = value_of(dict[str, dict[str, Any]], data.get("uplinks", {}), "uplinks")
        return DaemonRecord(
            value_of(int, data.get("pid"), "pid"), value_of(float, data.get("started"), "started"),
            value_of(int, data.get("rule_changes", 0), "rule_changes"),
            {name: typed(UplinkRecord, fields, f"uplinks.{name}")
             for name, fields in uplinks.items() if fields.get("state") in UPLINK_STATES})
    except RecordError as exc:
        _ignored(netns, DAEMON_RECORD, str(exc), warn)
        return None


def save_daemon_record(netns: str | None, record: DaemonRecord) -> None:
    """The daemon's view of the uplinks (`markroute run` is its only writer); not synced to disk (`write`)."""
    write(netns, DAEMON_RECORD, record.to_json(), durable=False)


def write(netns: str | None, name: str, data: dict[str, Any], durable: bool = True) -> None:
    """Write one JSON record of the namespace atomically: a temporary file, then rename.

    DURABLE: fsync the file before the rename. The daemon's records (written on every
    failover, where an fsync could wait for a busy disk) go without: the rename alone keeps
    them whole across a crash of the process, and /run, a tmpfs, does not survive the power
    loss an fsync guards against.

    The file is created 0600 inside the directory's descriptor (`secure_directory`),
    never through a symlink, so neither the umask nor a planted link decides where
    root writes or who may edit what `down` later trusts. Whatever stops it before the
    rename (an error, `interrupt.Interrupted`) removes the temporary file; a SIGKILL
    leaves it to `remove_leftovers`.
    """
    temporary = f".{name}.{os.getpid()}"
    try:
        with directory_fd(netns, create=True) as parent:
            fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC,
                         FILE_MODE, dir_fd=parent)
            try:
                try:
                    os.fchmod(fd, FILE_MODE)
                    with os.fdopen(fd, "w", encoding="utf-8", closefd=False) as handle:
                        handle.write(compact_json(data))  # one string: the C encoder, not json.dump's pieces
                    if durable:
                        os.fsync(fd)
                finally:
                    os.close(fd)
                interrupt.point(f"{name} written, not yet renamed")
                os.replace(temporary, name, src_dir_fd=parent, dst_dir_fd=parent)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(temporary, dir_fd=parent)
                raise
    except OSError as exc:
        raise KernelError(f"cannot record state in {directory(netns)}: {exc.strerror or exc}") from exc


def read_record(netns: str | None, name: str) -> str | None:
    """The text of record NAME, or None if there is none; never read through a symlink or from a non-file."""
    try:
        with directory_fd(netns, create=False) as parent:
            fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=parent)
    except (FileNotFoundError, NotADirectoryError):
        return None
    with os.fdopen(fd, "rb") as handle:
        info = os.fstat(handle.fileno())
        if not stat.S_ISREG(info.st_mode) or info.st_size > MAX_RECORD_BYTES:
            raise OSError(f"{name} is not a regular file of at most {MAX_RECORD_BYTES} bytes")
        return handle.read().decode("utf-8", errors="replace")


def remove(netns: str | None) -> None:
    """Forget what was installed, the daemon's amendment to it, its view of the uplinks and the HA role."""
    try:
        with directory_fd(netns, create=False) as parent:
            for name in (STATE_RECORD, TABLE_AMENDMENT, DAEMON_RECORD, HA_RECORD):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(name, dir_fd=parent)
    except (FileNotFoundError, NotADirectoryError):
        return
    except OSError as exc:
        raise KernelError(f"cannot remove the records in {directory(netns)}: {exc.strerror or exc}") from exc


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
    descriptor = _acquire(netns, purpose, wait)
    _held[target] = _Hold(descriptor)
    try:
        yield
    finally:
        del _held[target]
        _release(target, descriptor, bool(netns))


def _acquire(netns: str | None, purpose: str, wait: float) -> int:
    """The locked descriptor of the namespace's `lock`, in its private directory (`rundir.directory_fd`)."""
    path = directory(netns) / LOCK
    deadline = time.monotonic() + wait
    while True:
        try:
            with directory_fd(netns, create=True) as parent:
                descriptor = os.open(LOCK, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, FILE_MODE,
                                     dir_fd=parent)
        except FileNotFoundError:
            continue  # its holder just removed the directory: make it again
        except OSError as exc:
            raise KernelError(f"cannot lock {path}: {exc.strerror or exc}") from exc
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(descriptor)
            os.close(descriptor)
            if time.monotonic() >= deadline:
                raise KernelError(
                    f"another markroute command is changing this namespace ({holder}); "
                    f"waited {wait:g} s for it: try again when it is done"
                ) from None
            if interrupt.received() is not None:
                raise KernelError(f"{interrupt.Interrupted(interrupt.received() or 0)} while waiting for the lock "
                                  f"({holder}): nothing was changed")
            time.sleep(LOCK_POLL)
            continue
        if _same_file(descriptor, path):
            os.ftruncate(descriptor, 0)
            os.pwrite(descriptor, f"{os.getpid()} {purpose}\n".encode(), 0)
            return descriptor
        os.close(descriptor)  # its last holder removed it while we waited: lock the new one


def _same_file(descriptor: int, path: Path) -> bool:
    try:
        return os.fstat(descriptor).st_ino == os.stat(path, follow_symlinks=False).st_ino
    except (FileNotFoundError, NotADirectoryError):
        return False


def _holder(descriptor: int) -> str:
    """Who holds the lock open at DESCRIPTOR, as it wrote itself there: "pid N (what)"."""
    try:
        pid, _, purpose = os.pread(descriptor, 4096, 0).decode(errors="replace").strip().partition(" ")
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
        with directory_fd(netns, create=True) as parent:
            fd = os.open(JOURNAL, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, FILE_MODE,
                         dir_fd=parent)
        handle = os.fdopen(fd, "w", encoding="utf-8")
        handle.write(json.dumps(header) + "\n")
        handle.flush()
    except OSError as exc:
        raise KernelError(f"cannot write {path}: {exc.strerror or exc}") from exc
    return handle


def read_journal(netns: str | None) -> list[dict[str, Any]] | None:
    """The lines of a journal left behind (a torn last line is dropped), or None when there is none."""
    path = directory(netns) / JOURNAL
    try:
        text = read_record(netns, JOURNAL)
    except OSError as exc:
        raise KernelError(f"cannot read {path}: {exc.strerror or exc}") from exc
    if text is None:
        return None
    lines: list[dict[str, Any]] = []
    for line in text.splitlines():
        try:
            value = json.loads(line)
        except ValueError:
            break  # written when the process died
        if not isinstance(value, dict):
            break
        lines.append(value)
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
    pid = lines[0].get("pid")
    return pid if isinstance(pid, int) else 0


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
