"""Config of an HA pair: `hosts:` (one file for both routers, per-router differences selected by
host name) and `settings.ha`."""

from __future__ import annotations

from pathlib import Path

import pytest

from markroute.compile import compile_plan
from markroute.config import load_model
from markroute.config.hasettings import load_ha_settings
from markroute.model import HaSettings

CONFIG = """\
uplinks:
  isp0: {interface: wan0, gateway: 10.0.0.1, nat: {snat: 10.0.0.2}}
  isp1: {interface: wan1, gateway: 10.0.1.1, nat: {snat: 10.0.1.2}}
policies:
  - {name: rest, via: isp0}
hosts:
  r1:
  r2:
    uplinks:
      isp1: {interface: eth7}
    settings: {rp_filter: strict}
"""


def load_as(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, host: str, text: str = CONFIG):
    path = tmp_path / "markroute.yaml"
    path.write_text(text)
    monkeypatch.setenv("MARKROUTE_HOST", host)
    return load_model(str(path))


def test_each_host_gets_its_overrides_and_the_same_marks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    r1, _ = load_as(tmp_path, monkeypatch, "r1")
    r2, _ = load_as(tmp_path, monkeypatch, "r2")
    assert r1 is not None and r2 is not None
    assert (r1.uplinks["isp1"].interface, r2.uplinks["isp1"].interface) == ("wan1", "eth7")
    assert r2.uplinks["isp1"].gateway == "10.0.1.1", "a mapping override keeps the keys it does not name"
    assert (r1.settings.rp_filter, r2.settings.rp_filter) == ("loose", "strict")
    plans = compile_plan(r1), compile_plan(r2)
    assert [(u.name, u.mark, u.table) for u in plans[0].uplinks] == [(u.name, u.mark, u.table) for u in plans[1].uplinks]
    assert {r.priority for r in plans[0].rules} == {r.priority for r in plans[1].rules}


def test_an_error_in_an_override_names_its_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    text = CONFIG.replace("{interface: eth7}", "{interface: eth7, gatway: 10.0.1.9}")
    model, diagnostics = load_as(tmp_path, monkeypatch, "r2", text)
    assert model is None
    assert [(d.where.line, d.message) for d in diagnostics if d.severity == "error"] == [
        (10, "unknown key 'gatway' in uplink 'isp1'")]


def test_an_entry_overrides_only_top_level_keys(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model, diagnostics = load_as(tmp_path, monkeypatch, "r1", CONFIG + "    polices: []\n")
    assert model is None
    [error] = [d for d in diagnostics if d.severity == "error"]
    assert (error.where.line, error.message, error.hint) == (
        12, "hosts.r2 cannot override 'polices'", "did you mean 'policies'?")


def test_this_host_must_have_an_entry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model, diagnostics = load_as(tmp_path, monkeypatch, "r3")
    assert model is None
    [error] = [d for d in diagnostics if d.severity == "error"]
    assert error.where.line == 6 and error.message == "hosts has no entry for this host 'r3' (it names r1, r2)"


@pytest.mark.parametrize(("ha", "line", "message"), [
    ("{conntrackd: etc/conntrackd.conf}", 7, "ha.conntrackd must be an absolute path, not 'etc/conntrackd.conf'"),
    ("{conntrakd: /etc/conntrackd.conf}", 7, "unknown key 'conntrakd' in ha"),
    ("42", 7, "ha must be a mapping, not a number"),
])
def test_settings_ha_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, ha: str, line: int, message: str) -> None:
    text = CONFIG.split("hosts:")[0] + f"settings:\n  ha: {ha}\n"
    model, diagnostics = load_as(tmp_path, monkeypatch, "r1", text)
    assert model is None
    assert [(d.where.line, d.message) for d in diagnostics if d.severity == "error"] == [(line, message)]


def test_settings_ha_without_conntrackd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model, _ = load_as(tmp_path, monkeypatch, "r1", CONFIG.split("hosts:")[0] + "settings:\n  ha: {}\n")
    assert model is not None and model.settings.ha is not None and model.settings.ha.conntrackd is None


def test_the_hook_reads_settings_ha_alone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """keepalived's hook must take over even when the rest of the file has an error not yet applied;
    it still follows this host's `hosts:` entry and still names what is wrong with settings.ha."""
    monkeypatch.setenv("MARKROUTE_HOST", "r2")
    path = tmp_path / "markroute.yaml"
    text = CONFIG.replace("via: isp0}", "via: nowhere}").replace("{rp_filter: strict}", "{ha: {conntrackd: /etc/r2.conf}}")
    path.write_text(text + "settings:\n  ha: {conntrackd: /etc/r1.conf}\n")
    assert load_model(str(path))[0] is None
    assert load_ha_settings(str(path)) == (HaSettings("/etc/r2.conf"), [])
    path.write_text(CONFIG)
    settings, diagnostics = load_ha_settings(str(path))
    assert settings is None and [d.message for d in diagnostics] == [
        "the config has no settings.ha: this router is not one of an HA pair"]
