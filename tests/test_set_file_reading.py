"""Reading a big set file without holding it several times: the pieces must change nothing.

`config.sets._lines` splits the file a piece at a time and `values.merge` keeps the
tuples nothing joins; both exist for memory (a 1,000,000-prefix apply), so these tests
check they give exactly what the plain forms give: the same lines, numbers and intervals.
"""

from __future__ import annotations

import random
from pathlib import Path

from markroute import values as v
from markroute.config import load_model
from markroute.config.sets import _pieces

PIECES = ["a", "10.0.0.0/8", "\n", "\r", "\r\n", "\x0c", "\u2028", "\x1c", "", " # c"]


def test_lines_in_pieces_are_the_lines_of_the_whole() -> None:
    """Any text, cut at any piece size: the same lines as `str.splitlines`, in order."""
    rng = random.Random(7)
    for _ in range(3000):
        text = "".join(rng.choice(PIECES) for _ in range(rng.randrange(40)))
        for chunk in (1, 2, 3, 7, 1 << 20):
            assert [line for piece in _pieces(text, chunk) for line in piece.splitlines()] == text.splitlines(), (text, chunk)


def test_merge_keeps_the_tuples_nothing_joins() -> None:
    intervals = [(40, 40), (1, 3), (4, 5), (10, 20), (15, 30), (50, 60)]
    merged = v.merge(intervals)
    assert merged == ((1, 5), (10, 30), (40, 40), (50, 60))
    assert merged[2] is intervals[0] and merged[3] is intervals[5]


def test_a_bad_line_deep_in_a_big_file_is_reported_at_its_line(tmp_path: Path) -> None:
    """A file of several pieces (over a megabyte): the line number of a mistake and the
    intervals read are what a one-piece read gives."""
    lines = [f"10.{i >> 8 & 255}.{i & 255}.0/24" for i in range(120_000)]
    lines[99_999] = "  10.0.0.1/8"  # host bits set, indented: column 3
    (tmp_path / "big.txt").write_text("\r\n".join(lines) + "\n")
    (tmp_path / "markroute.yaml").write_text(
        "uplinks:\n  a: {interface: wan0, gateway: 10.0.0.1}\n  b: {interface: wan1, gateway: 10.0.1.1}\n"
        "sets:\n  big: {file: big.txt}\npolicies:\n  - {name: p, to: \"@big\", via: b}\n")
    assert len((tmp_path / "big.txt").read_bytes()) > 1 << 20
    model, diagnostics = load_model(str(tmp_path / "markroute.yaml"))
    assert model is None
    bad = [d for d in diagnostics if d.where.file.endswith("big.txt")]
    assert [(d.where.line, d.where.col) for d in bad] == [(100_000, 3)], [d.render() for d in diagnostics]
    lines[99_999] = "10.0.0.0/8"
    (tmp_path / "big.txt").write_text("\r\n".join(lines) + "\n")
    model, _ = load_model(str(tmp_path / "markroute.yaml"))
    assert model is not None
    assert model.sets["big"].v4 == v.merge([v.parse_address(line)[1] for line in lines])
