"""cgroup sets between markroute's form and nft's: paths relative to the cgroup2 root, and
paths nft resolves under /sys/fs/cgroup.

A plan's cgroup set (`nftjson.cgroup_set`) holds the configured paths. nft turns each
element into the cgroup's 64-bit id when it loads it (stat of /sys/fs/cgroup/PATH: one
missing path fails the whole batch), and lists an id back as its path, or as a bare
number once that cgroup is gone. So what nft is handed is always "the configured paths
that exist now", prefixed with where cgroup2 is mounted under /sys/fs/cgroup (hybrid
systems: `unified/`); and what it lists is turned back into configured paths with the
stale numbers dropped. nft 1.0.6 also cannot read `socket cgroupv2` in JSON and lists
it without its level: `nft.run_batch` loads such batches as text (`plan.nfttext`), and
`restore_level` puts the level back from the set's name.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any

from markroute.kernel import KernelError
from markroute.match.cgroup import NFT_CGROUP_ROOT, cgroup2_place
from markroute.plan.nftjson import cgroup_set_level, is_cgroup_set

Obj = dict[str, Any]


def place() -> str:
    """cgroup2's mount point relative to /sys/fs/cgroup ("" or "unified"); KernelError when nft cannot reach it."""
    found = cgroup2_place()
    if found is None:
        raise KernelError(f"cgroup v2 is not mounted under {NFT_CGROUP_ROOT}: nftables cannot match cgroups here")
    return found


def kernel_path(path: str, where: str) -> str:
    """A configured PATH as nft resolves it (under /sys/fs/cgroup)."""
    return f"{where}/{path}" if where else path


def exists(path: str, where: str) -> bool:
    return os.path.isdir(os.path.join(NFT_CGROUP_ROOT, kernel_path(path, where)))


def configured(element: Any, where: str) -> str | None:
    """A listed element as a configured path; None for a stale id (a number) or one outside cgroup2."""
    if not isinstance(element, str) or element.isdigit():
        return None
    if not where:
        return element
    return element[len(where) + 1:] if element.startswith(where + "/") else None


def involved(commands: Iterable[Obj]) -> bool:
    """Whether a batch adds a cgroup set or a rule reading a socket's cgroup (sets are not walked:
    their elements can be 100,000 addresses)."""
    for command in commands:
        for obj in command.values():
            if not isinstance(obj, dict):
                continue
            if "set" in obj and is_cgroup_set(obj["set"]):
                return True
            if "rule" in obj and reads_cgroup(obj["rule"]):
                return True
    return False


def reads_cgroup(rule: Obj) -> bool:
    """Whether a rule compares a socket's cgroup (which nft 1.0.6 reads only as text)."""
    return any(isinstance(item, dict) and isinstance(item.get("match"), dict)
               and isinstance(item["match"].get("left"), dict) and "socket" in item["match"]["left"]
               and item["match"]["left"]["socket"].get("key") == "cgroupv2"
               for item in rule.get("expr", []))


def resolved(commands: Iterable[Obj]) -> list[Obj]:
    """COMMANDS with every added cgroup set holding the kernel paths of its configured ones that exist now."""
    where: str | None = None
    out: list[Obj] = []
    for command in commands:
        body = command.get("add", {}).get("set")
        if body is not None and is_cgroup_set(body):
            where = place() if where is None else where
            present = [kernel_path(p, where) for p in body.get("elem", []) if exists(p, where)]
            body = {k: v for k, v in body.items() if k != "elem"}
            command = {"add": {"set": {**body, "elem": present} if present else body}}
        out.append(command)
    return out


def restore_level(rule: Obj) -> Obj:
    """A listed rule with the level of each `socket cgroupv2` put back from the set it is compared with."""
    expr = rule.get("expr")
    if not isinstance(expr, list):
        return rule
    fixed = []
    for item in expr:
        test = item.get("match") if isinstance(item, dict) else None
        if test and test.get("left") == {"socket": {"key": "cgroupv2"}} and isinstance(test.get("right"), str):
            level = cgroup_set_level(test["right"].lstrip("@"))
            if level is not None:
                item = {"match": {**test, "left": {"socket": {"key": "cgroupv2", "level": level}}}}
        fixed.append(item)
    return {**rule, "expr": fixed}


def listed_as_configured(body: Obj) -> Obj:
    """A listed cgroup set with its elements as configured paths (stale ids dropped): loadable again."""
    where = cgroup2_place() or ""
    paths = [p for p in (configured(e, where) for e in body.get("elem", [])) if p is not None]
    plain = {k: v for k, v in body.items() if k != "elem"}
    return {**plain, "elem": paths} if paths else plain


def readable(document: dict[str, Any]) -> dict[str, Any]:
    """A ruleset listing as the simulator reads a plan: cgroup rules with their level, cgroup
    sets holding configured paths (what `trace --cgroup` takes). Other objects are kept as they are."""
    if not any("set" in obj and is_cgroup_set(obj["set"]) for obj in document.get("nftables", [])):
        return document
    objects = [{"rule": restore_level(obj["rule"])} if "rule" in obj
               else {"set": listed_as_configured(obj["set"])} if "set" in obj and is_cgroup_set(obj["set"])
               else obj for obj in document["nftables"]]
    return {**document, "nftables": objects}
