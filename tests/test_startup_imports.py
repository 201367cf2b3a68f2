"""What `markroute apply` imports before it has work for it (issue 15: imports were ~90 ms of
the CPU of an apply of 100,000 prefixes, beside a ~140 ms kernel insert).

Each check runs in a fresh interpreter, so modules other tests imported do not hide an import.
"""

from __future__ import annotations

import json
import subprocess
import sys

# Everything `apply` imports on its way to the kernel, its own imports inside the command included,
# and the neighbour check it runs while the set elements are inserted.
APPLY_IMPORTS = ("markroute.cli", "markroute.commands.apply", "markroute.compile", "markroute.config",
                 "markroute.daemon.dnsmasq", "markroute.kernel.environment", "markroute.kernel.gateways",
                 "markroute.kernel.interrupt", "markroute.kernel.waiting", "markroute.commands.neighbours",
                 "markroute.kernel.snapshot")
SIMULATOR = ("markroute.sim.nft", "markroute.sim.trace", "markroute.sim.reach", "markroute.sim.xt",
             "markroute.sim.system", "markroute.sim.neighbours", "markroute.commands.trace")
SETUP_ONLY = ("markroute.kernel.networkd", "configparser")  # `check --live`'s warning about networkd


def loaded_after(modules: tuple[str, ...]) -> set[str]:
    """The modules a fresh interpreter holds after importing MODULES."""
    code = ("import importlib, json, sys\n"
            f"for name in {list(modules)!r}:\n    importlib.import_module(name)\n"
            "print(json.dumps(sorted(sys.modules)))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return set(json.loads(result.stdout))


def test_apply_leaves_the_simulator_unimported_until_a_foreign_rule_needs_it() -> None:
    """The neighbour check simulates only when `foreign_hands` finds a foreign base chain or
    ip rule; until then apply must not pay the simulator's ~20 ms of imports."""
    loaded = loaded_after(APPLY_IMPORTS)
    assert "markroute.sim.foreign" in loaded
    assert loaded.isdisjoint(SIMULATOR), sorted(loaded & set(SIMULATOR))


def test_apply_leaves_the_networkd_check_unimported() -> None:
    """Only `check --live` (findings with setup) reads networkd's settings, with configparser."""
    loaded = loaded_after(APPLY_IMPORTS)
    assert "markroute.commands.neighbours" in loaded
    assert loaded.isdisjoint(SETUP_ONLY), sorted(loaded & set(SETUP_ONLY))


def test_the_simulator_still_loads_through_its_package() -> None:
    """`sim.live`, `sim.offline` and the lazily exported names still give the simulator."""
    code = ("from markroute import sim\nfrom markroute.sim import Reach, Simulator, reachability\n"
            "from markroute.sim.reach import reachability as direct\nassert reachability is direct\n"
            "print(Simulator.__module__, Reach.__module__, sim.live.__name__, sim.offline.__name__)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.split() == ["markroute.sim.trace", "markroute.sim.reach", "live", "offline"]
