"""markroute touches only what it owns: foreign tables, rules, routes and sysctls survive.

The router namespace starts out like a host that already runs other software: a
foreign nftables table that sets its own marks, a wg-quick style rule pair
(`not fwmark 0xca6c lookup 51820`, `lookup main suppress_prefixlength 0`) with routes in
table 51820, routes in another table, and a non-default rp_filter on an interface
markroute will also configure. Apply and down go through the CLI with --netns.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from kernelhelp import (  # noqa: F401
    KERNEL,
    TWO_UPLINKS,
    markroute,
    own_routes,
    own_rules,
    router,
    view,
    write_config,
)

from markroute.compile import compile_plan
from markroute.config import load_model
from markroute.kernel.state import directory
from markroute.lab import RouterLab

pytestmark = KERNEL

FOREIGN_TABLE = """
table inet othervpn {
    chain prerouting {
        type filter hook prerouting priority mangle; policy accept;
        ip daddr 198.18.0.0/15 meta mark set 0xca6c counter
        ct mark 0x40000 meta mark set meta mark or 0x40000
    }
    chain output {
        type route hook output priority mangle; policy accept;
        udp dport 51820 meta mark set 0xca6c
    }
}
"""


def planned_sysctls(config: str) -> dict[str, str]:
    model, _ = load_model(config)
    assert model is not None
    return {s.name: s.value for s in compile_plan(model).sysctls}


def add_foreign_state(r: RouterLab) -> None:
    lab = r.lab
    lab.nft(r.rtr, FOREIGN_TABLE)
    lab.ip(r.rtr, "rule", "add", "not", "fwmark", "0xca6c", "table", "51820", "priority", "32764")
    lab.ip(r.rtr, "rule", "add", "table", "main", "suppress_prefixlength", "0", "priority", "32763")
    lab.ip(r.rtr, "rule", "add", "from", "192.168.1.64/26", "table", "200", "priority", "20000")
    lab.ip(r.rtr, "-6", "rule", "add", "fwmark", "0x40000/0xff0000", "table", "52", "priority", "5270")
    lab.ip(r.rtr, "route", "add", "default", "via", "10.0.1.1", "dev", "wan1", "table", "51820")
    lab.ip(r.rtr, "route", "add", "198.18.0.0/15", "via", "10.0.0.1", "table", "200")
    lab.ip(r.rtr, "route", "add", "blackhole", "192.0.2.0/24", "table", "200")
    lab.sysctl(r.rtr, "net.ipv4.conf.wan0.rp_filter", "1")
    lab.sysctl(r.rtr, "net.ipv4.conf.lan0.accept_redirects", "0")


def test_foreign_state_survives_apply_and_down(router: RouterLab, tmp_path: Path) -> None:  # noqa: F811
    r = router
    add_foreign_state(r)
    before = view(r.lab, r.rtr)
    config = write_config(tmp_path, TWO_UPLINKS.format(server=r.server))

    applied = markroute("apply", "-c", config, "--netns", r.rtr)
    assert applied.returncode == 0, applied.stderr
    assert own_rules(r.lab, r.rtr) and own_routes(r.lab, r.rtr)
    during = view(r.lab, r.rtr, foreign_only=True)
    assert during["nftables"] == before["nftables"]
    assert during["rules"] == before["rules"]
    assert during["routes"] == before["routes"]
    wanted = planned_sysctls(config)
    assert before["sysctls"]["net.ipv4.conf.wan0.rp_filter"] != wanted["net.ipv4.conf.wan0.rp_filter"]
    changed = {k for k, v in during["sysctls"].items() if before["sysctls"].get(k) != v}
    assert changed == {k for k, v in wanted.items() if before["sysctls"][k] != v}
    assert all(during["sysctls"][k] == v for k, v in wanted.items())

    removed = markroute("down", "--netns", r.rtr)
    assert removed.returncode == 0, removed.stderr
    assert view(r.lab, r.rtr) == before
    assert not directory(r.rtr).exists()


def test_down_without_state_removes_only_markroutes_own(router: RouterLab, tmp_path: Path) -> None:  # noqa: F811
    r = router
    add_foreign_state(r)
    before = view(r.lab, r.rtr, foreign_only=True)
    config = write_config(tmp_path, TWO_UPLINKS.format(server=r.server))
    assert markroute("apply", "-c", config, "--netns", r.rtr).returncode == 0
    (directory(r.rtr) / "state.json").unlink()

    unsure = markroute("down", "--netns", r.rtr)
    assert unsure.returncode == 1 and "down --force" in unsure.stderr, unsure.stderr
    assert "table inet markroute" in unsure.stderr, "a table without a record may be someone else's"
    assert own_rules(r.lab, r.rtr) == [] and own_routes(r.lab, r.rtr) == [], "protocol-77 objects are provably ours"
    assert "markroute" in r.lab.run(r.rtr, ["nft", "list", "tables"]).stdout
    removed = markroute("down", "--force", "--netns", r.rtr)
    assert removed.returncode == 0, removed.stderr
    after = view(r.lab, r.rtr)
    assert after["nftables"] == before["nftables"]
    assert after["rules"] == before["rules"]
    assert after["routes"] == before["routes"]


@pytest.mark.parametrize("command", ["apply", "down", "status"])
def test_missing_namespace_is_an_environment_error(command: str, tmp_path: Path) -> None:
    config = write_config(tmp_path, TWO_UPLINKS.format(server="203.0.113.10"))
    args = [command, "--netns", "mr-000000-nosuch"] + (["-c", config] if command == "apply" else [])
    result = markroute(*args)
    assert result.returncode == 4
    assert "mr-000000-nosuch" in result.stderr and "does not exist" in result.stderr
    assert "Traceback" not in result.stderr
