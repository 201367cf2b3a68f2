"""The elements of dynamic sets: others' data that markroute keeps across its own changes.

A dynamic set (`nftjson.dynamic_set`) is filled by a resolver, a script or `markroute set
add`. markroute never compares or records its elements (`nft.normalise` leaves them out),
and when it must replace its whole table (a changed set definition, a rollback) it puts
the live elements of every dynamic set the new table still has back in the same
transaction, each with the lifetime it had left: packets never see the set emptied.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from markroute.kernel import KernelError, nft
from markroute.plan.nftjson import FAMILY, SET_VERSIONS, address_element, is_dynamic
from markroute.values import Interval

Obj = dict[str, Any]


@dataclass(frozen=True)
class DynamicSetState:
    """One dynamic set as the kernel has it now: its elements as nft lists them."""

    name: str
    type: str
    elements: list[Any]


def live(table: str) -> dict[str, DynamicSetState]:
    """The dynamic sets of table `inet TABLE` with their elements; empty when there is no table."""
    structure = nft.table_structure(table) or []
    names = [obj["set"]["name"] for obj in structure if "set" in obj and is_dynamic(obj["set"])]
    found: dict[str, DynamicSetState] = {}
    for name in names:
        for obj in nft.list_set(table, name):
            body = obj["set"]
            found[name] = DynamicSetState(name, body["type"], list(body.get("elem", [])))
    return found


def readded(element: Any) -> Any:
    """A listed element as it is added again: with the lifetime it has left, if it had one."""
    if isinstance(element, dict) and "elem" in element:
        body = element["elem"]
        if "expires" in body:
            return {"elem": {"val": body["val"], "timeout": max(1, int(body["expires"]))}}
        return body["val"]
    return element


def carried(table: str, objects: Iterable[Obj], sets: dict[str, DynamicSetState]) -> list[Obj]:
    """`add element` commands putting SETS' elements into the dynamic sets of OBJECTS of the same name and type."""
    commands: list[Obj] = []
    for obj in objects:
        body = obj.get("set")
        if body is None or not is_dynamic(body):
            continue
        kept = sets.get(body["name"])
        if kept is None or kept.type != body["type"] or not kept.elements:
            continue
        elements = [readded(element) for element in kept.elements]
        commands.append({"add": {"element": {"family": FAMILY, "table": table, "name": body["name"], "elem": elements}}})
    return commands


def replace_table(name: str, objects: Iterable[Obj]) -> None:
    """`nft.replace_table`, keeping the live elements of dynamic sets in the same transaction."""
    objects = list(objects)
    kept = carried(name, objects, live(name))
    table = {"table": {"family": FAMILY, "name": name}}
    nft.run_batch([{"add": table}, {"delete": table}, *({"add": obj} for obj in objects), *kept])


def element_counts(table: str) -> dict[str, int]:
    """How many elements each dynamic set holds now (status); empty if the table is missing."""
    try:
        return {name: len(state.elements) for name, state in live(table).items()}
    except (KernelError, json.JSONDecodeError):
        return {}


def kernel_sets(table: str, name: str) -> dict[int, str]:
    """The kernel names of dynamic set NAME per IP version, as the applied table has them.

    Raises KernelError when the table has no dynamic set of that name (a static set's
    elements come from the config and are not to be changed behind apply's back).
    """
    structure = nft.table_structure(table)
    if structure is None:
        raise KernelError(f"markroute is not applied here (no table inet {table})")
    found: dict[int, str] = {}
    static: list[str] = []
    for obj in structure:
        body = obj.get("set")
        if body is None or body["name"] not in (f"{name}_v4", f"{name}_v6"):
            continue
        if is_dynamic(body):
            found[SET_VERSIONS[body["type"]]] = body["name"]
        else:
            static.append(body["name"])
    if not found:
        problem = "comes from the config, not dynamic" if static else "is not in the applied config"
        raise KernelError(f"set '{name}' {problem}: only sets with 'dynamic: true' or 'domains:' take elements")
    return found


def change(table: str, name: str, elements: list[tuple[int, Interval]], timeout: int | None, remove: bool) -> None:
    """Add (with TIMEOUT, else the set's default lifetime) or remove ELEMENTS of dynamic set NAME.

    One transaction. An element that is already there gets a fresh lifetime: the kernel
    (6.18, measured) renews an existing element on a new add only when the add changes its
    timeout value, so each added element is added, deleted and added again in the same
    transaction: packets never see it missing, and its lifetime starts over.
    """
    sets = kernel_sets(table, name)
    by_set: dict[str, list[Any]] = {}
    for version, interval in elements:
        if version not in sets:
            raise KernelError(f"set '{name}' has no IPv{version} half in the applied table")
        element = address_element(version, interval)
        if timeout is not None and not remove:
            element = {"elem": {"val": element, "timeout": timeout}}
        by_set.setdefault(sets[version], []).append(element)
    commands: list[Obj] = []
    for set_name, elems in by_set.items():
        def command(verb: str, items: list[Any], target: str = set_name) -> Obj:
            return {verb: {"element": {"family": FAMILY, "table": table, "name": target, "elem": items}}}
        if remove:
            commands.append(command("delete", elems))
        else:
            plain = [e["elem"]["val"] if isinstance(e, dict) and "elem" in e else e for e in elems]
            commands += [command("add", elems), command("delete", plain), command("add", elems)]
    nft.run_batch(commands)


def described(element: Any) -> tuple[str, int | None]:
    """A listed element as text, with the seconds it has left (None: it does not expire)."""
    value, expires = element, None
    if isinstance(element, dict) and "elem" in element:
        value, expires = element["elem"]["val"], element["elem"].get("expires")
    if isinstance(value, dict) and "prefix" in value:
        return f"{value['prefix']['addr']}/{value['prefix']['len']}", expires
    if isinstance(value, dict) and "range" in value:
        return "-".join(value["range"]), expires
    return str(value), expires
