"""On a real kernel, merged policy maps pick the same policy as one rule per policy.

A router namespace gets the nftables table of a random config (from `test_merge`), once
merged and once with one rule per policy; a sender namespace wired to its four LAN
interfaces injects the same random packets (raw Ethernet frames, so source MAC, DSCP
and addresses are free). After each packet the router's own `policy NAME` counters say
which policy decided. Both plans must name the same policy for every packet.
"""

from __future__ import annotations

import json
import random
import socket
from pathlib import Path
from typing import Any

import pytest
from kernelhelp import KERNEL
from test_merge import IIFS, random_flow_args, random_model

from markroute.compile import compile_plan
from markroute.kernel import netns
from markroute.kernel.nft import rule_counters
from markroute.kernel.status import policy_counters
from markroute.lab import Lab
from markroute.lab.frames import frame
from markroute.plan import Plan
from markroute.plan.nftjson import json_default
from markroute.sim.datatypes import L4_PROTOCOLS

pytestmark = KERNEL


def deciding_policies(lab: Lab, sender: str, router: str, plan: Plan, packets: list[dict[str, Any]]) -> list[str | None]:
    """Load PLAN's table into ROUTER, send each packet, and read which policy counted it."""
    document = {"nftables": [{"add": obj} for obj in plan.nft]}
    lab.run(router, ["nft", "delete", "table", "inet", plan.table_name], check=False)
    lab.run(router, ["nft", "-j", "-f", "-"], input=json.dumps(document, default=json_default))
    macs = {name: json.loads(lab.run(router, ["ip", "-j", "link", "show", name]).stdout)[0]["address"] for name in IIFS}
    sockets: dict[str, socket.socket] = {}
    with netns.inside(sender):
        for number, name in enumerate(IIFS):
            sockets[name] = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
            sockets[name].bind((f"s{number}", 0))
    decided: list[str | None] = []
    before = counts(lab, router, plan)
    try:
        for packet in packets:
            sockets[packet["iif"]].send(frame({**packet, "proto": L4_PROTOCOLS[packet["proto"]], "src_mac": packet["mac"],
                                               "dst_mac": macs[packet["iif"]]}))
            after = counts(lab, router, plan)
            moved = [name for name in after if after[name] != before.get(name, 0)]
            assert len(moved) <= 1, moved
            decided.append(moved[0] if moved else None)
            before = after
    finally:
        for sock in sockets.values():
            sock.close()
    return decided


def counts(lab: Lab, router: str, plan: Plan) -> dict[str, int]:
    listing = json.loads(lab.run(router, ["nft", "-j", "list", "table", "inet", plan.table_name]).stdout)["nftables"]
    return {name: packets for name, (packets, _) in policy_counters(list(plan.policies), rule_counters(listing)).items()}


@pytest.mark.parametrize("seed", range(3))
def test_kernel_picks_the_same_policy_with_and_without_maps(tmp_path: Path, seed: int) -> None:
    rng = random.Random(1000 + seed)
    model = random_model(tmp_path, rng)
    packets = [p for p in (random_flow_args(rng, model) for _ in range(120)) if not p["local"]][:80]
    with Lab() as lab:
        sender = lab.add_ns("snd")
        router = lab.add_ns("rtr")
        for number, name in enumerate(IIFS):
            lab.veth(sender, f"s{number}", router, name)
            lab.addr(router, name, f"192.168.{number}.1/24")
        merged = compile_plan(model, merge_min=2)
        naive = compile_plan(model, merge_min=None)
        assert merged.nft != naive.nft
        with_maps = deciding_policies(lab, sender, router, merged, packets)
        one_rule_each = deciding_policies(lab, sender, router, naive, packets)
    assert with_maps == one_rule_each
    assert sum(name is not None for name in with_maps) >= len(packets) // 4


def test_text_rendering_of_merged_maps_loads_as_the_json_does(tmp_path: Path) -> None:
    """`plan --format nft` shows merged maps (concatenations, quoted names) the way nft reads them."""
    from markroute.kernel.nft import normalise
    from markroute.plan import nfttext

    model = random_model(tmp_path, random.Random(5))
    plan = compile_plan(model, merge_min=2)
    listings = []
    with Lab() as lab:
        router = lab.add_ns("rtr")
        for load in (["nft", "-f", "-"], ["nft", "-j", "-f", "-"]):
            text = nfttext.render(plan.nft_document()) if "-j" not in load else json.dumps(
                {"nftables": [{"add": obj} for obj in plan.nft]}, default=json_default)
            lab.run(router, load, input=text)
            listing = json.loads(lab.run(router, ["nft", "-j", "list", "table", "inet", plan.table_name]).stdout)
            listings.append(normalise(listing["nftables"][1:]))
            lab.run(router, ["nft", "delete", "table", "inet", plan.table_name])
    assert listings[0] == listings[1]
    assert any("vmap" in json.dumps(obj) and "pol_" in json.dumps(obj) for obj in listings[0])
