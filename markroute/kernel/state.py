"""What markroute installed, kept under /run/markroute so `down` and `status` need no config.

One JSON file per network namespace (`/run/markroute/state.json`, or
`/run/markroute/netns/NAME/state.json` under `--netns NAME`; /run is per boot, like
everything the file describes). It is written atomically (temporary file, then
rename), so a crash leaves either the old record or the new one. The sysctl values it
holds are the ones found before markroute first changed them: `down` puts those back.
The elements of address sets (maybe 100,000 intervals) are kept packed, base64 of
fixed-width (first, last) pairs per set (`nft_elements`), not as nft JSON: writing,
reading and comparing them then costs milliseconds.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from markroute.kernel import KernelError, nft
from markroute.plan import IpRule, Route, UplinkPlan
from markroute.plan.nftjson import SET_VERSIONS, AddressElements, json_default

RUN_DIR = Path("/run/markroute")
FORMAT = 2
READABLE_FORMATS = (1, FORMAT)  # format 1 kept set elements as nft JSON in the listing: still read as they are
STATE_RECORD = "state.json"
DAEMON_RECORD = "daemon.json"  # written by `markroute run` (markroute.daemon.record)


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
        listing: list[dict[str, Any]] = []
        packed: dict[str, str] = {}
        for obj in self.nft_listing:
            elements = obj.get("set", {}).get("elem")
            if isinstance(elements, AddressElements):
                packed[obj["set"]["name"]] = elements.packed_text()
                obj = nft.without_elements([obj])[0]
            listing.append(obj)
        data["nft_listing"] = listing
        data["nft_elements"] = packed
        data["format"] = FORMAT
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> State:
        fields = {k: v for k, v in data.items() if k not in ("format", "nft_elements")}
        packed = data.get("nft_elements", {})
        fields["nft_listing"] = [
            {"set": {**obj["set"], "elem": AddressElements.from_packed_text(
                SET_VERSIONS[obj["set"]["type"]], packed[obj["set"]["name"]])}}
            if "set" in obj and obj["set"]["name"] in packed else obj
            for obj in data["nft_listing"]
        ]
        fields["rules"] = [IpRule(**r) for r in data["rules"]]
        fields["routes"] = [Route(**r) for r in data["routes"]]
        fields["uplinks"] = [UplinkPlan(**{**u, "versions": tuple(u["versions"])}) for u in data["uplinks"]]
        return cls(**fields)


def directory(netns: str | None) -> Path:
    return RUN_DIR / "netns" / netns if netns else RUN_DIR


def load(netns: str | None) -> State | None:
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
    write(netns, STATE_RECORD, state.to_json())


def write(netns: str | None, name: str, data: dict[str, Any]) -> None:
    """Write one JSON record of the namespace atomically: a temporary file, then rename."""
    target = directory(netns)
    target.mkdir(parents=True, exist_ok=True)
    temporary = target / f".{name}.{os.getpid()}"
    try:
        with open(temporary, "w", encoding="utf-8") as handle:
            handle.write(json.dumps(data, default=json_default))  # compact and via dumps: only that path has json's C encoder
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, target / name)
    except OSError as exc:
        temporary.unlink(missing_ok=True)
        raise KernelError(f"cannot record state in {target}: {exc.strerror}") from exc


def remove(netns: str | None) -> None:
    """Forget what was installed, and the daemon's view of the uplinks it installed (`DAEMON_RECORD`)."""
    for name in (STATE_RECORD, DAEMON_RECORD):
        (directory(netns) / name).unlink(missing_ok=True)


@contextmanager
def locked(netns: str | None) -> Iterator[None]:
    """Serialise apply/down per namespace: two runs at once would each undo the other's work.

    Under --netns the directory is removed again when no state is left, so namespaces
    that come and go (labs, containers) leave nothing behind in /run.
    """
    target = directory(netns)
    target.mkdir(parents=True, exist_ok=True)
    try:
        with open(target / "lock", "w") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            yield
    finally:
        if netns and not (target / STATE_RECORD).exists():
            (target / "lock").unlink(missing_ok=True)
            with contextlib.suppress(OSError):
                target.rmdir()
