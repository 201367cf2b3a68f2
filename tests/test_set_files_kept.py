"""The daemon's set files read once while unchanged (`config.sets.SetFiles`): what counts as a change.

A reload that took a kept file's addresses although the file changed would route by a
list the admin replaced, so each way a file changes is tried here: replaced, written in
place with another size, written in place with the same size and its time put back
(only the change time tells), and written twice within one timestamp tick (not kept at all).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from markroute.config import load_model
from markroute.config import sets as sets_module
from markroute.config.sets import SetFiles

CONFIG = """
uplinks:
  isp_a: {{interface: wan0, gateway: 10.0.0.1}}
sets:
{sets}
policies:
{policies}
"""


def config(tmp_path: Path, names: tuple[str, ...] = ("lists",)) -> Path:
    path = tmp_path / "markroute.yaml"
    sets = "\n".join(f"  {name}: {{file: {name}.txt}}" for name in names)
    policies = "\n".join(f'  - {{name: p-{name}, to: "@{name}", via: isp_a}}' for name in names)
    path.write_text(CONFIG.format(sets=sets, policies=policies))
    return path


def aged(path: Path, text: str, seconds: float = 60.0) -> None:
    """PATH written with TEXT and dated SECONDS ago: past the racy window, as a list updated last night."""
    path.write_text(text)
    then = time.time() - seconds
    os.utime(path, (then, then))


@pytest.fixture
def reads(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """The set files actually read (opened and parsed), in order."""
    seen: list[Path] = []
    real = sets_module.read_set_file

    def counted(path: Path) -> tuple[bytes, os.stat_result]:
        seen.append(path)
        return real(path)

    monkeypatch.setattr(sets_module, "read_set_file", counted)
    return seen


def prefixes(path: Path, files: SetFiles | None) -> list[tuple[int, int]]:
    model, diagnostics = load_model(str(path), files)
    assert model is not None, diagnostics
    return list(model.sets["lists"].v4)


def test_an_unchanged_file_is_read_once(tmp_path: Path, reads: list[Path]) -> None:
    path = config(tmp_path)
    aged(tmp_path / "lists.txt", "100.64.1.0/24\n")
    files = SetFiles()
    first = prefixes(path, files)
    assert prefixes(path, files) == first == [(0x64400100, 0x644001FF)]
    assert reads == [tmp_path / "lists.txt"]
    prefixes(path, None)  # a reader without SetFiles (the CLI) reads every time
    assert len(reads) == 2


@pytest.mark.parametrize("change", ["replaced", "longer", "same size, time put back"])
def test_a_changed_file_is_read_again(tmp_path: Path, reads: list[Path], change: str) -> None:
    path, lists = config(tmp_path), tmp_path / "lists.txt"
    aged(lists, "100.64.1.0/24\n")
    files = SetFiles()
    prefixes(path, files)
    before = lists.stat()
    if change == "replaced":  # as a download script does: a new file renamed over the old one
        new = tmp_path / "lists.txt.new"
        aged(new, "100.64.2.0/24\n")
        new.replace(lists)
    elif change == "longer":
        with open(lists, "a") as out:
            out.write("100.64.9.0/24\n")
        os.utime(lists, ns=(before.st_atime_ns, before.st_mtime_ns))
    else:
        with open(lists, "r+") as out:  # same inode, same size, same modification time: only ctime moves
            out.write("100.64.2.0/24\n")
        os.utime(lists, ns=(before.st_atime_ns, before.st_mtime_ns))
        after = lists.stat()
        assert (after.st_ino, after.st_size, after.st_mtime_ns) == (before.st_ino, before.st_size, before.st_mtime_ns)
    seen = prefixes(path, files)
    assert len(reads) == 2, change
    assert (0x64400200, 0x644002FF) in seen or (0x64400900, 0x644009FF) in seen, seen


def test_a_file_written_just_now_is_not_kept(tmp_path: Path, reads: list[Path]) -> None:
    """Modified within RACY_NS of being read: a second write in the same timestamp tick, same size,
    could not be told apart, so such a file is read on every load until it has aged."""
    path, lists = config(tmp_path), tmp_path / "lists.txt"
    lists.write_text("100.64.1.0/24\n")
    files = SetFiles()
    prefixes(path, files)
    prefixes(path, files)
    assert len(reads) == 2
    then = time.time() - 60
    os.utime(lists, (then, then))
    prefixes(path, files)
    prefixes(path, files)
    assert len(reads) == 3


def test_a_bad_file_is_reported_every_time(tmp_path: Path, reads: list[Path]) -> None:
    path, lists = config(tmp_path), tmp_path / "lists.txt"
    aged(lists, "100.64.1.0/24\nnot an address\n")
    files = SetFiles()
    for _ in range(2):
        model, diagnostics = load_model(str(path), files)
        assert model is None and any("not an address" in d.message for d in diagnostics), diagnostics
    assert len(reads) == 2 and not files.known


def test_a_file_no_longer_named_is_forgotten(tmp_path: Path, reads: list[Path]) -> None:
    path = config(tmp_path, ("lists", "other"))
    aged(tmp_path / "lists.txt", "100.64.1.0/24\n")
    aged(tmp_path / "other.txt", "100.64.2.0/24\n")
    files = SetFiles()
    prefixes(path, files)
    assert set(files.known) == {tmp_path / "lists.txt", tmp_path / "other.txt"}
    config(tmp_path, ("lists",))
    prefixes(path, files)
    assert set(files.known) == {tmp_path / "lists.txt"}
    assert len(reads) == 2, "lists.txt was kept, other.txt read once"
