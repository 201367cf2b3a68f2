"""`markroute demo`: the real demo, run as a user runs it, judged by its JSON.

What each batch of connections must show follows from the bundled config itself: a
policy via an uplink puts every connection on it, via `main` on no uplink, via a
balance group on every member. Afterwards nothing of the lab may be left.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import pytest
from click.testing import CliRunner
from kernelhelp import REPO

from markroute.cli import main
from markroute.config import load_model
from markroute.kernel.state import directory as state_directory
from markroute.lab import Lab, cleanup, demo
from markroute.model import Model


def run_demo(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "markroute", "demo", *args],
        capture_output=True, text=True, cwd=REPO, timeout=300, check=False,
    )  # fmt: skip


def bundled_model() -> Model:
    model, diagnostics = load_model(str(demo.DEMO_CONFIG))
    assert model is not None, diagnostics
    return model


def check_flows(report: dict[str, Any]) -> None:
    """Every batch went where the bundled config sends it, was answered, and stayed put."""
    model = bundled_model()
    via = {p.name: p.via for p in model.policies}
    for flow in report["flows"]:
        assert flow["ok"] == flow["count"] and flow["inconsistent"] == 0, flow
        carried = {name for name, n in flow["by_uplink"].items() if n}
        target = via[flow["policy"]]
        if target == "main":
            assert carried == {demo.MAIN}, flow
        elif target in model.groups:
            assert carried == {member for member, _ in model.groups[target].members}, flow
        else:
            assert carried == {target}, flow
    assert {f["policy"] for f in report["flows"]} == set(via)
    counted = {p["name"]: p["packets"] for p in report["status"]["policies"]}
    for flow in report["flows"]:
        assert counted[flow["policy"]] >= flow["count"], counted


@pytest.mark.kernel
@pytest.mark.timeout(180)
def test_demo_splits_flows_and_leaves_nothing_behind(live_namespaces: Callable[[], set[str]]) -> None:
    proc = run_demo("--json")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    try:
        check_flows(report)
        assert report["kept"] is False and report["explore"] == []
        assert not set(report["namespaces"]) & live_namespaces()
        assert not state_directory(report["router"]).exists()
    finally:
        cleanup(report["namespaces"])


@pytest.mark.kernel
@pytest.mark.timeout(240)
def test_demo_keep_prints_working_commands_and_down_removes_the_lab(
    live_namespaces: Callable[[], set[str]],
) -> None:
    proc = run_demo("--keep", "--json")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    try:
        check_flows(report)
        assert report["kept"] is True and set(report["namespaces"]) <= live_namespaces()
        *explore, remove = report["explore"]
        for argv in explore:
            result = subprocess.run(argv, capture_output=True, text=True, cwd=REPO, timeout=120, check=False)
            assert result.returncode == 0, (argv, result.stderr)
        assert remove[-3:] == ["demo", "--down", report["prefix"]]
        removed = subprocess.run(remove, capture_output=True, text=True, cwd=REPO, timeout=120, check=False)
        assert removed.returncode == 0, removed.stderr
        assert not set(report["namespaces"]) & live_namespaces()
        assert not state_directory(report["router"]).exists()
    finally:
        cleanup(report["namespaces"])


@pytest.mark.kernel
def test_demo_failure_removes_the_lab(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Any, live_namespaces: Callable[[], set[str]]
) -> None:
    """The lab is built, then the config turns out broken: clear error, exit code 1, no namespace left."""
    broken = tmp_path / "demo.yaml"
    broken.write_text(demo.DEMO_CONFIG.read_text().replace("interface: wan1", "interface: [wan1]"))
    monkeypatch.setattr(demo, "DEMO_CONFIG", broken)
    labs: list[Lab] = []

    def recorded_lab() -> Lab:
        labs.append(Lab())
        return labs[-1]

    monkeypatch.setattr(demo, "Lab", recorded_lab)
    with pytest.raises(demo.DemoError) as failure:
        demo.run()
    assert failure.value.code == 1 and "invalid" in str(failure.value)
    assert labs[0].namespaces and not set(labs[0].namespaces) & live_namespaces()


def cli(*args: str) -> Any:
    return CliRunner().invoke(main, ["demo", *args])


def test_demo_needs_root(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("markroute.kernel.environment.os.geteuid", lambda: 1000)
    result = cli()
    assert result.exit_code == 4
    assert "run it as root" in result.stderr and "Traceback" not in result.output


def test_demo_needs_nft(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("markroute.kernel.environment.os.geteuid", lambda: 0)
    monkeypatch.setenv("PATH", "/nonexistent")
    result = cli("--json")
    assert result.exit_code == 4
    assert "nft" in result.stderr and result.stdout == ""


def test_demo_down_refuses_what_is_not_a_demo_lab(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("markroute.kernel.environment.os.geteuid", lambda: 0)
    monkeypatch.setattr(demo, "check_environment", lambda: None)
    for prefix in ("mr-12345", "../etc", "mr-zzzzzz"):
        result = cli("--down", prefix)
        assert result.exit_code == 2 and "not a demo lab prefix" in result.stderr, prefix
    assert cli("--keep", "--down", "mr-123456").exit_code == 2
