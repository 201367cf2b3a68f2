"""The HA role of this router (one of a keepalived + conntrackd pair): its record, its hold, its hand-over.

`markroute ha STATE` (keepalived's notify hook) is the only writer of `ha.json` in the
namespace's state folder: the role keepalived announced, when, the conntrackd config
and how each conntrackd step went. `markroute run` reads it before deleting a dead
uplink's connections (only a master's connections are its own: a backup's or a failed
router's deletions would be replicated by conntrackd and erase the peer's copy), every
apply reads it to set the hold again after installing a new table, and `status` shows it
with conntrackd's statistics.

The hand-over steps follow conntrackd(8) and its primary-backup.sh, as measured in the
HA lab with conntrackd 1.4.7 (`markroute.lab.ha_notify` has the details):

* master: `-c` commits the external cache (the peer's connections) into the kernel,
  `-f internal` flushes the internal cache, `-R` refills it from the kernel (so this
  router replicates the committed connections from now on), `-B` sends a bulk update to
  the peer; then the hold is lifted. A bare `-f` after `-c` is refused by conntrackd
  1.4.7 (it never clears its commit-in-progress flag), hence `-f internal`.
* backup: hold, then `-t` (purge the kernel table after PurgeTimeout) and `-n` (ask the
  master for a full resync).
* fault: hold, then `-t`.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from markroute.kernel import KernelError, nft, state
from markroute.kernel.records import RecordError, typed
from markroute.plan import EVERYTHING, HOLD_SETS, Plan
from markroute.plan.nftjson import FAMILY, address_element

Role = Literal["master", "backup", "fault"]
ROLES: tuple[Role, ...] = ("master", "backup", "fault")
HA_RECORD = state.HA_RECORD
HA_FORMAT = 1  # ha.json's shape, frozen in tests/test_record_formats.py
STEPS: dict[str, tuple[tuple[str, ...], ...]] = {
    "master": (("-c",), ("-f", "internal"), ("-R",), ("-B",)),
    "backup": (("-t",), ("-n",)),
    "fault": (("-t",),),
}


@dataclass(frozen=True)
class Step:
    """One conntrackd command of a hand-over and how it went."""

    argv: tuple[str, ...]
    code: int
    seconds: float
    output: str


@dataclass(frozen=True)
class HaRecord:
    role: Role
    since: float
    conntrackd: str | None = None
    steps: tuple[Step, ...] = field(default=())
    #: Why the hold could not be set or lifted, if it could not.
    hold_error: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "format": HA_FORMAT}

    @classmethod
    def from_json(cls, data: object) -> HaRecord:
        """The record read back, every field type-checked (`records.typed`): `RecordError` if damaged,
        or if written by a markroute of another format (one without the field is format 1)."""
        if isinstance(data, dict) and data.get("format", 1) != HA_FORMAT:
            raise RecordError("format", f"is {str(data.get('format'))[:20]}: written by another markroute version, "
                                        f"this one reads format {HA_FORMAT}")
        return typed(cls, data, ignore=("format",))


def load(netns: str | None) -> HaRecord | None:
    """The role `markroute ha` last recorded, or None when it never ran here.

    Read like every record (`state.read_record`: never through a symlink, regular files
    only) and type-checked; a damaged one is a `KernelError` naming the file and field.
    """
    path = state.directory(netns) / HA_RECORD
    try:
        text = state.read_record(netns, HA_RECORD)
        if text is None:
            return None
        return HaRecord.from_json(json.loads(text))
    except OSError as exc:
        raise KernelError(f"cannot read {path}: {exc.strerror or exc}") from exc
    except (ValueError, RecursionError) as exc:  # RecordError is a ValueError
        raise KernelError(f"{path} is damaged: {str(exc)[:120]}") from None


def is_master(netns: str | None) -> bool:
    record = load(netns)
    return record is not None and record.role == "master"


def save(netns: str | None, record: HaRecord) -> None:
    state.write(netns, HA_RECORD, record.to_json())


def has_hold(plan: Plan) -> bool:
    return any(obj.get("set", {}).get("name") == HOLD_SETS[4] for obj in plan.nft)


def set_hold(table: str, held: bool) -> None:
    """Hold (every address in the hold sets) or lift (empty sets), in one transaction."""
    commands: list[dict[str, Any]] = []
    for version, name in HOLD_SETS.items():
        ref = {"family": FAMILY, "table": table, "name": name}
        commands.append({"flush": {"set": ref}})
        if held:
            commands.append({"add": {"element": {**ref, "elem": [address_element(version, EVERYTHING[version])]}}})
    nft.run_batch(commands)


def restore_hold(plan: Plan, netns: str | None) -> None:
    """After an apply: hold unless the recorded role is master (a fresh table has empty sets)."""
    if has_hold(plan):
        set_hold(plan.table_name, not is_master(netns))


def conntrackd(config: str, *args: str) -> Step:
    """Run one conntrackd client command against the daemon of CONFIG (a missing program is a failed step)."""
    argv = (shutil.which("conntrackd") or "conntrackd", "-C", config, *args)
    began = time.monotonic()
    try:
        done = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return Step(argv, -1, time.monotonic() - began, str(exc))
    return Step(argv, done.returncode, time.monotonic() - began, (done.stdout + done.stderr).strip())


def hand_over(role: Role, config: str | None, table: str | None, netns: str | None) -> HaRecord:
    """Take ROLE: record it, set or lift the hold and run conntrackd's steps (module doc).

    A router leaving the master role records so first, so `markroute run` stops deleting
    connections at once; the master records its role once the commit is done. Each
    record and hold change happen under apply's lock, so an apply (which sets the hold
    from the recorded role) never sees one without the other. TABLE is markroute's table
    when it holds the hold sets, else None.
    """
    if role != "master":
        with state.locked(netns, f"markroute ha {role}"):
            save(netns, HaRecord(role, time.time(), config))
            hold_error = _change_hold(table, True)
    steps = tuple(conntrackd(config, *step) for step in STEPS[role]) if config else ()
    with state.locked(netns, f"markroute ha {role}"):
        if role == "master":
            save(netns, HaRecord(role, time.time(), config, steps))
            hold_error = _change_hold(table, False)
        record = HaRecord(role, time.time(), config, steps, hold_error)
        save(netns, record)
    return record


def _change_hold(table: str | None, held: bool) -> str | None:
    """Set or lift the hold; the reason when that failed (the hand-over goes on regardless)."""
    if table is None:
        return None
    try:
        set_hold(table, held)
    except KernelError as exc:
        return str(exc)
    return None


def hold_table(netns: str | None) -> str | None:
    """markroute's table when it is installed with the hold sets, else None."""
    recorded = state.load(netns)
    if recorded is None:
        return None
    names = {obj["set"]["name"] for obj in recorded.nft_listing if "set" in obj}
    return recorded.table_name if HOLD_SETS[4] in names else None


def is_held(table: str) -> bool | None:
    """Whether the hold is on in the live table (None: no such table or sets)."""
    listing = nft.list_table(table)
    if listing is None:
        return None
    for obj in listing:
        body = obj.get("set", {})
        if body.get("name") == HOLD_SETS[4]:
            return bool(body.get("elem"))
    return None


@dataclass(frozen=True)
class SyncHealth:
    """conntrackd's view, from `conntrackd -s`: caches and the sync link's counters."""

    ok: bool
    counters: dict[str, int]
    error: str | None = None


def sync_health(config: str) -> SyncHealth:
    """Parse `conntrackd -s`: keep 'name: number' pairs of the cache and sync sections."""
    step = conntrackd(config, "-s")
    if step.code != 0:
        return SyncHealth(False, {}, step.output or f"conntrackd exited {step.code}")
    return SyncHealth(True, _counters(step.output.splitlines()))


def _counters(lines: Iterable[str]) -> dict[str, int]:
    """conntrackd -s as 'section.name': number.

    Sections are the unindented lines ending in ':' ("cache internal", "cache external",
    "UDP traffic (active device=sync0)" becomes "sync"); inside them conntrackd writes
    either 'name: N' pairs (a 'failed: N' after a pair belongs to it) or 'N Name word'.
    """
    found: dict[str, int] = {}
    section = ""
    for line in lines:
        if line.strip() and not line[0].isspace() and line.rstrip().endswith(":") and "\t" not in line:
            title = line.strip()[:-1]
            section = "sync" if " traffic (active device" in title else title
            continue
        previous = ""
        for name, value in _PAIR.findall(line):
            name = f"{previous} failed" if name == "failed" and previous else name
            found[f"{section}.{name}"] = int(value)
            previous = name
        for value, name in _COUNT.findall(line):
            found[f"{section}.{name}"] = int(value)
    return found


_PAIR = re.compile(r"([A-Za-z][A-Za-z ]*?):\s+(\d+)")
_COUNT = re.compile(r"(\d+) ([A-Z][a-z]+ [a-z]+)")
