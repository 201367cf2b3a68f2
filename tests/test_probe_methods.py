"""Every probe method is one module of markroute/probes/, registered, with every part.

Adding a method (`dns`, `http`) means a module and a registry entry; these tests fail
loudly, naming the method and the part, when one of them is missing or does not work
on the method's own example targets, and check that config and the daemon take
their choices from the registry rather than from a list of their own.
"""

from __future__ import annotations

import dataclasses
import importlib
import pkgutil
from pathlib import Path

import markroute.probes
from markroute.config import load_model
from markroute.daemon.monitor import probe_targets
from markroute.diagnostics import Where
from markroute.model import HealthCheck, Uplink
from markroute.probes import METHODS, default_targets
from markroute.probes.method import Method

SUPPORT = {"method", "sockets"}  # the package's modules that are not methods
EXAMPLE = {"icmp": "192.0.2.1", "tcp": "[2001:db8::1]:443", "arp": "192.0.2.1",
           "dns": "probe.example@192.0.2.53", "http": "http://192.0.2.80/health"}


def method_modules() -> list[str]:
    return [m.name for m in pkgutil.iter_modules(markroute.probes.__path__) if m.name not in SUPPORT]


def test_every_method_module_is_registered_under_its_own_name() -> None:
    for name in method_modules():
        module = importlib.import_module(f"markroute.probes.{name}")
        method = getattr(module, "METHOD", None)
        assert isinstance(method, Method), f"markroute/probes/{name}.py defines no METHOD = Method(...)"
        assert method.name == name, f"markroute/probes/{name}.py registers itself as '{method.name}'"
        assert METHODS.get(name) is method, f"method '{name}' is missing from markroute.probes.METHODS"
    assert sorted(METHODS) == sorted(method_modules()), "a registered method has no module of its own"


def test_every_method_has_every_part() -> None:
    for name, method in METHODS.items():
        for part in dataclasses.fields(Method):
            value = getattr(method, part.name)
            assert value is not None, f"method '{name}' lacks {part.name}"
            if part.name not in ("name", "default_gateways"):
                assert callable(value), f"method '{name}': {part.name} is not callable"
        assert set(method.default_gateways) <= {4, 6}, f"method '{name}': default_gateways are IP versions"
        assert name in EXAMPLE, f"method '{name}' has no example target in this test"
        assert method.parse_target(EXAMPLE[name]) == EXAMPLE[name], f"method '{name}' refuses its own example target"
        example = method.canonical(EXAMPLE[name])
        assert method.invalid_targets((example,)) is None, f"method '{name}' refuses its own example target"
        assert isinstance(method.prober_key(example), str) and method.prober_key(example)


def test_the_default_method_is_registered() -> None:
    assert HealthCheck().method in METHODS


def test_default_targets_follow_the_registry() -> None:
    uplink = Uplink("isp", "wan0", Where("test.yaml", 1, 1), 0x100, 100, gateway="192.0.2.1", gateway6="fe80::1")
    assert default_targets(METHODS["icmp"], uplink) == ("192.0.2.1", "fe80::1")
    assert default_targets(METHODS["arp"], uplink) == ("192.0.2.1",)
    assert default_targets(METHODS["tcp"], uplink) == ()
    for name in METHODS:
        checked = dataclasses.replace(uplink, check=HealthCheck(method=name))
        assert probe_targets(checked)[1] == tuple(
            METHODS[name].canonical(t) for t in default_targets(METHODS[name], uplink))


def test_config_offers_exactly_the_registered_methods(tmp_path: Path) -> None:
    path = tmp_path / "markroute.yaml"
    path.write_text("uplinks:\n  isp:\n    interface: wan0\n    gateway: 192.0.2.1\n    check: {method: nosuch}\n")
    model, diagnostics = load_model(str(path))
    assert model is None
    text = "\n".join(d.render() for d in diagnostics)
    assert ", ".join(METHODS) in text and ":5:" in text, text
