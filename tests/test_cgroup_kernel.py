"""`cgroup:` policies with real processes in a real cgroup, under `apply` and under `markroute run`.

The test makes its own cgroup under the cgroup2 mount (named after the lab's unique
prefix, removed at teardown whatever happened) and starts the probe in it by writing the
child's pid into `cgroup.procs` before it execs. markroute and the probe enter the
router's network namespace only (`--netns`, `nsenter --net`): `ip netns exec` would
remount /sys, and cgroups would not be found there.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from daemon_helpers import DaemonLab, daemon_lab, python_env
from kernelhelp import markroute

from markroute.kernel import nft
from markroute.match.cgroup import NFT_CGROUP_ROOT, cgroup2_place

pytestmark = pytest.mark.kernel
COUNT = 4
FOREIGN = """
table inet mrtestforeign {
    chain out { type filter hook output priority 10; policy accept; counter comment "theirs"; }
}
"""


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[tuple[DaemonLab, str, Path]]:
    """The daemon lab, the test cgroup's configured path (depth 2) and its directory."""
    place = cgroup2_place()
    assert place is not None, "cgroup2 must be mounted under /sys/fs/cgroup for this test"
    with daemon_lab(tmp_path) as dlab:
        top = Path(NFT_CGROUP_ROOT, place, f"{dlab.router.lab.prefix}-cg")
        top.mkdir()
        try:
            (top / "app").mkdir()
            yield dlab, f"{top.name}/app", top / "app"
        finally:
            for directory in (top / "app", top):
                for _ in range(50):  # a probe that just exited may take a moment to leave the cgroup
                    try:
                        directory.rmdir()
                        break
                    except FileNotFoundError:
                        break
                    except OSError:
                        time.sleep(0.1)


def probe(dlab: DaemonLab, cgroup: Path | None) -> dict[int | None, int]:
    """Which ISP carried each of COUNT tcp connections from a probe in CGROUP (None: the test's own)."""
    def enter() -> None:
        assert cgroup is not None
        (cgroup / "cgroup.procs").write_text(str(os.getpid()))

    argv = ["nsenter", f"--net=/run/netns/{dlab.rtr}", sys.executable, "-m", "markroute.lab.probe", "tcp",
            dlab.router.server, str(dlab.port), "--count", str(COUNT)]
    proc = subprocess.run(argv, capture_output=True, text=True, env=python_env(), timeout=60, check=True,
                          preexec_fn=enter if cgroup is not None else None)
    counts: dict[int | None, int] = dlab.router.isp_counts(json.loads(proc.stdout)["seen"])
    return counts


def config(path: str, extra: str = "") -> str:
    return f"""
policies:
  - {{name: app, cgroup: {path}, via: isp_a}}
  - {{name: later, cgroup: {path.split('/')[0]}/missing, via: isp_a}}{extra}
  - {{name: rest, local: true, via: isp_b}}
"""


def apply(dlab: DaemonLab, text: str) -> str:
    """Apply TEXT's policies; what apply said it changed."""
    path = dlab.write(dlab.router.uplinks_yaml(["isp_a", "isp_b"]) + text)
    proc = markroute("apply", "-c", str(path), "--netns", dlab.rtr)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout + proc.stderr


def status(dlab: DaemonLab) -> dict[str, Any]:
    proc = markroute("status", "--netns", dlab.rtr, "--json")
    report: dict[str, Any] = json.loads(proc.stdout)
    return report


def foreign(dlab: DaemonLab) -> Any:
    listing = dlab.router.lab.run(dlab.rtr, ["nft", "-j", "list", "table", "inet", "mrtestforeign"]).stdout
    return nft.normalise(o for o in json.loads(listing)["nftables"] if "rule" in o or "chain" in o)


def test_a_cgroup_policy_steers_its_processes_and_survives_reapply_and_a_new_cgroup(
        setup: tuple[DaemonLab, str, Path]) -> None:
    dlab, path, directory = setup
    dlab.router.lab.nft(dlab.rtr, FOREIGN)
    theirs = foreign(dlab)
    apply(dlab, config(path))
    missing = f"{path.split('/')[0]}/missing"
    assert probe(dlab, directory) == {0: COUNT}, "in the cgroup: policy app, isp_a"
    assert probe(dlab, None) == {1: COUNT}, "outside it: policy rest, isp_b"

    def traced(*cgroup: str) -> Any:
        proc = markroute("trace", "--live", "--netns", dlab.rtr, "--local", "--from", dlab.router.rtr_wan_v4[0],
                         "--to", dlab.router.server, "--proto", "tcp", "--dport", str(dlab.port), *cgroup, "--json")
        return json.loads(proc.stdout)

    assert "policy app" in json.dumps(traced("--cgroup", f"{path}/worker")), "trace --live reads the live set"
    assert "policy app" not in json.dumps(traced("--cgroup", missing))
    assert "--cgroup" in json.dumps(traced())

    cgroups = {c["path"]: c["exists"] for c in status(dlab)["cgroups"]}
    assert cgroups == {path: True, missing: False}
    proc = markroute("status", "--netns", dlab.rtr)
    assert f"cgroup {missing} does not exist" in proc.stdout
    assert [line.split() for line in proc.stdout.splitlines() if line.startswith(f"  {path.split('/')[0]}/")] == [
        [path, "exists"], [missing, "missing"]]
    assert "drift: none" in proc.stdout and proc.returncode == 0, "a missing cgroup is a problem, not drift"

    assert "nftables" not in apply(dlab, config(path)), "unchanged: the table is kept"
    said = apply(dlab, config(path, "\n  - {name: docs, local: true, to: 192.0.2.0/24, via: isp_b}"))
    assert "chains of inet markroute rewritten" in said, said
    assert probe(dlab, directory) == {0: COUNT}
    assert probe(dlab, None) == {1: COUNT}
    assert status(dlab)["drift"] == []

    directory.rmdir()  # the service stops ...
    directory.mkdir()  # ... and starts again: a new cgroup, a new id, which the applied set does not hold
    assert probe(dlab, directory) == {1: COUNT}, "nft keeps the old cgroup's id: without run, no match"
    dlab.start(dlab.write(dlab.router.uplinks_yaml(["isp_a", "isp_b"]) + config(path), "run.yaml"))
    deadline = time.monotonic() + 20
    seen = probe(dlab, directory)
    while seen != {0: COUNT} and time.monotonic() < deadline:
        time.sleep(0.5)
        seen = probe(dlab, directory)
    assert seen == {0: COUNT}, f"the re-created cgroup is matched again under run; log:\n{dlab.log()}"
    assert probe(dlab, None) == {1: COUNT}
    directory.rmdir()
    dlab.wait(lambda _: f"cgroup {path} is gone" in dlab.log(), "the daemon to log the cgroup's end")
    directory.mkdir()
    dlab.wait(lambda _: f"cgroup {path} appeared" in dlab.log(), "the daemon to log the cgroup's return")
    assert probe(dlab, directory) == {0: COUNT}
    assert status(dlab)["drift"] == [], "the daemon's set updates are not drift"
    assert foreign(dlab) == theirs, "another table's rules are untouched"


EXAMPLES = sorted(Path(__file__).resolve().parents[1].glob("examples/**/*.yaml"))
EXTRA = """
  - {name: cg-one, cgroup: a.slice/b.service, via: %s}
  - {name: cg-two, cgroup: [c.slice, d.slice], proto: tcp, dport: 443, via: %s}
"""


@pytest.mark.parametrize("config_path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_the_text_batch_loads_every_example_as_the_json_batch_does(config_path: Path, tmp_path: Path) -> None:
    """What nft.run_batch sends as text for a ruleset reading cgroups is the ruleset the JSON would be.

    Each example's whole-table replacement goes in once as JSON and once as `nfttext.batch`;
    the listings must be equal. Then the example with two cgroup policies added (text only,
    nft 1.0.6 reads no other form) lists with its level restored and loads again from that
    listing (`nft.loadable`, what a rollback does).
    """
    from markroute.compile import compile_plan
    from markroute.config import load_model
    from markroute.lab import Lab
    from markroute.plan import nfttext
    from markroute.plan.nftjson import is_cgroup_set, json_default

    model, diagnostics = load_model(str(config_path))
    assert model is not None, [d.render() for d in diagnostics]
    plan = compile_plan(model)
    batch = nft.replacement(plan.table_name, plan.nft)  # as is: HA's empty hold sets included
    with Lab() as lab:
        ns = lab.add_ns("rtr")

        def listed() -> list[dict[str, Any]]:
            out = lab.run(ns, ["nft", "-j", "list", "table", "inet", plan.table_name]).stdout
            return nft.normalise(o for o in json.loads(out)["nftables"] if "metainfo" not in o)

        lab.run(ns, ["nft", "-j", "-f", "-"], input=json.dumps({"nftables": batch}, default=json_default))
        from_json = listed()
        lab.run(ns, ["nft", "-f", "-"], input=nfttext.batch(batch))
        assert listed() == from_json

        uplink = next(iter(model.uplinks))
        with_cgroups = tmp_path / config_path.name
        text = config_path.read_text()
        extra = EXTRA % (uplink, uplink)
        with_cgroups.write_text(text.replace("\npolicies:\n", "\npolicies:" + extra, 1) if "\npolicies:\n" in text
                                else text + "\npolicies:" + extra)
        for extra in config_path.parent.glob("*.txt"):
            (tmp_path / extra.name).write_text(extra.read_text())
        model, diagnostics = load_model(str(with_cgroups))
        assert model is not None, [d.render() for d in diagnostics]
        plan = compile_plan(model)
        without_paths = [{"set": {k: v for k, v in o["set"].items() if k != "elem"}}
                         if "set" in o and is_cgroup_set(o["set"]) else o for o in plan.nft]  # none exists here
        lab.run(ns, ["nft", "-f", "-"], input=nfttext.batch(nft.replacement(plan.table_name, without_paths)))
        first = listed()
        levels = [e["match"]["left"]["socket"]["level"] for o in first if "rule" in o
                  for e in o["rule"]["expr"] if "match" in e and "socket" in e["match"]["left"]]
        assert sorted(levels) == [1, 2], "the level is back in the normalised listing"
        lab.run(ns, ["nft", "-f", "-"], input=nfttext.batch(nft.replacement(plan.table_name, nft.loadable(first))))
        assert listed() == first


def test_failover_of_a_cgroup_policy_keeps_the_set_and_records_no_drift(setup: tuple[DaemonLab, str, Path]) -> None:
    """The daemon's chain rewrite and its record go through listings holding cgroup sets and rules."""
    dlab, path, directory = setup
    uplinks = dlab.router.uplinks_yaml(["isp_a", "isp_b"]).replace(
        "isp_a: {", "isp_a: {check: {interval: 0.2, down_after: 2, up_after: 2}, ", 1)
    policies = f"""
groups:
  primary: {{failover: [isp_a, isp_b]}}
policies:
  - {{name: app, cgroup: {path}, via: primary}}
  - {{name: rest, local: true, via: isp_b}}
"""
    dlab.start(dlab.write(uplinks + policies))
    dlab.wait_states({"isp_a": "up", "isp_b": "up"})
    assert probe(dlab, directory) == {0: COUNT}
    dlab.kill_upstream(0)
    dlab.wait_states({"isp_a": "down", "isp_b": "up"})
    deadline = time.monotonic() + 10
    while (seen := probe(dlab, directory)) != {1: COUNT} and time.monotonic() < deadline:
        time.sleep(0.3)
    assert seen == {1: COUNT}, f"the cgroup's policy fails over to isp_b; log:\n{dlab.log()}"
    assert status(dlab)["drift"] == [], "the rewrite was recorded with the cgroup set"
    dlab.revive_upstream(0)
    dlab.wait_states({"isp_a": "up", "isp_b": "up"})
    deadline = time.monotonic() + 10
    while (seen := probe(dlab, directory)) != {0: COUNT} and time.monotonic() < deadline:
        time.sleep(0.3)
    assert seen == {0: COUNT}
    assert status(dlab)["drift"] == []
