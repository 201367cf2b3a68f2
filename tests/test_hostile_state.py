"""Damaged records and others' objects under markroute's names, on a real router namespace.

Issue #12: a damaged `state.json` must not strand the host (`down --force` removes what
is markroute's and says what it cannot put back); a foreign route in an uplink's table,
a foreign rule in the priority band or a foreign table `inet markroute` must stop
`apply` by name (or be taken over with `--force`), and show in `status` as drift.
"""

from __future__ import annotations

import json
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

from markroute.kernel.state import directory
from markroute.lab import RouterLab
from markroute.values import BOUND_TABLE_OFFSET

pytestmark = KERNEL

DAMAGED = {
    "empty": "",
    "garbage": "\x00\x01{not json",
    "null": "null",
    "list": "[]",
    "number": "1",
    "wrong-type": None,  # filled from a real record: a field of the wrong type
}


def tables(r: RouterLab) -> str:
    return r.lab.run(r.rtr, ["nft", "list", "tables"]).stdout


@pytest.mark.parametrize("damage", sorted(DAMAGED))
def test_damaged_state_is_named_and_down_force_removes_markroute(
        router: RouterLab, tmp_path: Path, damage: str) -> None:  # noqa: F811
    r = router
    before = view(r.lab, r.rtr)
    config = write_config(tmp_path, TWO_UPLINKS.format(server=r.server))
    assert markroute("apply", "-c", config, "--netns", r.rtr).returncode == 0
    record = directory(r.rtr) / "state.json"
    text = DAMAGED[damage]
    if text is None:
        data = json.loads(record.read_text())
        data["uplinks"] = [{"name": 5}]
        text = json.dumps(data)
    record.write_text(text)

    for command in (["status"], ["apply", "-c", config], ["down"]):
        result = markroute(*command, "--netns", r.rtr)
        assert result.returncode != 0, command
        assert "Traceback" not in result.stderr
        assert str(record) in result.stderr and "down --force" in result.stderr, result.stderr
    if damage == "wrong-type":
        assert "uplinks[0]" in result.stderr, "the message names the damaged field"
    assert own_rules(r.lab, r.rtr), "a refused down changes nothing"

    forced = markroute("down", "--force", "--netns", r.rtr)
    assert forced.returncode == 0, forced.stderr
    if damage == "wrong-type":  # the sysctl fields are intact: they are salvaged and put back
        assert "left as they are" not in forced.stderr, forced.stderr
        assert view(r.lab, r.rtr)["sysctls"] == before["sysctls"]
    else:
        assert "sysctls markroute changed are left as they are" in forced.stderr
    assert own_rules(r.lab, r.rtr) == [] and own_routes(r.lab, r.rtr) == []
    assert "markroute" not in tables(r)
    after = view(r.lab, r.rtr)
    assert (after["nftables"], after["rules"], after["routes"]) == (before["nftables"], before["rules"],
                                                                    before["routes"])
    assert not record.exists(), "the damaged record is gone: the next apply starts afresh"
    assert markroute("apply", "-c", config, "--netns", r.rtr).returncode == 0


@pytest.mark.parametrize("table", [100, 100 + BOUND_TABLE_OFFSET], ids=["uplink-table", "bound-table"])
def test_a_foreign_default_route_in_an_uplink_table_is_refused_by_name(
        router: RouterLab, tmp_path: Path, table: int) -> None:  # noqa: F811
    r = router
    r.lab.ip(r.rtr, "route", "add", "default", "via", "10.0.1.1", "dev", "wan1", "table", str(table))
    config = write_config(tmp_path, TWO_UPLINKS.format(server=r.server))

    refused = markroute("apply", "-c", config, "--netns", r.rtr)
    assert refused.returncode == 1 and "Traceback" not in refused.stderr
    assert f"route default gateway 10.0.1.1 dev wan1 table {table}" in refused.stderr, refused.stderr
    assert "apply --force" in refused.stderr
    assert own_rules(r.lab, r.rtr) == [] and "markroute" not in tables(r), "a refused apply changes nothing"

    forced = markroute("apply", "-c", config, "--force", "--netns", r.rtr)
    assert forced.returncode == 0, forced.stderr
    assert "took over route default gateway 10.0.1.1" in forced.stderr
    taken = r.lab.run(r.rtr, ["ip", "route", "show", "table", str(table)]).stdout
    assert "10.0.1.1" not in taken and "via 10.0.0.1 dev wan0" in taken, taken
    status = markroute("status", "--netns", r.rtr)
    assert status.returncode == 0, status.stdout + status.stderr

    r.lab.ip(r.rtr, "route", "add", "198.51.100.0/24", "via", "10.0.1.1", "dev", "wan1", "table", "100")
    r.lab.ip(r.rtr, "rule", "add", "fwmark", "0x7", "table", "100", "priority", "10001")
    drifted = markroute("status", "--netns", r.rtr)
    assert drifted.returncode == 3, drifted.stdout
    assert "foreign route where markroute's belong: route 198.51.100.0/24 gateway 10.0.1.1" in drifted.stdout
    assert "foreign rule where markroute's belong: ip rule 10001" in drifted.stdout


def test_a_foreign_table_named_markroute_is_neither_replaced_nor_deleted_silently(
        router: RouterLab, tmp_path: Path) -> None:  # noqa: F811
    r = router
    r.lab.nft(r.rtr, "table inet markroute { chain theirs { type filter hook input priority 0; policy accept; }; }")
    config = write_config(tmp_path, TWO_UPLINKS.format(server=r.server))

    refused = markroute("apply", "-c", config, "--netns", r.rtr)
    assert refused.returncode == 1 and "nftables table inet markroute" in refused.stderr, refused.stderr
    assert "chain theirs" in r.lab.run(r.rtr, ["nft", "list", "table", "inet", "markroute"]).stdout

    kept = markroute("down", "--netns", r.rtr)
    assert kept.returncode == 1 and "no record" in kept.stderr, kept.stderr
    assert "chain theirs" in r.lab.run(r.rtr, ["nft", "list", "table", "inet", "markroute"]).stdout

    forced = markroute("apply", "-c", config, "--force", "--netns", r.rtr)
    assert forced.returncode == 0, forced.stderr
    assert "took over nftables table inet markroute" in forced.stderr
    assert "chain theirs" not in r.lab.run(r.rtr, ["nft", "list", "table", "inet", "markroute"]).stdout
    assert markroute("down", "--netns", r.rtr).returncode == 0


def test_check_is_silent_about_a_local_policy_a_router_packet_matches(
        router: RouterLab, tmp_path: Path) -> None:  # noqa: F811
    """Issue #12 (11): `check` said every `local: true` policy could never match while its counter rose."""
    r = router
    config = write_config(tmp_path, """
uplinks:
  isp0: {interface: wan0, gateway: 10.0.0.1, nat: masquerade}
  isp1: {interface: wan1, gateway: 10.0.1.1, nat: masquerade}
policies:
  - {name: router-own, local: true, to: %s, via: isp1}
  - {name: rest, via: isp0}
""" % r.server)
    checked = markroute("check", "-c", config)
    assert checked.returncode == 0, checked.stderr
    assert "can never match" not in checked.stderr, checked.stderr
    assert markroute("apply", "-c", config, "--netns", r.rtr).returncode == 0

    def packets() -> int:
        status = json.loads(markroute("status", "--netns", r.rtr, "--json").stdout)
        return next(p["packets"] for p in status["policies"] if p["name"] == "router-own")

    before = packets()
    r.lab.run(r.rtr, ["ping", "-n", "-q", "-c", "2", "-W", "2", r.server])
    assert packets() > before, "a packet the router sent matched the policy check called dead"
    assert markroute("down", "--netns", r.rtr).returncode == 0
