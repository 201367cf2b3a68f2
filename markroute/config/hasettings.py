"""`settings.ha` alone, for keepalived's hook (`markroute ha`): fast, and deaf to the rest of the file.

The hook runs on every takeover, between keepalived moving the addresses and the
connections being committed, so its start-up is part of every flow's gap: validating the
whole config (its warnings run the trace interpreter) would add most of a second. And an
error elsewhere in the file (say, an edit not yet applied) must not stop a takeover. So
the hook reads the YAML, applies this host's `hosts:` entry and validates `settings.ha`
only; `markroute check` and `apply` validate the rest.
"""

from __future__ import annotations

from markroute.config import hosts
from markroute.config.reader import Reader, suggest
from markroute.config.settings import read_ha_settings
from markroute.config.source import SourceError, load
from markroute.config.validator import HOST_KEYS
from markroute.diagnostics import Diagnostic
from markroute.model import HaSettings


def load_ha_settings(path: str) -> tuple[HaSettings | None, list[Diagnostic]]:
    """The config's `settings.ha` (None with an error when it is missing or wrong)."""
    try:
        root = load(path)
    except SourceError as exc:
        return None, [exc.diagnostic]
    reader = Reader(path)
    if root.kind != "map":
        reader.diag.error(root.where, "the config is not a mapping")
        return None, reader.diag.sorted()
    root = hosts.select(root, reader.diag, HOST_KEYS, suggest)
    settings = root.items.get("settings")
    node = settings.items.get("ha") if settings is not None and settings.kind == "map" else None
    if node is None:
        where = settings.where if settings is not None else root.where
        reader.diag.error(where, "the config has no settings.ha: this router is not one of an HA pair",
                          "add settings: {ha: {conntrackd: /etc/conntrackd/conntrackd.conf}}")
        return None, reader.diag.sorted()
    ha = read_ha_settings(reader, node)
    return (None if reader.diag.errors else ha), reader.diag.sorted()
