"""YAML loading that keeps the line and column of every key and value.

Validation needs positions for every value (a bad address is reported where it is
written), so the document is only composed by ruamel (which marks every node with its
position, and is about twice as fast as building its round-trip objects) and turned into
a small tree of `Node`s here. ruamel's C parser (ruamel.yaml.clib) composes valid
documents; anything it refuses is read again by the pure parser, whose wording the
error messages below are written for.

Nothing a user can put in the file escapes as an exception: unreadable files, text that
is not UTF-8 and YAML syntax errors become one `SourceError` with the position and a
plain-words explanation, because ruamel's own wording ("expected <block end>") rarely
tells an admin what to change.
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from markroute.diagnostics import Diagnostic, Where


@dataclass
class Node:
    """A YAML value with its position; `kind` is 'map', 'seq' or 'scalar'.

    `odd_keys` holds the keys of a mapping that were not text (numbers, null, lists),
    spelled as YAML would print them; they are left out of `items` and reported once.
    """

    kind: str
    where: Where
    scalar: Any = None
    items: dict[str, Node] = field(default_factory=dict)
    key_where: dict[str, Where] = field(default_factory=dict)
    elements: list[Node] = field(default_factory=list)
    odd_keys: dict[str, Where] = field(default_factory=dict)

    def describe(self) -> str:
        """A short name for the value's type, for 'expected X, got Y' messages."""
        if self.kind != "scalar":
            return {"map": "a mapping", "seq": "a list"}[self.kind]
        if self.scalar is None:
            return "nothing (null)"
        return {bool: "a boolean", int: "a number", float: "a number", str: "text"}.get(
            type(self.scalar), type(self.scalar).__name__
        )


class SourceError(Exception):
    """The file cannot be read or is not YAML; holds the one diagnostic saying why."""

    def __init__(self, diagnostic: Diagnostic) -> None:
        super().__init__(diagnostic.render())
        self.diagnostic = diagnostic


def load(path: str) -> Node:
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise SourceError(
            Diagnostic(Where(path, 1, 1), "error", f"cannot read config: {exc.strerror or exc}")
        ) from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SourceError(
            Diagnostic(
                byte_position(path, data, exc.start),
                "error",
                f"config is not UTF-8 text (byte {data[exc.start]:#04x})",
                "save the file as UTF-8",
            )
        ) from None
    return parse(text, path)


def byte_position(path: str, data: bytes, offset: int) -> Where:
    """The line and column (counted in bytes) of a byte offset, for undecodable input."""
    line_start = data.rfind(b"\n", 0, offset) + 1
    return Where(path, data.count(b"\n", 0, offset) + 1, offset - line_start + 1)


def parse(text: str, path: str) -> Node:
    """The document as a `Node` tree; ruamel only composes it, the values are built here."""
    from ruamel.yaml import YAML
    from ruamel.yaml.error import MarkedYAMLError, YAMLError
    from ruamel.yaml.reader import ReaderError

    yaml = YAML(typ="safe", pure=True)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. a reused anchor: legal YAML, not worth a warning dump
            root = _read_events_in_c(text, path)
            if root is not None:
                return root
            composed, document = _compose_in_c(text)
            if not composed:
                document = yaml.compose(text)
    except MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        message, hint = explain_yaml_error(str(exc.problem or exc.context or "invalid YAML"))
        raise SourceError(Diagnostic(Where(path, line, col), "error", message, hint)) from None
    except ReaderError as exc:  # a control character: positioned by character offset only
        before = text[:exc.position]
        where = Where(path, before.count("\n") + 1, exc.position - (before.rfind("\n") + 1) + 1)
        code = exc.character if isinstance(exc.character, int) else ord(exc.character)
        message = f"YAML: the control character U+{code:04X} is not allowed"
        raise SourceError(Diagnostic(where, "error", message, "remove it; YAML files are plain text")) from None
    except YAMLError as exc:
        raise SourceError(Diagnostic(Where(path, 1, 1), "error", f"YAML: {exc}")) from None
    except RecursionError:  # ruamel's parser recurses once per level of [ or {
        raise SourceError(Diagnostic(Where(path, 1, 1), "error", "YAML: the document is nested too deeply",
                                     f"no config needs more than {_Builder.MAX_DEPTH} levels")) from None
    if document is None:
        return Node("map", Where(path, 1, 1))
    root = _Builder(path, yaml.constructor).build(document)
    yaml.constructor.constructed_objects.clear()  # see `_compose_in_c`: kept in a cycle, one entry per number
    return root


# What the two parsers read differently, so the pure parser reads it: a directive (the C
# parser does not hand `%YAML 1.1` on to the resolver), a tab (the pure parser refuses
# some that libyaml takes, e.g. inside a plain key) and an anchor or alias whose name
# has a character libyaml's names cannot hold (`&key:` is an anchor named "key:" in YAML 1.2).
_PURE_ONLY = re.compile(r"^%|\t|[&*][A-Za-z0-9_-]*[^A-Za-z0-9_\s,\[\]{}-]", re.MULTILINE)


class _Declined(Exception):
    """The document holds something `_read_events_in_c` leaves to the composer and `_Builder`."""


def _read_events_in_c(text: str, path: str) -> Node | None:
    """The `Node` tree built straight from the C parser's events, or None when the composer must
    read the document (`_compose_in_c`, or the pure parser after it).

    Composing first builds a ruamel node per value (50,000 at 10,000 policies) only for
    `_Builder` to walk them once more; the events carry the same values, tags and
    positions, and their order is the tree's. So a plain document, the kind admins write,
    is built in one pass: mappings with text keys, lists and untagged scalars, resolved
    as the composer resolves them (the same resolver and constructor) and placed where
    `_Builder` places them (an empty value at its key). Anything else declines: an anchor,
    alias, explicit tag, merge key, key that is not text, duplicate key, a second
    document, `_Builder`'s depth limit, a half surrogate, or any parse error; the composer
    then reads the whole text again and words every error as before.
    """
    from ruamel.yaml import YAML
    from ruamel.yaml.events import (
        AliasEvent,
        DocumentStartEvent,
        MappingEndEvent,
        MappingStartEvent,
        ScalarEvent,
        SequenceEndEvent,
        SequenceStartEvent,
        StreamEndEvent,
    )
    from ruamel.yaml.main import CParser
    from ruamel.yaml.nodes import ScalarNode

    if CParser is None or _PURE_ONLY.search(text):
        return None
    yaml = YAML(typ="safe", pure=False)
    memo: dict[tuple[Any, ...], Any] = {}
    yaml.Resolver = _memo_resolver(memo)
    _, loader = yaml.get_constructor_parser(text)  # parser, resolver and constructor in one (ruamel's C loader)
    resolve, construct = loader.resolve, loader.construct_object
    seen: dict[tuple[str, Any], tuple[str, Any]] = {}  # (text, implicit) -> (tag, value): most scalars repeat
    open_nodes: list[Node] = []
    keys: list[tuple[str, Where] | None] = []  # per open node: a mapping's key waiting for its value
    root: Node | None = None
    documents = 0
    try:
        while True:
            event = loader.get_event()
            kind = type(event)
            if kind is StreamEndEvent:
                break
            if kind is MappingEndEvent or kind is SequenceEndEvent:
                open_nodes.pop()
                keys.pop()
                continue
            if kind is ScalarEvent or kind is MappingStartEvent or kind is SequenceStartEvent:
                if event.anchor is not None or event.tag is not None or len(open_nodes) >= _Builder.MAX_DEPTH:
                    raise _Declined
                mark = event.start_mark
                where = Where(path, mark.line + 1, mark.column + 1)
                if kind is ScalarEvent:
                    known = seen.get((event.value, event.implicit))
                    if known is None:
                        known = seen[(event.value, event.implicit)] = _scalar_value(event, resolve, construct, ScalarNode)
                    tag, value = known
                    if open_nodes and open_nodes[-1].kind == "map" and keys[-1] is None:  # a key
                        if tag == _MERGE or not isinstance(value, str) or value in open_nodes[-1].items:
                            raise _Declined
                        keys[-1] = (value, where)
                        continue
                    if tag == _NULL and not event.value and keys and keys[-1] is not None:
                        where = keys[-1][1]  # an empty value has no text of its own: its key's position
                    built = Node("scalar", where, scalar=value)
                else:
                    if open_nodes and open_nodes[-1].kind == "map" and keys[-1] is None:
                        raise _Declined  # a list or mapping as a key
                    built = Node("map" if kind is MappingStartEvent else "seq", where)
                if not open_nodes:
                    root = built
                elif open_nodes[-1].kind == "seq":
                    open_nodes[-1].elements.append(built)
                else:
                    key, key_where = keys[-1]  # type: ignore[misc]
                    open_nodes[-1].key_where[key] = key_where
                    open_nodes[-1].items[key] = built
                    keys[-1] = None
                if kind is not ScalarEvent:
                    open_nodes.append(built)
                    keys.append(None)
            elif kind is AliasEvent:
                raise _Declined
            elif kind is DocumentStartEvent:
                documents += 1
                if documents > 1:
                    raise _Declined  # the composer says there is more than one
    except Exception:  # _Declined, or the parser's own error: the composer reads it again and words it
        return None
    finally:
        loader.dispose()
        memo.clear()
        loader.constructed_objects.clear()
    return root if root is not None else Node("map", Where(path, 1, 1))


def _scalar_value(event: Any, resolve: Any, construct: Any, scalar_node: type) -> tuple[str, Any]:
    """An untagged scalar event's tag and value, resolved and constructed as the composer and `_Builder` do
    (SCALAR_NODE: ruamel's class, imported once per document); _Declined for half a surrogate pair
    (`_Builder.scalar` words that error)."""
    tag = resolve(scalar_node, event.value, event.implicit)
    text = str(tag)  # ruamel's Tag compares through a property: compared as text from here on
    if text == _STR:
        if _SURROGATE.search(event.value):
            raise _Declined
        return text, event.value
    node = scalar_node(tag, event.value, event.start_mark, event.end_mark, style=event.style)
    return text, _plain(construct(node, deep=True))


_STR, _NULL, _MERGE = "tag:yaml.org,2002:str", "tag:yaml.org,2002:null", "tag:yaml.org,2002:merge"


def _compose_in_c(text: str) -> tuple[bool, Any]:
    """(True, the document) as ruamel's C parser (libyaml) composes it, or (False, None)
    when the pure parser must read the text instead.

    The C parser composes a 10,000-policy config several times faster, into the same
    nodes with the same positions. It is not used where it could differ from the pure
    parser: on any error (the pure parser words it, as the messages above expect), for
    text `_PURE_ONLY` finds, and for collections nested deeper than `_Builder.MAX_DEPTH` (libyaml's
    composer recurses in C: a deep enough document would crash the interpreter, not
    raise). The depth is counted on the parse events first, which are not recursive.
    """
    from ruamel.yaml import YAML
    from ruamel.yaml.events import CollectionEndEvent, CollectionStartEvent
    from ruamel.yaml.main import CParser

    if CParser is None or _PURE_ONLY.search(text):
        return False, None
    yaml = YAML(typ="safe", pure=False)
    memo: dict[tuple[Any, ...], Any] = {}
    yaml.Resolver = _memo_resolver(memo)
    depth = 0
    try:
        for event in yaml.parse(text):
            if isinstance(event, CollectionStartEvent):
                depth += 1
                if depth > _Builder.MAX_DEPTH:
                    return False, None
            elif isinstance(event, CollectionEndEvent):
                depth -= 1
        return True, yaml.compose(text)
    except Exception:  # whatever it is, the pure parser reads the text again and words it
        return False, None
    finally:
        # ruamel's loader and its parts refer to each other, so they are freed by the
        # cycle collector, which a command of a big config pauses (`cliutil`): emptied
        # here, the memo's tuple per distinct scalar is not left for it to walk at exit.
        memo.clear()


def _memo_resolver(memo: dict[tuple[Any, ...], Any]) -> type:
    """ruamel's resolver, remembering each plain scalar's tag for the rest of the document.

    Resolving a scalar (is `443` an int, `yes` a string?) runs ruamel's version lookup
    and regular expressions again for every one of a 10,000-policy config's 70,000
    scalars, though most are the same few keys and names. The answer depends only on
    the text and how it was written: the C parser reads every document as YAML 1.2
    (a `%YAML` directive goes to the pure parser) and no path resolvers are set.
    MEMO holds the answers, for one document.
    """
    from ruamel.yaml.resolver import VersionedResolver

    class MemoResolver(VersionedResolver):  # type: ignore[misc]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.resolved_tags = memo
            self.implicit_table: Any = None

        @property
        def versioned_resolver(self) -> Any:  # one version per document: looked up once, not twice a scalar
            if self.implicit_table is None:
                self.implicit_table = super().versioned_resolver
            return self.implicit_table

        def resolve(self, kind: Any, value: Any, implicit: Any) -> Any:
            key = (kind, value, implicit)
            tag = self.resolved_tags.get(key)
            if tag is None:
                tag = self.resolved_tags[key] = super().resolve(kind, value, implicit)
            return tag

    return MemoResolver


_YAML_PROBLEMS: tuple[tuple[str, str, str | None], ...] = (
    (r"found character '\\t'", "YAML syntax: a tab character",
     "indent with spaces; YAML does not allow tabs"),
    (r"found character '([@`%])' that cannot start", "YAML syntax: a value cannot start with '{0}'",
     "put the value in quotes, e.g. \"@name\""),
    (r"mapping values are not allowed here", "YAML syntax: unexpected ':'",
     "check this line's indentation, or quote a value that contains ': '"),
    (r"expected <block end>", "YAML syntax: this line's indentation does not fit the lines above",
     "keys of one mapping, and items of one list, must start in the same column"),
    (r"expected ',' or '([\]}])'", "YAML syntax: unclosed bracket, '{0}' expected",
     "close every [ and {{ on the line it belongs to"),
    (r"while scanning a quoted scalar|found unexpected end of stream", "YAML syntax: unclosed quote",
     "end the quoted value with the same quote character"),
    (r"found another document", "YAML syntax: more than one YAML document",
     "markroute reads a single document; remove the '---' line"),
    (r"found undefined alias '?(\w+)", "YAML syntax: alias '*{0}' refers to no anchor",
     "define '&{0}' before using '*{0}'"),
)


def explain_yaml_error(problem: str) -> tuple[str, str | None]:
    """ruamel's problem text turned into a message and hint an admin can act on."""
    for pattern, message, hint in _YAML_PROBLEMS:
        found = re.search(pattern, problem)
        if found:
            groups = found.groups()
            return message.format(*groups), hint.format(*groups) if hint else None
    return f"YAML syntax: {problem}", None


_SURROGATE = re.compile("[\ud800-\udfff]")


class _Builder:
    """Turns composed YAML nodes into `Node`s, with the checks the composer leaves out.

    Duplicate keys and merge keys (`<<:`) are resolved here; aliases are followed, but a
    recursive anchor, an alias bomb (a few lines expanding to millions of values) or
    nesting deeper than Python's stack is an error instead of a hang or a crash.
    """

    MAX_REPEATS = 100_000
    MAX_DEPTH = 64

    def __init__(self, path: str, constructor: Any) -> None:
        from ruamel.yaml.nodes import MappingNode, SequenceNode

        # imported once here, not in `build` and `fill`: 10,000 policies are 50,000 nodes
        self.mapping_node, self.sequence_node = MappingNode, SequenceNode
        self.path = path
        self.constructor = constructor
        self.built: set[int] = set()
        self.repeats = 0
        self.active: set[int] = set()

    def where(self, node: Any) -> Where:
        return Where(self.path, node.start_mark.line + 1, node.start_mark.column + 1)

    def fail(self, node: Any, message: str, hint: str | None = None) -> SourceError:
        return SourceError(Diagnostic(self.where(node), "error", message, hint))

    def build(self, node: Any, where: Where | None = None) -> Node:
        MappingNode, SequenceNode = self.mapping_node, self.sequence_node
        if id(node) in self.built:  # reached again through an alias
            self.repeats += 1
            if self.repeats > self.MAX_REPEATS:
                raise self.fail(node, f"YAML: aliases repeat more than {self.MAX_REPEATS} values",
                                "write the values out")
        self.built.add(id(node))
        if id(node) in self.active:
            raise self.fail(node, "YAML: an alias refers to the value that contains it", "remove the recursion")
        if len(self.active) >= self.MAX_DEPTH:
            raise self.fail(node, "YAML: the document is nested too deeply",
                            f"no config needs more than {self.MAX_DEPTH} levels")
        where = where or self.where(node)
        if isinstance(node, MappingNode):
            self.active.add(id(node))
            result = Node("map", where)
            self.fill(result, node)
            self.active.discard(id(node))
            return result
        if isinstance(node, SequenceNode):
            self.active.add(id(node))
            result = Node("seq", where, elements=[self.build(item) for item in node.value])
            self.active.discard(id(node))
            return result
        return Node("scalar", where, scalar=self.scalar(node))

    def fill(self, result: Node, node: Any, merged: bool = False) -> None:
        """Add a mapping's pairs to `result`; pairs from `<<:` never override the mapping's own."""
        MappingNode, SequenceNode = self.mapping_node, self.sequence_node
        merges: list[Any] = []
        for key_node, value_node in node.value:
            key_tag = key_node.tag  # a str made by a property: read once per node
            if key_tag == "tag:yaml.org,2002:merge":
                merges += value_node.value if isinstance(value_node, SequenceNode) else [value_node]
                continue
            key_where = self.where(key_node)
            key = self.scalar(key_node, key_tag) if not isinstance(key_node, (MappingNode, SequenceNode)) else None
            if not isinstance(key, str):
                result.odd_keys[_key_text(key_node, key)] = key_where
                continue
            if key in result.items:
                if merged:
                    continue
                raise self.fail(key_node, f"YAML syntax: duplicate key '{key}'",
                                "each key may appear only once in a mapping")
            # an empty (null) value has no text of its own: point at its key
            is_null = getattr(value_node, "tag", "") == "tag:yaml.org,2002:null" and not value_node.value
            result.key_where[key] = key_where
            result.items[key] = self.build(value_node, key_where if is_null else None)
        entered = id(node) not in self.active  # a merge is followed like an alias: `x: &x {<<: *x}` must not recurse
        self.active.add(id(node))
        for source in merges:
            if not isinstance(source, MappingNode):
                raise self.fail(source, "YAML: '<<' must merge a mapping or a list of mappings")
            if id(source) in self.active:
                raise self.fail(source, "YAML: '<<' merges the mapping that contains it", "remove the recursion")
            if len(self.active) >= self.MAX_DEPTH:
                raise self.fail(source, "YAML: merge keys are nested too deeply",
                                f"no config needs more than {self.MAX_DEPTH} levels")
            self.fill(result, source, merged=True)
        if entered:
            self.active.discard(id(node))

    def scalar(self, node: Any, tag: str | None = None) -> Any:
        """The value of a scalar as None, bool, int, float or str; TAG is `node.tag` when the caller has it."""
        tag = tag or node.tag
        if tag == "tag:yaml.org,2002:str":
            surrogate = _SURROGATE.search(node.value)
            if surrogate:  # only an escape like "\ud800" makes one; nothing downstream can encode it
                raise self.fail(node, f"YAML: the escape \\u{ord(surrogate.group()):04x} is half of a UTF-16 "
                                      "pair, not a character", "write the character itself, or \\U and 8 digits")
            return node.value
        try:
            value = self.constructor.construct_object(node, deep=True)
        except Exception as exc:  # ruamel raises plain ValueError & co. for e.g. `!!int x`
            text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise self.fail(node, f"YAML: cannot read the value '{node.value}' ({text})",
                            "remove explicit tags like !!int or !foo") from None
        return _plain(value)


def _key_text(node: Any, key: Any) -> str:
    """How a key that is not text was written, for the message that rejects it."""
    from ruamel.yaml.nodes import MappingNode, SequenceNode

    if isinstance(node, SequenceNode):
        return "[" + ", ".join(_key_text(item, getattr(item, "value", None)) for item in node.value) + "]"
    if isinstance(node, MappingNode):
        return "{...}"
    if key is None:
        return "null"
    if isinstance(key, bool):
        return str(key).lower()
    return str(getattr(node, "value", key))


def _plain(value: Any) -> Any:
    """Strip ruamel's scalar subclasses so later code sees None, bool, int, float or str."""
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value)
    return str(value)
