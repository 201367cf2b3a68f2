"""Reading and validating markroute.yaml into a `Model`: the sections in order, then the model.

Validation never stops at the first problem: every mistake becomes a diagnostic with the
file, line and column where it was written, so `markroute check` shows them all at once.
Only when there is no error is a `Model` built.

A mistake is reported once, where it was made: an uplink, group or set that is itself
invalid is remembered as broken, and later references to it are skipped silently
instead of being called "unknown".

Each section is read by its own module (`settings`, `sets`, `uplinks`, `allocation`,
`groups`, `policies`) with the helpers of `reader.Reader`; the `Validator` runs them in
order and reads MATCH mappings, the one part every section that filters traffic shares.
"""

from __future__ import annotations

from typing import Any

from markroute import match as match_keys
from markroute.config import hosts
from markroute.config.allocation import allocate
from markroute.config.groups import read_groups
from markroute.config.policies import read_policies
from markroute.config.reader import Reader, suggest
from markroute.config.sets import SetFiles, read_sets, warn_unused_sets
from markroute.config.settings import read_settings
from markroute.config.source import Node, SourceError, load
from markroute.config.uplinks import read_uplinks
from markroute.config.warnings import model_warnings
from markroute.diagnostics import Diagnostic, Where
from markroute.match import NOT, MatchKey
from markroute.model import (
    Addresses,
    DynamicSet,
    Match,
    Model,
)
from markroute.values import (
    AddressList,
    Interval,
    yaml_text,
)

TOP_KEYS = ("uplinks", "groups", "policies", "sets", "settings", hosts.KEY)
HOST_KEYS = TOP_KEYS[:-1]  # what a `hosts:` entry may override
MATCH_KEYS = match_keys.YAML_KEYS
POLICY_KEYS = ("name", "via", "log", *MATCH_KEYS)


def load_model(path: str, set_files: SetFiles | None = None) -> tuple[Model | None, list[Diagnostic]]:
    """Parse and validate; the model is None when any error was found.

    SET_FILES: the set files a long-lived caller (the daemon) read before, taken from
    there while unchanged (`sets.SetFiles`)."""
    try:
        root = load(path)
    except SourceError as exc:
        return None, [exc.diagnostic]
    return Validator(path, set_files).run(root)


class Validator(Reader):
    """Runs the sections over the YAML tree once, collecting diagnostics and the pieces of the model."""

    def __init__(self, path: str, set_files: SetFiles | None = None) -> None:
        super().__init__(path)
        self.set_files = set_files
        self.sets: dict[str, AddressList] = {}
        self.set_where: dict[str, Where] = {}
        self.used_sets: set[str] = set()
        self.dynamic_sets: dict[str, DynamicSet] = {}

    def run(self, root: Node) -> tuple[Model | None, list[Diagnostic]]:
        if root.kind == "map" and not root.items and not root.odd_keys:
            self.diag.error(root.where, "the config is empty",
                            "start with 'uplinks:' and describe at least one way out: interface and gateway")
            return None, self.diag.sorted()
        if not self.kind(root, "map", "the config"):
            return None, self.diag.sorted()
        self.odd_keys(root)
        self.known_keys(root, TOP_KEYS, "the top level")
        root = hosts.select(root, self.diag, HOST_KEYS, suggest)
        settings = read_settings(self, root.items.get("settings"))
        declared = read_sets(self, root.items.get("sets"), self.set_files)
        self.sets, self.set_where = declared.addresses, declared.where
        self.dynamic_sets = declared.dynamic
        drafts = read_uplinks(self, root.items.get("uplinks"), root, self.match)
        allocated = allocate(self.diag, drafts.drafts, settings)
        uplinks = allocated.uplinks
        broken = drafts.broken | allocated.broken  # declared but invalid: reported already
        section = read_groups(self, root.items.get("groups"), uplinks, broken)
        groups = section.groups
        policies = read_policies(self, root.items.get("policies"), uplinks, groups, broken | section.broken,
                                 self.match, POLICY_KEYS)
        if self.diag.errors:
            return None, self.diag.sorted()
        model = Model(uplinks, groups, tuple(policies), dict(self.sets), settings, dict(self.dynamic_sets))
        warn_unused_sets(self, self.set_where, self.used_sets)
        for where, message, hint in model_warnings(model):
            self.diag.warning(where, message, hint)
        return model, self.diag.sorted()

    # -- matches ----------------------------------------------------------------------

    def match(self, node: Node, what: str, keys_checked: bool = False) -> Match | None:
        """A MATCH mapping, each key read as its `MatchKey` says.

        `keys_checked`: the mapping is shared with the caller's own keys (a policy's `name`
        and `via`), and the caller has already reported the unknown ones.
        """
        if not self.kind(node, "map", what):
            return None
        if not keys_checked:
            self.known_keys(node, MATCH_KEYS, what)
        ok = True
        fields: dict[str, Any] = {}
        items = node.items
        for key in match_keys.KEYS:
            if key.key in items:
                fields[key.field] = self.match_value(key, items[key.key])
                ok &= fields[key.field] is not None
        if NOT in items:
            fields["negated"] = self.negation(items[NOT])
            ok &= fields["negated"] is not None
        if not ok:
            return None
        result = Match(**fields)
        return result if self.consistent(result, node) else None

    def match_value(self, key: MatchKey, node: Node) -> Any:
        """The value of one match key, or None when it was reported as wrong."""
        what = f"'{key.key}'"
        if key.read == "addresses":
            return self.addresses(node, what, key)
        if key.read == "one":
            value = self.scalar(node, what, key.parse)
            return None if value is None else key.collect([value])
        values = self.one_or_many(node, what, key.parse)
        return key.collect(values) if values else None

    def negation(self, node: Node) -> Match | None:
        negated = self.match(node, f"'{NOT}'")
        if negated is None:
            return None
        if negated.is_empty:
            if not node.items:  # otherwise its unknown keys were reported
                self.diag.error(node.where, "'not' with no conditions would never match")
            return None
        if negated.negated is not None:
            self.diag.error(node.items[NOT].where, "'not' inside 'not' is not supported",
                            "write the doubly negated condition directly")
            return None
        for key in match_keys.KEYS:
            if key.in_not is not None and key.value(negated) is not None:
                self.diag.error(node.items[key.key].where, *key.in_not)
                return None
        return negated

    def consistent(self, match: Match, node: Node) -> bool:
        """Reject combinations no packet can satisfy, at the key that makes them so."""
        items = node.items
        for key in match_keys.KEYS:
            problem = key.needs(match) if key.needs is not None else None
            if problem is not None:
                self.diag.error(items[key.key].where, *problem)
                return False
        if not match.versions:
            self.diag.error(
                node.where,
                "this match mixes IPv4 and IPv6 so no packet can satisfy it",
                "split it into one policy per family",
            )
            return False
        if match.local is True:
            for key in match_keys.KEYS:
                value = key.value(match)
                if value and not key.applies(value, True):
                    self.diag.error(
                        items[key.key].where,
                        f"'{key.key}' never matches router-originated traffic (local: true)",
                        "remove one of them",
                    )
                    return False
        return True

    def addresses(self, node: Node, what: str, key: MatchKey) -> Addresses | None:
        """A `from`/`to` list; `@name` elements are resolved against `sets:` here, the rest by `key.parse`."""
        elements = node.elements if node.kind == "seq" else [node]
        if node.kind == "map" or (node.kind == "seq" and not elements):
            self.diag.error(node.where, f"{what} must be an address, prefix, range, @set or a non-empty list of them")
            return None
        items: list[tuple[int, Interval]] = []
        set_names: list[str] = []
        ok = True
        for element in elements:
            text = self.scalar(element, what, yaml_text)
            if text is None:
                ok = False
                continue
            if text.startswith("@"):
                name = text[1:]
                self.used_sets.add(name)
                if name not in self.sets:
                    ok = False
                    if name not in self.set_where:  # a broken set was reported where it is defined
                        self.diag.error(element.where, f"unknown set '@{name}'",
                                        suggest(name, list(self.set_where)) or "define it under 'sets:'")
                    continue
                set_names.append(name)
                if len(elements) > 1:  # alone, the set is used as it is (below): no copy of its 1,000,000 intervals
                    items += [(4, iv) for iv in self.sets[name].v4] + [(6, iv) for iv in self.sets[name].v6]
                continue
            try:
                items.append(key.parse(element.scalar))
            except ValueError as exc:
                self.diag.error(element.where, f"{what}: {exc}")
                ok = False
        if not ok:
            return None
        if len(elements) == 1 and set_names:
            return Addresses(self.sets[set_names[0]], set_names[0], dynamic=set_names[0] in self.dynamic_sets)
        if any(name in self.dynamic_sets for name in set_names):
            self.diag.error(node.where, f"{what}: a dynamic set must be used alone, its elements are not known here",
                            "write one policy for the set and one for the other addresses")
            return None
        collected: Addresses = key.collect(items)
        return collected
