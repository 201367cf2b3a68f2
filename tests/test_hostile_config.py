"""Set files and YAML that once hung `check` or ended in a traceback (issue #12, 6 and 7)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from kernelhelp import REPO

from markroute.config import load_model, sets

CONFIG = """\
sets:
  s: {{file: {path}}}
uplinks:
  isp_a: {{interface: eth0, gateway: 192.0.2.1}}
policies:
  - {{name: p, to: "@s", via: isp_a}}
"""


def errors_for(tmp_path: Path, set_file: Path) -> list[str]:
    config = tmp_path / "markroute.yaml"
    config.write_text(CONFIG.format(path=set_file))
    model, diagnostics = load_model(str(config))
    assert model is None
    return [d.render() for d in diagnostics if d.severity == "error"]


def test_a_fifo_set_file_is_refused_at_once(tmp_path: Path) -> None:
    fifo = tmp_path / "prefixes"
    os.mkfifo(fifo)
    config = tmp_path / "markroute.yaml"
    config.write_text(CONFIG.format(path=fifo))
    result = subprocess.run([sys.executable, "-m", "markroute", "check", "-c", str(config)], cwd=REPO,
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 1 and "not a regular file" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize("kind", ["socket", "directory", "device"])
def test_set_files_are_regular_files_only(tmp_path: Path, kind: str) -> None:
    target = tmp_path / "target"
    if kind == "socket":
        server = socket.socket(socket.AF_UNIX)
        server.bind(str(target))
    elif kind == "directory":
        target.mkdir()
    else:
        target = Path("/dev/null")
    assert any("is not a regular file" in e for e in errors_for(tmp_path, target))


def test_a_set_file_over_the_size_limit_is_refused_unread(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sets, "MAX_SET_FILE_BYTES", 64)
    big = tmp_path / "big.txt"
    big.write_text("192.0.2.0/24\n" * 10)
    assert any("is 130 bytes; at most 64 are read" in e for e in errors_for(tmp_path, big))


def test_a_bad_set_line_is_quoted_by_a_short_prefix_only(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text("root:$6$" + "s" * 80 + ":19000:0:99999:7:::\n")
    (found,) = errors_for(tmp_path, secret)
    assert "s" * 30 not in found and "..." in found


@pytest.mark.parametrize("text", [
    "x: &x {<<: *x}\n",
    "a: &a {<<: *b}\nb: &b {<<: *a}\n",
    "x: &x [{<<: *x}]\n",
    "x: &x {k: {<<: *x}}\n",
])
def test_recursive_merge_keys_are_an_error_not_a_recursion(tmp_path: Path, text: str) -> None:
    config = tmp_path / "markroute.yaml"
    config.write_text(text)
    model, diagnostics = load_model(str(config))
    assert model is None and diagnostics and diagnostics[0].severity == "error"


def test_merge_keys_reused_side_by_side_are_fine(tmp_path: Path) -> None:
    config = tmp_path / "markroute.yaml"
    config.write_text("uplinks:\n  a: &base {interface: eth0, gateway: 192.0.2.1}\n"
                      "  b: {<<: *base, interface: eth1}\n  c: {<<: [*base], interface: eth2}\n")
    model, diagnostics = load_model(str(config))
    assert model is not None, diagnostics
