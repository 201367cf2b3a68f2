"""`hosts:`: per-router differences in one config file (an HA pair runs the same file on both).

    uplinks:
      isp0: {interface: eth1, gateway: 10.0.0.1, nat: {snat: 10.0.0.2}}
    hosts:
      r1: {}
      r2:
        uplinks:
          isp0: {interface: eth2}

The entry named after this host is merged into the config before it is validated:
mappings merge key by key, anything else (a list, a value) replaces what the config
says. The host is `$MARKROUTE_HOST` when set, else the first label of the host name
(what keepalived's config id defaults to). Every key keeps its own position, so an
error in an override is reported at the override's line. A config with `hosts:` must
name this host (an empty entry is fine): a misspelt host name would otherwise run the
other router's config without a word.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from dataclasses import replace

from markroute.config.source import Node
from markroute.diagnostics import Diagnostics

KEY = "hosts"


def this_host() -> str:
    """`$MARKROUTE_HOST`, else the host name up to its first dot."""
    return os.environ.get("MARKROUTE_HOST") or socket.gethostname().split(".")[0]


def select(
    root: Node, diag: Diagnostics, allowed: tuple[str, ...], suggest: Callable[[str, tuple[str, ...]], str | None]
) -> Node:
    """ROOT with this host's entry of `hosts:` merged in (ROOT itself when it has none).

    ALLOWED: the top-level keys an entry may override. Errors go to DIAG.
    """
    node = root.items.get(KEY)
    if node is None:
        return root
    items = {key: value for key, value in root.items.items() if key != KEY}
    base = replace(root, items=items)
    if node.kind != "map":
        diag.error(node.where, f"{KEY} must be a mapping of host names to overrides, not {node.describe()}",
                   "hosts: {r1: {}, r2: {uplinks: {isp0: {interface: eth2}}}}")
        return base
    for name, entry in node.items.items():
        if entry.kind == "scalar" and entry.scalar is None:
            continue  # `r1:` with nothing: no overrides
        if entry.kind != "map":
            diag.error(entry.where, f"hosts.{name} must be a mapping of overrides, not {entry.describe()}")
            continue
        for key in entry.items:
            if key not in allowed:
                hint = suggest(key, allowed)
                diag.error(entry.key_where.get(key, entry.where), f"hosts.{name} cannot override '{key}'",
                           hint or f"an override holds top-level keys: {', '.join(allowed)}")
    host = this_host()
    if host not in node.items:
        names = ", ".join(node.items) or "none"
        diag.error(root.key_where.get(KEY, node.where), f"{KEY} has no entry for this host '{host}' (it names {names})",
                   "add one (it may be empty: 'NAME: {}'), or set MARKROUTE_HOST to the entry to use")
        return base
    entry = node.items[host]
    if entry.kind != "map":
        return base
    return merge(base, replace(entry, items={k: v for k, v in entry.items.items() if k in allowed}))


def merge(base: Node, override: Node) -> Node:
    """OVERRIDE over BASE: mappings key by key, everything else replaced."""
    if base.kind != "map" or override.kind != "map":
        return override
    items = dict(base.items)
    key_where = dict(base.key_where)
    for key, value in override.items.items():
        items[key] = merge(items[key], value) if key in items else value
        key_where[key] = override.key_where.get(key, value.where)
    return replace(base, items=items, key_where=key_where, odd_keys={**base.odd_keys, **override.odd_keys})
