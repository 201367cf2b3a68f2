"""End to end: a policy driven by a set file of 10,000 prefixes.

The prefixes are random /29../32 blocks of the benchmark range 198.18.0.0/15 (each
at the start of its own /29 slot, so they never overlap) plus the /29 holding the
lab's server. Flows to an address inside a listed prefix take the set's uplink;
flows to an address next to one, or in an unlisted slot, keep the main route.
"""

from __future__ import annotations

import ipaddress
import random
from typing import Any

import pytest

from markroute.lab import Lab, router_lab

pytestmark = pytest.mark.kernel
PORT = 7000
PREFIXES = 10_000
BENCHMARK = ipaddress.IPv4Network("198.18.0.0/15")
SLOT = 29

#: After the uplinks section (isp_a, isp_b).
SET_POLICY = """
sets:
  listed: {file: prefixes.txt}
policies:
  - name: listed-via-b
    to: "@listed"
    via: isp_b
"""


def random_prefixes(
    rng: random.Random, count: int, must: str, avoid: str
) -> tuple[list[ipaddress.IPv4Network], list[str], list[str]]:
    """*count* prefixes including the /29 of *must* and none touching *avoid*.

    Returns the prefixes, addresses inside some of them and addresses outside all.
    """
    slots = list(BENCHMARK.subnets(new_prefix=SLOT))
    avoided = ipaddress.IPv4Network(f"{avoid}/{SLOT}", strict=False)
    chosen = rng.sample([s for s in slots if s != avoided], count - 1)
    prefixes = [ipaddress.IPv4Network(f"{slot.network_address}/{rng.randint(SLOT, 32)}") for slot in chosen]
    prefixes.append(ipaddress.IPv4Network(f"{must}/{SLOT}", strict=False))
    inside = [must] + [str(p.network_address + rng.randrange(p.num_addresses)) for p in rng.sample(prefixes, 4)]
    narrow = next(p for p in prefixes if p.prefixlen == 32)
    taken = set(chosen) | {avoided}
    unlisted = next(s for s in slots if s not in taken)
    outside = [avoid, str(narrow.network_address + 4), str(unlisted.network_address + 1)]
    return prefixes, inside, outside


def test_policy_from_a_10000_prefix_set_file(lab: Lab, markroute_cli: Any) -> None:
    r = router_lab(lab, isps=2)
    lab.serve_echo(r.net, PORT)
    rng = random.Random(20240101)
    prefixes, inside, outside = random_prefixes(rng, PREFIXES, must=r.server, avoid=r.server_alt)
    rng.shuffle(prefixes)
    listing = "# benchmark-range prefixes, one a line\n" + "".join(f"{p}\n" for p in prefixes)
    assert len(set(prefixes)) == PREFIXES
    config = r.uplinks_yaml(["isp_a", "isp_b"]) + SET_POLICY
    markroute_cli.apply(r.rtr, config, {"prefixes.txt": listing})

    for address in inside:
        result = lab.probe(r.lan, "tcp", address, PORT, count=5, packets=2)
        assert r.isp_counts(result["seen"]) == {1: 5}, (address, result)
    for address in outside:
        result = lab.probe(r.lan, "tcp", address, PORT, count=5, packets=2)
        assert r.isp_counts(result["seen"]) == {0: 5}, (address, result)
    assert markroute_cli.policy_packets(r.rtr)["listed-via-b"] >= 5 * len(inside)

    markroute_cli.down(r.rtr)
