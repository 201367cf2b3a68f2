"""Talking to nftables through `nft -j`: atomic batches in, JSON listings out.

markroute's table is always replaced in one batch (`add table` so that `delete table`
cannot fail, `delete table`, then every object of the new table): the kernel applies
the batch as one transaction, so packets see either the old table or the new one.
Conntrack entries are not touched, so connections keep their ct marks across a swap.

nft normalises expressions when it lists them (`and 0xffff00ff or 0x100` may come back
as one constant), so a listing is never compared with the JSON that produced it, only
with an earlier *listing* (`normalise` strips handles and counter values). Set
elements are the exception: the compiler writes address intervals exactly as nft lists
them, which lets a change of set contents alone go in as element updates
(`nftnetlink`, over netlink: nft 1.0.6 is far too slow there) with no listing of
100,000 elements before or after (`table_structure` lists a table without its elements).
"""

from __future__ import annotations

import json
import subprocess
import threading
from collections.abc import Iterable
from typing import Any

from markroute.kernel import KernelError, cgroups, libnft, nftnetlink
from markroute.plan import HOLD_SETS, nfttext
from markroute.plan.nftjson import (
    FAMILY,
    compact_json,
    is_cgroup_set,
    is_dynamic,
    set_elements,
)

Obj = dict[str, Any]
NFT = "nft"
RUNTIME_SETS = frozenset(HOLD_SETS.values())  # their elements are state, not config (`compile.ha`)


def _run(argv: list[str], stdin: str | None = None) -> str:
    return _run_side_by_side([argv], stdin)[0]


def _run_side_by_side(argvs: list[list[str]], stdin: str | None = None) -> list[str]:
    """The output of an nft process per ARGV, all started at once (each reads STDIN)."""
    try:
        procs = [subprocess.Popen([NFT, *argv], stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for argv in argvs]
    except FileNotFoundError as exc:
        raise KernelError("the nft command is missing: install nftables") from exc
    outputs = [proc.communicate(stdin) for proc in procs]
    for proc, (_, stderr) in zip(procs, outputs):
        if proc.returncode != 0:
            message = " ".join(line.strip() for line in stderr.splitlines() if line.strip())
            raise KernelError(f"nft: {message or f'exited with status {proc.returncode}'}")
    return [stdout for stdout, _ in outputs]


def run_batch(commands: Iterable[Obj], session: libnft.Session | None = None,
              loading: threading.Event | None = None) -> None:
    """Load one JSON batch (`nft -j -f -`, or through SESSION in this process: `libnft`): one
    kernel transaction, all or nothing. LOADING is set once the batch is built and handed to
    nft, so a thread that waits for it gets Python's lock only when this one no longer needs it.

    A batch with cgroup sets gets their configured paths that exist now (`cgroups.resolved`);
    one reading a socket's cgroup goes in as text, which nft 1.0.6 needs for it (libnftables
    reads text too when its JSON parser refuses a buffer). A cgroup that vanished between our
    look and nft's fails the batch: it is built again once.
    """
    commands = list(commands)
    if not cgroups.involved(commands):
        _load(compact_json({"nftables": commands}), session, loading)
        nftnetlink.count_commit()
        return
    for attempt in (1, 2):
        batch = cgroups.resolved(commands)
        try:
            if any(cgroups.reads_cgroup(command["add"]["rule"]) for command in batch if "rule" in command.get("add", {})):
                try:
                    text = nfttext.batch(batch)
                except ValueError as exc:
                    raise KernelError(str(exc)) from None
                _load(text, session, loading, as_json=False)
            else:
                _load(compact_json({"nftables": batch}), session, loading)
        except KernelError as exc:
            if attempt == 2 or "cgroupv2 path fails" not in str(exc):
                raise
            continue
        break
    nftnetlink.count_commit()


def _load(text: str, session: libnft.Session | None, loading: threading.Event | None, as_json: bool = True) -> None:
    if loading is not None:
        loading.set()
    if session is not None:
        session.run(text)
    else:
        _run(["-j", "-f", "-"] if as_json else ["-f", "-"], text)


def list_ruleset() -> dict[str, Any]:
    """The whole ruleset as `nft -j list ruleset` prints it."""
    document: dict[str, Any] = json.loads(_run(["-j", "list", "ruleset"]) or '{"nftables": []}')
    return document


def list_ruleset_but(name: str) -> dict[str, Any]:
    """The ruleset but table `inet NAME`: every other table that has chains, listed whole (set elements too).

    For a caller that puts a plan in that table's place (the neighbour check after
    apply): listing markroute's own table only to drop it cost nft 0.6 s for 10,000
    policies, and a minute and a gigabyte for a million set elements. The tables are
    found by their chains (`nft list chains` reads no rules; `list tables` read them all
    in nft 1.0.6), a table without chains holds nothing a packet meets, and each is
    listed on its own: a caller that needs one generation compares it around the call
    (`snapshot`).
    """
    chains = json.loads(_run(["-j", "list", "chains"]) or '{"nftables": []}')["nftables"]
    objects: list[Obj] = [item for item in chains if "metainfo" in item]
    tables = {(item["chain"]["family"], item["chain"]["table"]): None for item in chains if "chain" in item}
    for family, table in tables:
        if (family, table) != (FAMILY, name):
            listed = json.loads(_run(["-j", "list", "table", family, table]) or '{"nftables": []}')
            objects += [o for o in listed["nftables"] if "metainfo" not in o]
    return {"nftables": objects}


def list_table(name: str, ruleset: dict[str, Any] | None = None) -> list[Obj] | None:
    """The objects of table `inet NAME` (table, sets, chains, rules), or None if it is absent."""
    document = list_ruleset() if ruleset is None else ruleset
    objects = [item for item in document["nftables"] if _in_table(item, name)]
    return objects or None


def _in_table(item: Obj, name: str) -> bool:
    for kind, body in item.items():
        if not isinstance(body, dict) or body.get("family") != FAMILY:
            return False
        return body.get("name" if kind == "table" else "table") == name
    return False


def list_set(table: str, name: str) -> list[Obj]:
    """Set NAME of table `inet TABLE` with its elements, as `nft -j list set` gives it."""
    document = json.loads(_run(["-j", "list", "set", FAMILY, table, name]) or '{"nftables": []}')
    return [item for item in document["nftables"] if "set" in item]


def table_structure(name: str) -> list[Obj] | None:
    """Table `inet NAME` without set elements (`nft -t`): milliseconds even for huge sets."""
    document = json.loads(_run(["-t", "-j", "list", "ruleset"]) or '{"nftables": []}')
    return list_table(name, document)


def list_chains(table: str, names: Iterable[str]) -> list[Obj]:
    """Chains NAMES of table `inet TABLE` with their rules, each as `nft -j list chain` lists it:
    a few chains of a big table without listing all of it. nft 1.0.6 reads every rule of the
    table for each (0.1 s at 10,000 policies), so the processes run side by side."""
    outputs = _run_side_by_side([["-j", "list", "chain", FAMILY, table, name] for name in names])
    return [item for output in outputs for item in json.loads(output or '{"nftables": []}')["nftables"]
            if "metainfo" not in item]


def hooked(objects: Iterable[Obj]) -> tuple[list[Obj], list[Obj]]:
    """A plan's objects but tables and sets, split: (the chains without a hook and their rules, the base
    chains and theirs). No packet enters a chain of the first part before one of the second leads there."""
    objects = [obj for obj in objects if "table" not in obj and "set" not in obj]
    base = {obj["chain"]["name"] for obj in objects if "chain" in obj and "hook" in obj["chain"]}
    parts: tuple[list[Obj], list[Obj]] = ([], [])
    for obj in objects:
        chain = obj["chain"]["name"] if "chain" in obj else obj["rule"]["chain"] if "rule" in obj else None
        parts[chain in base].append(obj)
    return parts


Shape = tuple[list[str], list[tuple[str, str, int, tuple[str | None, ...]]]]


def shape(objects: Iterable[Obj]) -> Shape:
    """What a plan and the listing nft makes of it share, whatever nft normalises: the names of
    the sets, and per chain its kind and each rule's comment (in order). A rule, chain or set
    added or removed by someone else changes it."""
    objects = list(objects)
    sets = sorted(body["name"] for obj in objects for kind, body in obj.items() if kind in ("set", "map"))
    comments: dict[str, list[str | None]] = {}
    for obj in objects:
        if "rule" in obj:
            comments.setdefault(obj["rule"]["chain"], []).append(obj["rule"].get("comment"))
    chains = sorted(
        (body["name"], str(body.get("hook", "")), len(comments.get(body["name"], [])), tuple(comments.get(body["name"], [])))
        for obj in objects for kind, body in obj.items() if kind == "chain"
    )
    return sets, chains


def without_elements(objects: Iterable[Obj]) -> list[Obj]:
    """Objects of a table or plan with set elements left out: what `table_structure` lists."""
    return [_without(obj, ("elem",)) if "set" in obj else obj for obj in objects]


def with_elements(structure: Iterable[Obj], source: Iterable[Obj]) -> list[Obj]:
    """STRUCTURE (a listing without set elements) completed with the set elements of SOURCE, a plan's objects.

    Not a cgroup set's: its elements are what exists at run time (`normalise` leaves them out too)."""
    elements = {obj["set"]["name"]: obj["set"]["elem"] for obj in source
                if obj.get("set", {}).get("elem") and not is_cgroup_set(obj["set"])}
    return [
        {"set": {**obj["set"], "elem": elements[obj["set"]["name"]]}}
        if "set" in obj and obj["set"]["name"] in elements else obj
        for obj in structure
    ]


def kept_sets(current: list[Obj], wanted: list[Obj]) -> set[str]:
    """Sets CURRENT and WANTED both have, defined alike but for their elements, whose elements
    are the config's (not run-time state): a rewrite keeps them in place, and apply may bring
    their elements to WANTED's first, over netlink (`_Apply.rewrite`)."""
    _, current_sets, _ = _table_parts(current)
    _, wanted_sets, _ = _table_parts(wanted)
    return {name for name in current_sets.keys() & wanted_sets.keys()
            if _alike(current_sets[name], wanted_sets[name]) and not _holds_state(current_sets[name])}


def table_rewrite(name: str, current: list[Obj], wanted: list[Obj]) -> list[Obj] | None:
    """Commands that turn table NAME from CURRENT into WANTED in one transaction without loading
    again the elements of a set both have: a policy edited, or a set added or dropped, beside a
    set of 1,000,000 prefixes costs what the change costs, not a whole-table replace
    (`replace_table`: nft reads, checks and sends every element again, seconds and hundreds of MB).

    Every chain is flushed and WANTED's rules added again (a listing's rules cannot be
    compared with a plan's); chains and sets only one side has, or whose definition
    changed, are deleted and added (after the flush, so no rule refers to them any more).
    None, for `replace_table` to do it, when the table itself or another kind of object
    differs, when a set both have holds other elements (nft 1.0.6 takes seconds to delete
    a few elements of a big set: they go over netlink, `nftnetlink`, in a transaction of
    their own, which cannot be this one), or when a set whose elements are run-time state
    (dynamic, HA hold, cgroup) would be dropped or changed (a whole-table replace carries
    those elements over). CURRENT and WANTED are `loadable` listings or a plan's objects.
    """
    current_chains, current_sets, current_others = _table_parts(current)
    wanted_chains, wanted_sets, wanted_others = _table_parts(wanted)
    if _sorted(current_others) != _sorted(wanted_others):
        return None
    gone_sets, new_sets = [], []
    for set_name in current_sets.keys() | wanted_sets.keys():
        before, after = current_sets.get(set_name), wanted_sets.get(set_name)
        if before is not None and after is not None and _alike(before, after):
            if _holds_state(before) or set_elements(before["set"]) == set_elements(after["set"]):
                continue
            return None
        if any(obj is not None and _holds_state(obj) for obj in (before, after)):
            return None
        gone_sets += [set_name] if before is not None else []
        new_sets += [after] if after is not None else []
    changed = {chain for chain in current_chains.keys() & wanted_chains.keys()
               if current_chains[chain] != wanted_chains[chain]}

    def reference(kind: str, object_name: str) -> Obj:
        return {kind: {"family": FAMILY, "table": name, "name": object_name}}

    commands = [{"flush": reference("chain", chain)} for chain in sorted(current_chains)]
    commands += [{"delete": reference("chain", chain)} for chain in sorted(current_chains)
                 if chain not in wanted_chains or chain in changed]
    commands += [{"delete": reference("set", set_name)} for set_name in sorted(gone_sets)]
    commands += [{"add": obj} for obj in sorted(new_sets, key=lambda obj: str(obj["set"]["name"]))]
    commands += [{"add": {"chain": body}} for chain, body in wanted_chains.items()
                 if chain not in current_chains or chain in changed]
    return commands + [{"add": obj} for obj in wanted if "rule" in obj]


def _table_parts(objects: list[Obj]) -> tuple[dict[str, Obj], dict[str, Obj], list[Obj]]:
    """A table's chain bodies and set objects by name, and its other objects (the table among them)."""
    chains = {obj["chain"]["name"]: obj["chain"] for obj in objects if "chain" in obj}
    sets = {obj["set"]["name"]: obj for obj in objects if "set" in obj}
    return chains, sets, [obj for obj in objects if not obj.keys() & {"chain", "set", "rule"}]


def _alike(one: Obj, other: Obj) -> bool:
    """Whether two set objects are defined alike, whatever their elements."""
    return _without(one, ("elem",)) == _without(other, ("elem",))


def _holds_state(obj: Obj) -> bool:
    """Whether a set's elements are run-time state rather than the config's (kept, never reloaded)."""
    body = obj["set"]
    return body.get("name") in RUNTIME_SETS or is_dynamic(body) or is_cgroup_set(body)


def _sorted(objects: list[Obj]) -> list[str]:
    return sorted(json.dumps(obj, sort_keys=True) for obj in objects)


def replace_table(name: str, objects: Iterable[Obj]) -> None:
    """Swap table `inet NAME` for OBJECTS (which include the table itself) in one transaction."""
    run_batch(replacement(name, objects))


def replacement(name: str, objects: Iterable[Obj]) -> list[Obj]:
    """The batch of `replace_table` (also what apply's journal keeps to undo a step)."""
    return [*deletion(name), *({"add": obj} for obj in objects)]


def delete_table(name: str) -> None:
    """Remove table `inet NAME` if it exists (the `add` first makes the delete unconditional)."""
    run_batch(deletion(name))


def deletion(name: str) -> list[Obj]:
    """The batch of `delete_table`."""
    table = {"table": {"family": FAMILY, "name": name}}
    return [{"add": table}, {"delete": table}]


def loadable(listing: Iterable[Obj]) -> list[Obj]:
    """A listing made fit to be added again: kernel handles dropped, counter values kept; the
    elements of dynamic sets too, which `dynsets.replace_table` carries with their lifetimes;
    cgroup sets' as configured paths (`run_batch` resolves them again) and the level of the
    rules reading them put back."""
    return [_without(obj, ("handle", "elem")) if "set" in obj and is_dynamic(obj["set"])
            else {"set": cgroups.listed_as_configured(_without(obj, ("handle",))["set"])}
            if "set" in obj and is_cgroup_set(obj["set"])
            else {"rule": cgroups.restore_level(_without(obj, ("handle",))["rule"])} if "rule" in obj
            else _without(obj, ("handle",))
            for obj in listing]


def normalise(listing: Iterable[Obj]) -> list[Obj]:
    """A listing with everything the kernel changes on its own removed: handles, counter values,
    and the order of chains and sets (nft lists them as they were created; a chain rewritten
    back by a rollback comes last). Tables, then sets, chains and their rules by name; the
    order of rules within a chain is kept, it is what they mean.

    Only rules hold counters, so sets (their elements can be 100,000) are not walked. The
    hold sets' elements are the HA role, not the config (`compile.ha`), and the elements of
    dynamic sets belong to whoever added them (`nftjson.is_dynamic`): both are left out like
    counters, they are not markroute's to compare, record or restore. So are the elements of
    cgroup sets (the cgroups that exist now, `kernel/cgroups.py`), and the level nft 1.0.6
    leaves out of a `socket cgroupv2` rule is put back.
    """
    objects = [{"rule": _zero_counters(cgroups.restore_level(_without(obj, ("handle",))["rule"]))} if "rule" in obj
               else _without(obj, ("handle", "elem"))
               if "set" in obj and (obj["set"].get("name") in RUNTIME_SETS or is_dynamic(obj["set"])
                                    or is_cgroup_set(obj["set"]))
               else _without(obj, ("handle",))
               for obj in listing]
    return sorted(objects, key=_listing_order)  # stable: rules of a chain keep their order


_KIND_ORDER = {"table": 0, "set": 1, "map": 1, "chain": 2, "rule": 3}


def _listing_order(obj: Obj) -> tuple[int, str]:
    kind, body = next(iter(obj.items()))
    return _KIND_ORDER.get(kind, 4), str(body.get("chain" if kind == "rule" else "name", ""))


def _without(obj: Obj, keys: tuple[str, ...]) -> Obj:
    return {kind: {k: v for k, v in body.items() if k not in keys} for kind, body in obj.items()}


# Statements that hold no statement, so no counter: left as listed (a 10,000-rule listing has ~330,000 values)
_WITHOUT_COUNTERS = frozenset(("match", "mangle", "vmap", "accept", "drop", "goto", "jump", "return", "continue",
                               "snat", "dnat", "masquerade", "redirect", "reject", "log", "limit", "notrack", "xt"))


def _zero_counters(rule: Obj) -> Obj:
    """RULE with the values of its counters zeroed: counter statements, and any nested in another statement."""
    expr = rule.get("expr")
    if not isinstance(expr, list):
        return _zeroed(rule)
    return {**rule, "expr": [{"counter": {"packets": 0, "bytes": 0}} if _is_counter(statement)
                             else statement if isinstance(statement, dict) and len(statement) == 1
                             and next(iter(statement)) in _WITHOUT_COUNTERS
                             else _zeroed(statement) for statement in expr]}


def _is_counter(value: Any) -> bool:
    return isinstance(value, dict) and len(value) == 1 and isinstance(value.get("counter"), dict)


def _zeroed(value: Any) -> Any:
    if _is_counter(value):
        return {"counter": {"packets": 0, "bytes": 0}}
    if isinstance(value, dict):
        return {k: _zeroed(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_zeroed(v) for v in value]
    return value


def rule_counters(listing: Iterable[Obj]) -> list[tuple[str, int, int]]:
    """(comment, packets, bytes) of every rule that has a comment and a counter."""
    found: list[tuple[str, int, int]] = []
    for obj in listing:
        rule = obj.get("rule")
        if not rule or "comment" not in rule:
            continue
        for expr in rule.get("expr", []):
            counter = expr.get("counter") if isinstance(expr, dict) else None
            if isinstance(counter, dict):
                found.append((rule["comment"], int(counter.get("packets", 0)), int(counter.get("bytes", 0))))
    return found
