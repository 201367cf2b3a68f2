"""The C parser (ruamel.yaml.clib) reads configs into the same `Node`s as the pure parser (issue 15).

`config/source.py` builds a plain document straight from the C parser's events, composes
with the C parser what that declines (anchors, aliases, tags, merge keys, odd keys), and
falls back to the pure parser on errors, directives and deep nesting; these tests hold the
three paths to the same tree and the same diagnostics, on every config kept in the tree
and on random documents.
"""

from __future__ import annotations

import ast
import gc
import random
import subprocess
import sys
from pathlib import Path

import pytest
from kernelhelp import REPO

from markroute.config import source
from markroute.config.source import Node, SourceError


def read(text: str, path: str, monkeypatch: pytest.MonkeyPatch) -> Node | str:
    """The tree, or the rendered error, of TEXT read the way PATH says (the ones before it turned off)."""
    with monkeypatch.context() as patch:
        if path != "events":
            patch.setattr(source, "_read_events_in_c", lambda text, path: None)
        if path == "pure":
            patch.setattr(source, "_compose_in_c", lambda text: (False, None))
        try:
            return source.parse(text, "config.yaml")
        except SourceError as exc:
            return exc.diagnostic.render()


def kept_configs() -> list[str]:
    """Every config file in the tree and every config-looking string in the tests."""
    texts = [p.read_text(errors="replace") for g in ("examples/*.yaml", "markroute/lab/*.yaml", "tests/broken/*.yaml")
             for p in sorted(REPO.glob(g))]
    for path in sorted((REPO / "tests").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and "uplinks:" in node.value:
                texts.append(node.value)
    return texts


def test_every_kept_config_reads_the_same_on_every_path(monkeypatch: pytest.MonkeyPatch) -> None:
    texts = kept_configs()
    assert len(texts) > 100
    built_from_events = composed_in_c = 0
    for text in texts:
        pure = read(text, "pure", monkeypatch)
        assert read(text, "composed", monkeypatch) == pure, text
        assert read(text, "events", monkeypatch) == pure, text
        built_from_events += source._read_events_in_c(text, "config.yaml") is not None
        composed_in_c += source._compose_in_c(text)[0]
    # the fast paths are the ones taken for ordinary configs
    assert built_from_events > len(texts) // 2 and composed_in_c > len(texts) // 2


@pytest.mark.parametrize("text", [
    "a: &x 1\nb: *x\n", "a: !!str 1\n", "base: &b {k: 1}\nx: {<<: *b, j: 2}\n", "1: x\n", "? [a]\n: x\n",
    "a: 1\na: 2\n", "--- {a: 1}\n--- {b: 2}\n", "a: \"\\ud800\"\n", "a: 2001-13-45\n",
    "uplinks: " + "[" * 64 + "x" + "]" * 64 + "\n",
])
def test_what_the_event_builder_declines_the_composer_reads(text: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Anchors, aliases, tags, merge keys, keys that are not text, duplicate keys, a second document,
    half a surrogate, a value the constructor refuses and `_Builder`'s depth limit: each goes to the
    composer, which reads or words it as before."""
    assert source._read_events_in_c(text, "config.yaml") is None
    assert read(text, "events", monkeypatch) == read(text, "pure", monkeypatch)


def test_the_event_builder_places_empty_values_at_their_key() -> None:
    root = source._read_events_in_c("a:\nb:\n  - \n  -\nc: {d: }\n", "config.yaml")
    assert root is not None
    assert (root.items["a"].where.line, root.items["a"].where.col) == (1, 1)
    assert [(e.scalar, e.where.line) for e in root.items["b"].elements] == [(None, 3), (None, 4)]
    assert root.items["c"].items["d"].where == root.items["c"].key_where["d"]


SCALARS = ("a", "yes", "no", "on", "true", "False", "null", "~", "0o17", "017", "0x1f", "1_000", "1e3", ".inf",
           "-.nan", "12:30", "'quoted'", '"dq \\t"', '"\\u00e9"', "2001:db8::1", "10.0.0.0/8", "'@s'", "\"\"", "",
           "-1", "+2", "3.5", "x y", "'it''s'", "é", "0b101")


def random_value(rng: random.Random, depth: int, anchors: list[str]) -> str:
    """A random flow-style YAML value using the scalars above, anchors, aliases and merge keys."""
    roll = rng.random()
    if depth > 3 or roll < 0.5:
        if anchors and rng.random() < 0.1:
            return "*" + rng.choice(anchors)
        return rng.choice(SCALARS)
    if roll < 0.75:
        return "[" + ", ".join(random_value(rng, depth + 1, anchors) for _ in range(rng.randrange(4))) + "]"
    pairs = [f"k{rng.randrange(6)}: {random_value(rng, depth + 1, anchors)}" for _ in range(rng.randrange(4))]
    if anchors and rng.random() < 0.2:
        pairs.append("<<: *" + rng.choice(anchors))
    return "{" + ", ".join(pairs) + "}"


def random_block(rng: random.Random, indent: int, anchors: list[str]) -> list[str]:
    """Lines of a block mapping or list, with nested blocks, block scalars and comments among them."""
    lines: list[str] = []
    listed = rng.random() < 0.3
    for index in range(rng.randrange(1, 6)):
        lead = " " * indent + ("- " if listed else f"{rng.choice(['key', 'uplinks', 'x'])}{index % 5}: ")
        roll = rng.random()
        if roll < 0.15 and indent < 8:
            lines.append(lead.rstrip() if not listed else " " * indent + "-")
            lines += random_block(rng, indent + 2, anchors)
        elif roll < 0.22:
            lines += [lead + rng.choice(["|", ">-", "|+"]), " " * (indent + 2) + "text: [not, parsed]", ""]
        else:
            value = random_value(rng, 0, anchors)
            if rng.random() < 0.3 and not value.startswith("*"):
                anchors.append(f"a{indent}x{index}")
                value = f"&a{indent}x{index} {value}"
            lines.append(lead + value + rng.choice(["", "", " # comment: [x]"]))
    return lines


def random_document(rng: random.Random) -> str:
    """A block mapping of random values, some anchored; sometimes broken by a stray character."""
    text = "\n".join(random_block(rng, 0, [])) + "\n"
    if rng.random() < 0.3:  # a syntax error somewhere
        at = rng.randrange(len(text))
        text = text[:at] + rng.choice(["\t", "]", "{", ": ", "'", "\"", "- ", "\x07", "&", "*", "%"]) + text[at:]
    return text


def test_random_documents_read_the_same_on_every_path(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = random.Random(15)
    for _ in range(1500):
        text = random_document(rng)
        pure = read(text, "pure", monkeypatch)
        assert read(text, "composed", monkeypatch) == pure, text
        assert read(text, "events", monkeypatch) == pure, text


def test_nesting_too_deep_for_the_c_composer_is_an_error_not_a_crash(tmp_path: Path) -> None:
    """libyaml's composer recurses in C; a million levels would overflow the stack without the depth check."""
    config = tmp_path / "deep.yaml"
    config.write_text("uplinks: " + "[" * 1_000_000 + "]" * 1_000_000 + "\n")
    result = subprocess.run([sys.executable, "-m", "markroute", "check", "-c", str(config)], cwd=REPO,
                            capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 1, result.stderr[-2000:]
    assert "YAML: the document is nested too deeply" in result.stderr
    assert "Traceback" not in result.stderr


def test_reading_leaves_no_per_scalar_garbage_for_the_paused_collector() -> None:
    """ruamel's loader lives in reference cycles; its memo and caches must not keep a value per scalar there."""
    text = "policies:\n" + "".join(f"  - {{name: p{i}, dport: {i + 1}, to: 10.0.{i % 256}.{i // 256}}}\n"
                                  for i in range(3000))
    enabled = gc.isenabled()
    gc.disable()
    try:
        gc.collect()
        root = source.parse(text, "config.yaml")
        left = gc.collect()
    finally:
        if enabled:
            gc.enable()
    assert len(root.items["policies"].elements) == 3000
    assert left < 1000, f"{left} objects of the parse were left to the cycle collector"
