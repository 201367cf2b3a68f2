"""`cgroup`: the cgroup v2 of the local socket of a connection this machine originates.

`socket cgroupv2 level N @set` compares the id of the socket's ancestor cgroup at depth N
(the cgroup2 root is depth 0; `system.slice/x.service` is depth 2) with the ids in a
set, so a service's sub-cgroups match too. nft turns a path into an id when it loads it,
and a cgroup removed and made again gets a new id: the set's elements are run-time data
that the kernel layer fills with the paths that exist and `markroute run` keeps true
(`kernel/cgroups.py`). Like `user`/`group`, local traffic only (`match/owner.py`).

Paths are relative to the cgroup2 root, as `/proc/PID/cgroup` shows them without the
leading slash. nft resolves them under /sys/fs/cgroup, so where cgroup2 is mounted
elsewhere under it (hybrid systems: /sys/fs/cgroup/unified) the kernel layer prefixes
them (`cgroup2_place`).
"""

from __future__ import annotations

import re

from markroute.match.key import AddressSets, Expr, MatchKey, Problem, Unmerged, unique
from markroute.match.owner import forwarded_conflict, local_only
from markroute.model import Match
from markroute.plan import nftjson as nj
from markroute.values import yaml_text

NFT_CGROUP_ROOT = "/sys/fs/cgroup"  # where nft looks a path up (stat of this + "/" + path)
MOUNTINFO = "/proc/self/mountinfo"
_NAME = re.compile(r"[A-Za-z0-9_.@:+=,-]+")  # what systemd and people name cgroups; nothing nft text must quote
MAX_DEPTH = 255  # the level is one byte


def cgroup2_place(mountinfo: str | None = None) -> str | None:
    """Where cgroup2 is mounted relative to /sys/fs/cgroup: "" (pure v2), "unified" (hybrid),
    or None when it is not mounted there at all (nft could not resolve a path)."""
    try:
        with open(mountinfo or MOUNTINFO, encoding="utf-8") as lines:
            for line in lines:
                fields = line.split()
                if " - cgroup2 " not in line or len(fields) < 5:
                    continue
                point = fields[4]
                if point == NFT_CGROUP_ROOT:
                    return ""
                if point.startswith(NFT_CGROUP_ROOT + "/"):
                    return point[len(NFT_CGROUP_ROOT) + 1:]
    except OSError:
        return None
    return None


def depth(path: str) -> int:
    """The level of PATH in the cgroup2 hierarchy: the number of its components."""
    return path.count("/") + 1


def parse_path(value: object) -> str:
    """A cgroup v2 path relative to the root: components of plain names, no `.`/`..`."""
    text = yaml_text(value).strip()
    if not text:
        raise ValueError("an empty cgroup path matches nothing: give one such as system.slice/x.service")
    if text.startswith("/"):
        raise ValueError(f"'{text}': write the path relative to the cgroup2 root, without the leading '/'")
    parts = text.rstrip("/").split("/")
    for part in parts:
        if part in ("", ".", ".."):
            raise ValueError(f"'{text}': a cgroup path has no empty, '.' or '..' parts")
        if not _NAME.fullmatch(part):
            raise ValueError(f"'{text}': '{part}' is not a cgroup name (letters, digits and _.@:+=,- only)")
    if len(parts) > MAX_DEPTH:
        raise ValueError(f"'{text}' is deeper than nftables can match ({MAX_DEPTH} levels)")
    return "/".join(parts)


def parse_configured(value: object) -> str:
    """`parse_path`, on a machine where nft can resolve it: cgroup2 mounted under /sys/fs/cgroup."""
    path = parse_path(value)
    if cgroup2_place() is None:
        raise ValueError(f"cgroup v2 is not mounted under {NFT_CGROUP_ROOT} on this machine, "
                         "where nftables looks cgroups up")
    return path


def covers(a: tuple[str, ...], b: tuple[str, ...] | None) -> bool:
    """Every socket in one of b's cgroups is in one of a's: each b path is inside an a path."""
    return b is not None and all(any(p == q or p.startswith(q + "/") for q in a) for p in b)


def needs(match: Match) -> Problem | None:
    """Local traffic only (see `owner`), and one depth per match: the rule reads one level."""
    paths = match.cgroups
    if not paths:
        return None
    conflict = forwarded_conflict("cgroup", match)
    if conflict:
        return conflict
    depths = sorted({depth(p) for p in paths})
    if len(depths) > 1:
        return (f"'cgroup' paths of different depths ({', '.join(map(str, depths))}) in one match: "
                "nftables compares one level per rule", "write one policy per depth")
    return None


def conditions(match: Match, version: int | None, sets: AddressSets) -> list[Expr]:
    paths = match.cgroups
    if not paths:
        return []
    level = depth(paths[0])
    return [nj.match(nj.socket_cgroup(level), sets.cgroup_value(paths, level))]


CGROUP = MatchKey(
    key="cgroup",
    field="cgroups",
    read="many",
    parse=parse_configured,
    collect=unique,
    needs=needs,
    applies=local_only,
    in_not=("write 'cgroup' outside 'not'", "list the cgroups that should match instead"),
    in_ingress=("'cgroup' has no meaning in an ingress match: arriving packets have no local socket", None),
    compared=lambda match: match.cgroups,
    covers=covers,
    conditions=conditions,
    family_specific=False,
    map_field=Unmerged.RULE,
    flow_field="cgroup",
    trace_option="--cgroup",
)
