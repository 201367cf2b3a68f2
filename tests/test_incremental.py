"""A change of set contents alone reaches the kernel as element updates, nothing else.

The router gets a config whose policy sends a `sets:` file's prefixes (and the lab's
server) through ISP 1. Editing only that file must add and remove exactly the changed
elements in place: the table, its chains, rules and the set keep their kernel handles,
rule counters keep counting, and a TCP connection opened before the update carries on
through the same ISP.
"""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any

import pytest
from kernelhelp import KERNEL, markroute, router, write_config  # noqa: F401

from markroute.compile import compile_plan
from markroute.config import load_model
from markroute.kernel import KernelError, nft, state
from markroute.kernel import apply as apply_module
from markroute.kernel.apply import ApplyFailed, apply
from markroute.kernel.netns import inside
from markroute.lab import RouterLab
from markroute.plan.nftjson import json_default

pytestmark = KERNEL
PORT = 7300
CONFIG = """
uplinks:
  isp0: {interface: wan0, gateway: 10.0.0.1, nat: masquerade}
  isp1: {interface: wan1, gateway: 10.0.1.1, nat: masquerade}
sets:
  chosen: {file: chosen.txt}
policies:
  - {name: chosen-via-isp1, to: "@chosen", via: isp1}
"""


def prefixes(start: int, count: int) -> list[str]:
    """/24s two apart, so neighbours never merge into one interval."""
    return [f"10.{200 + (start + i) // 128}.{2 * ((start + i) % 128)}.0/24" for i in range(count)]


def listing(r: RouterLab) -> list[dict[str, Any]]:
    output = r.lab.run(r.rtr, ["nft", "-j", "list", "table", "inet", "markroute"]).stdout
    return [item for item in json.loads(output)["nftables"] if "metainfo" not in item]


def handles(items: list[dict[str, Any]]) -> dict[str, int]:
    found: dict[str, int] = {}
    for item in items:
        kind, body = next(iter(item.items()))
        if kind != "rule":
            found[f"{kind} {body['name']}"] = body["handle"]
        else:
            found[f"rule {body['chain']} {body.get('comment', '')} {len(found)}"] = body["handle"]
    return found


def elements(items: list[dict[str, Any]]) -> set[str]:
    chosen = next(item["set"] for item in items if "set" in item and item["set"]["name"] == "chosen_v4")
    return {e if isinstance(e, str) else f"{e['prefix']['addr']}/{e['prefix']['len']}" for e in chosen["elem"]}


def policy_packets(items: list[dict[str, Any]]) -> int:
    return sum(
        expr["counter"]["packets"]
        for item in items
        if "rule" in item and item["rule"].get("comment") == "policy chosen-via-isp1"
        for expr in item["rule"]["expr"]
        if "counter" in expr
    )


def test_only_changed_elements_change_and_connections_keep_flowing(router: RouterLab, tmp_path: Path) -> None:  # noqa: F811
    r = router
    config = write_config(tmp_path, CONFIG)
    old = prefixes(0, 200)
    (tmp_path / "chosen.txt").write_text("\n".join([r.server, *old]) + "\n")
    r.lab.serve_echo(r.net, PORT, udp=False)
    assert markroute("apply", "-c", config, "--netns", r.rtr).returncode == 0

    with inside(r.lan):
        connection = socket.create_connection((r.server, PORT), timeout=5)
    try:
        connection.sendall(b"before\n")
        first = json.loads(connection.makefile().readline())
        assert r.which_isp(first["src"]) == 1
        before = listing(r)
        assert policy_packets(before) == 1

        removed, added = old[:50], prefixes(200, 60)
        (tmp_path / "chosen.txt").write_text("\n".join([r.server, *old[50:], *added]) + "\n")
        result = markroute("apply", "-c", config, "--netns", r.rtr)
        assert result.returncode == 0, result.stderr
        assert "chosen_v4 +60 -50 elements" in result.stdout
        assert "replaced" not in result.stdout

        after = listing(r)
        assert handles(after) == handles(before), "table, chains, rules and set kept their handles"
        assert elements(before) - elements(after) == set(removed)
        assert elements(after) - elements(before) == set(added)

        connection.sendall(b"after\n")
        second = json.loads(connection.makefile().readline())
        assert second["src"] == first["src"] and second["sport"] == first["sport"]
    finally:
        connection.close()
    with inside(r.lan):
        fresh = socket.create_connection((r.server, PORT), timeout=5)
    with fresh:
        fresh.sendall(b"new\n")
        assert r.which_isp(json.loads(fresh.makefile().readline())["src"]) == 1
    assert policy_packets(listing(r)) == 2, "the policy counter kept its count and counted the new connection"
    status = markroute("status", "--netns", r.rtr, "--json", "-c", config)
    assert status.returncode == 0 and json.loads(status.stdout)["drift"] == []


def test_set_update_refused_by_the_kernel_falls_back_to_a_new_table(router: RouterLab, tmp_path: Path) -> None:  # noqa: F811
    """An element removed by hand makes the recorded contents wrong: the update fails whole, the table is replaced."""
    r = router
    config = write_config(tmp_path, CONFIG)
    old = prefixes(0, 20)
    (tmp_path / "chosen.txt").write_text("\n".join([r.server, *old]) + "\n")
    assert markroute("apply", "-c", config, "--netns", r.rtr).returncode == 0
    r.lab.run(r.rtr, ["nft", "delete", "element", "inet", "markroute", "chosen_v4", "{", old[0], "}"])

    (tmp_path / "chosen.txt").write_text("\n".join([r.server, *old[1:], *prefixes(20, 5)]) + "\n")
    result = markroute("apply", "-c", config, "--netns", r.rtr)
    assert result.returncode == 0, result.stderr
    assert "nftables table inet markroute replaced" in result.stdout
    assert elements(listing(r)) == {f"{r.server}", *old[1:], *prefixes(20, 5)}
    status = markroute("status", "--netns", r.rtr, "--json", "-c", config)
    assert json.loads(status.stdout)["drift"] == []


def test_unchanged_config_is_checked_by_generation_then_by_listing(
    router: RouterLab, tmp_path: Path, monkeypatch: pytest.MonkeyPatch  # noqa: F811
) -> None:
    """With no nf_tables transaction since the last apply, applying the same config lists
    nothing (100,000 elements take nft seconds); after anyone's transaction it lists the
    table, and an element removed by hand comes back."""
    r = router
    config = write_config(tmp_path, CONFIG)
    old = prefixes(0, 20)
    (tmp_path / "chosen.txt").write_text("\n".join([r.server, *old]) + "\n")
    assert markroute("apply", "-c", config, "--netns", r.rtr).returncode == 0
    model, _ = load_model(config)
    assert model is not None

    def no_listing(*args: object) -> None:
        raise AssertionError("the table was listed")

    with monkeypatch.context() as patch, inside(r.rtr):
        patch.setattr(nft, "list_table", no_listing)
        unchanged = apply(compile_plan(model), r.rtr)
        assert unchanged.changes == []
        assert unchanged.recorded == state.load(r.rtr), "the record in force, for the daemon to keep"

    r.lab.run(r.rtr, ["nft", "add", "table", "ip", "someone-else"])  # a transaction, not in our table
    result = markroute("apply", "-c", config, "--netns", r.rtr)
    assert result.returncode == 0 and "nothing changed" in result.stdout, result.stdout

    r.lab.run(r.rtr, ["nft", "delete", "element", "inet", "markroute", "chosen_v4", "{", old[0], "}"])
    result = markroute("apply", "-c", config, "--netns", r.rtr)
    assert result.returncode == 0, result.stderr
    assert elements(listing(r)) == {r.server, *old}


def test_a_record_of_the_previous_format_still_leads_to_element_updates(router: RouterLab, tmp_path: Path) -> None:  # noqa: F811
    """A router applied by the version that listed set elements as nft JSON in its record
    (format 1) gets just the changed elements from this one, and then a packed record."""
    r = router
    config = write_config(tmp_path, CONFIG)
    old = prefixes(0, 40)
    (tmp_path / "chosen.txt").write_text("\n".join([r.server, *old]) + "\n")
    assert markroute("apply", "-c", config, "--netns", r.rtr).returncode == 0
    record = state.load(r.rtr)
    assert record is not None
    data = record.to_json()
    data.pop("nft_elements")
    data["format"] = 1
    data["nft_listing"] = json.loads(json.dumps(record.nft_listing, default=json_default))
    state.write(r.rtr, state.STATE_RECORD, data)
    before = listing(r)

    (tmp_path / "chosen.txt").write_text("\n".join([r.server, *old[5:], *prefixes(40, 3)]) + "\n")
    result = markroute("apply", "-c", config, "--netns", r.rtr)
    assert result.returncode == 0, result.stderr
    assert "chosen_v4 +3 -5 elements" in result.stdout and "replaced" not in result.stdout
    assert handles(listing(r)) == handles(before)
    assert elements(listing(r)) == {r.server, *old[5:], *prefixes(40, 3)}
    written = json.loads((state.directory(r.rtr) / state.STATE_RECORD).read_text())
    assert written["format"] == state.FORMAT and "chosen_v4" in written["nft_elements"]


CHANGED_POLICY = CONFIG.replace('via: isp1}', 'via: isp0}\n  - {name: web-via-isp1, proto: tcp, dport: 8443, via: isp1}')


def test_a_policy_change_rewrites_the_chains_and_leaves_the_sets(router: RouterLab, tmp_path: Path) -> None:  # noqa: F811
    """A policy edited while the set file stays: the chains are rewritten in one transaction,
    the set keeps its handle and elements (nft does not load them again), traffic follows
    the new policy, and a failure later in the apply brings the old chains back."""
    r = router
    config, before = applied_with_chosen(r, tmp_path, 300)
    assert isp_of_a_new_connection(r) == 1
    write_config(tmp_path, CHANGED_POLICY)
    failing_late_puts_back(r, config, before)

    result = markroute("apply", "-c", config, "--netns", r.rtr)
    assert result.returncode == 0, result.stderr
    assert "nftables chains of inet markroute rewritten" in result.stdout and "replaced" not in result.stdout
    after = listing(r)
    sets = {k: v for k, v in handles(after).items() if k.startswith("set ")}
    assert sets == {k: v for k, v in handles(before).items() if k.startswith("set ")}, "the set was not re-created"
    assert elements(after) == elements(before)
    assert isp_of_a_new_connection(r) == 0
    status = markroute("status", "--netns", r.rtr, "--json", "-c", config)
    assert status.returncode == 0 and json.loads(status.stdout)["drift"] == []


def test_a_policy_and_its_set_edited_together_update_the_elements_then_rewrite_the_chains(
        router: RouterLab, tmp_path: Path) -> None:  # noqa: F811
    """The policy and the set file edited in one apply: the set's changed elements go over
    netlink, then the chains are rewritten; the set keeps its handle (nft does not load its
    elements again, as the whole-table replace before did), traffic follows the new policy, and
    a failure later in the apply brings back both the old elements and the old chains."""
    r = router
    config, before = applied_with_chosen(r, tmp_path, 300)
    assert isp_of_a_new_connection(r) == 1
    write_config(tmp_path, CHANGED_POLICY)
    (tmp_path / "chosen.txt").write_text("\n".join([r.server, *prefixes(100, 300)]) + "\n")
    failing_late_puts_back(r, config, before)

    result = markroute("apply", "-c", config, "--netns", r.rtr)
    assert result.returncode == 0, result.stderr
    assert "chosen_v4 +100 -100 elements" in result.stdout, result.stdout
    assert "nftables chains of inet markroute rewritten" in result.stdout and "replaced" not in result.stdout
    after = listing(r)
    sets = {k: v for k, v in handles(after).items() if k.startswith("set ")}
    assert sets == {k: v for k, v in handles(before).items() if k.startswith("set ")}, "the set was not re-created"
    assert elements(after) == {r.server, *prefixes(100, 300)}
    assert isp_of_a_new_connection(r) == 0
    status = markroute("status", "--netns", r.rtr, "--json", "-c", config)
    assert status.returncode == 0 and json.loads(status.stdout)["drift"] == []


ADDED_SET = CONFIG.replace("sets:\n", "sets:\n  direct: {file: direct.txt}\n").replace(
    "policies:\n", 'policies:\n  - {name: direct-via-isp0, to: "@direct", via: isp0}\n')


def test_a_set_added_or_dropped_leaves_the_other_sets_in_place(router: RouterLab, tmp_path: Path) -> None:  # noqa: F811
    """A policy with a set of its own added beside a big set, then dropped again: each time one
    transaction rewrites the chains and adds (drops) that set only. The big set keeps its kernel
    handle and elements (nft does not load them again, as a whole-table replace did), traffic
    follows, a failure later in the apply brings the old table back, and status finds no drift."""
    r = router
    (tmp_path / "direct.txt").write_text(r.server + "\n")
    config, before = applied_with_chosen(r, tmp_path, 5000)
    assert isp_of_a_new_connection(r) == 1

    write_config(tmp_path, ADDED_SET)
    failing_late_puts_back(r, config, before)

    for text, said, isp in ((ADDED_SET, "(add set direct_v4)", 0), (CONFIG, "(delete set direct_v4)", 1)):
        write_config(tmp_path, text)
        result = markroute("apply", "-c", config, "--netns", r.rtr)
        assert result.returncode == 0, result.stderr
        assert f"nftables chains of inet markroute rewritten {said}" in result.stdout, result.stdout
        assert "replaced" not in result.stdout
        after = listing(r)
        assert handles(after)["set chosen_v4"] == handles(before)["set chosen_v4"], "the big set was not re-created"
        assert elements(after) == elements(before)
        assert ("set direct_v4" in handles(after)) == (text == ADDED_SET)
        assert isp_of_a_new_connection(r) == isp
        status = markroute("status", "--netns", r.rtr, "--json", "-c", config)
        assert status.returncode == 0 and json.loads(status.stdout)["drift"] == [], status.stdout


def test_the_structure_is_listed_before_a_rewrite_only_when_someone_committed_since(
    router: RouterLab, tmp_path: Path,  # noqa: F811
) -> None:
    """When nf_tables' generation is still the one the last apply recorded, nobody changed the
    table since: apply takes its structure from the record instead of listing it (nft needs ~0.6 s
    for 10,000 policies), and lists it only after its own transaction, for the new record. After
    a neighbour's commit it lists first and compares, as before."""
    r = router
    config = write_config(tmp_path, CONFIG)
    (tmp_path / "chosen.txt").write_text("\n".join([r.server, *prefixes(0, 50)]) + "\n")
    assert markroute("apply", "-c", config, "--netns", r.rtr).returncode == 0
    listed: list[str] = []
    table_structure = nft.table_structure

    def counted(name: str) -> Any:
        listed.append(name)
        return table_structure(name)

    for text, neighbour in ((CHANGED_POLICY, False), (CONFIG, True)):
        write_config(tmp_path, text)
        if neighbour:
            r.lab.nft(r.rtr, "table inet neighbour { }")
        model, _ = load_model(config)
        assert model is not None
        listed.clear()
        with pytest.MonkeyPatch.context() as patch, inside(r.rtr):
            patch.setattr(nft, "table_structure", counted)
            report = apply(compile_plan(model), r.rtr)
        assert any("chains of inet markroute rewritten" in change for change in report.changes), report.changes
        assert len(listed) == (2 if neighbour else 1), listed
        assert report.recorded == state.load(r.rtr), "the record this apply wrote, for the daemon to keep"
    status = markroute("status", "--netns", r.rtr, "--json", "-c", config)
    assert status.returncode == 0 and json.loads(status.stdout)["drift"] == [], status.stdout


def applied_with_chosen(r: RouterLab, tmp_path: Path, count: int) -> tuple[str, list[dict[str, Any]]]:
    """CONFIG applied with the lab's server and COUNT other prefixes in its set, an echo server
    in `net`: the config's path and the table as listed then."""
    config = write_config(tmp_path, CONFIG)
    (tmp_path / "chosen.txt").write_text("\n".join([r.server, *prefixes(0, count)]) + "\n")
    r.lab.serve_echo(r.net, PORT, udp=False)
    assert markroute("apply", "-c", config, "--netns", r.rtr).returncode == 0
    return config, listing(r)


def failing_late_puts_back(r: RouterLab, config: str, before: list[dict[str, Any]]) -> None:
    """An apply of CONFIG that fails after its table transaction (a refused sysctl, injected) puts
    the table back as BEFORE listed it: its undo rewrites the old chains (and drops a new set)."""
    model, _ = load_model(config)
    assert model is not None

    def refuse(*args: object) -> None:
        raise KernelError("injected failure after the table's transaction")

    with pytest.MonkeyPatch.context() as patch, inside(r.rtr), pytest.raises(ApplyFailed) as failure:
        patch.setattr(apply_module._Apply, "restore_unwanted_sysctls", refuse)
        apply(compile_plan(model), r.rtr)
    assert failure.value.undo_problems == []
    assert normalised(listing(r)) == normalised(before), "the old table came back"


def isp_of_a_new_connection(r: RouterLab) -> int:
    """Which ISP a new TCP connection from the LAN to the lab's server leaves through."""
    with inside(r.lan), socket.create_connection((r.server, PORT), timeout=5) as connection:
        connection.sendall(b"which\n")
        return r.which_isp(json.loads(connection.makefile().readline())["src"])


def normalised(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return nft.normalise(items)
