"""The indexed shadowed-policy check finds exactly what comparing every pair finds.

`shadowed_policies` asks `CoverIndex` for candidates instead of trying every earlier
policy; `pairwise` below is the straightforward definition it must agree with: the
first earlier policy, in order, serving every IP family the later one serves and
covering its match (`markroute.match.covers`). Random models draw each field from
small pools of overlapping values (nested prefixes of both families, port ranges inside
others, interface and protocol subsets, `local`, `not`), so covering, nearly covering
and family mismatches are all common.
"""

from __future__ import annotations

import random

import pytest

from markroute import match as match_keys
from markroute.config.warnings import _KeyIndex, shadowed_policies
from markroute.diagnostics import Where
from markroute.model import Addresses, Group, Match, Model, Policy, Uplink
from markroute.values import address_list, merge, parse_address

PREFIXES = ("10.0.0.0/8", "10.1.0.0/16", "10.1.2.0/24", "10.1.2.3", "10.2.0.0/16", "0.0.0.0/0", "192.0.2.0/24",
            "2001:db8::/32", "2001:db8:1::/48", "2001:db8:1::5", "::/0", "10.1.0.0-10.1.3.255")
PORTS = ((80, 80), (443, 443), (1000, 2000), (1500, 1600), (0, 65535), (1999, 2001))
PROTOCOLS = (6, 17, 1, 58, 132)
NAMES = ("lan0", "lan1", "lan2")
MACS = ("02:00:00:00:00:01", "02:00:00:00:00:02")
DSCPS = (0, 10, 46)
VIAS = ("v4", "v6", "both", "group", "main")


def pairwise(model: Model) -> list[tuple[str, str]]:
    """(later, earlier) names: for each policy the first earlier one that hides it, by trying every pair."""
    found = []
    for index, later in enumerate(model.policies):
        versions = later.match.versions & model.target_versions(later.via)
        for earlier in model.policies[:index]:
            if versions <= earlier.match.versions & model.target_versions(earlier.via) and \
                    match_keys.covers(earlier.match, later.match):
                found.append((later.name, earlier.name))
                break
    return found


def indexed(model: Model) -> list[tuple[str, str]]:
    names = {p.where: p.name for p in model.policies}
    found = []
    for where, message, _ in shadowed_policies(model):
        earlier = message.split("'")[3]
        found.append((names[where], earlier))
    return found


def subset(rng: random.Random, pool: tuple, most: int = 3) -> tuple:
    return tuple(rng.sample(pool, rng.randint(1, min(most, len(pool)))))


def random_match(rng: random.Random, chance: float, nested: bool = True) -> Match:
    def maybe() -> bool:
        return rng.random() < chance

    def addresses() -> Addresses:
        return Addresses(address_list([parse_address(p) for p in subset(rng, PREFIXES, 2)]))

    return Match(
        src=addresses() if maybe() else None,
        dst=addresses() if maybe() else None,
        protocols=subset(rng, PROTOCOLS) if maybe() else None,
        sports=merge(list(subset(rng, PORTS, 2))) if maybe() else None,
        dports=merge(list(subset(rng, PORTS, 2))) if maybe() else None,
        iifs=subset(rng, NAMES) if maybe() else None,
        macs=subset(rng, MACS) if maybe() else None,
        dscps=subset(rng, DSCPS) if maybe() else None,
        local=rng.choice((True, False)) if maybe() else None,
        negated=random_match(rng, 0.3, nested=False) if nested and rng.random() < 0.1 else None,
    )


def random_model(rng: random.Random, count: int, chance: float) -> Model:
    where = Where("m.yaml", 1, 1)
    uplinks = {
        "v4": Uplink("v4", "wan0", where, 0x100, 100, gateway="192.0.2.1"),
        "v6": Uplink("v6", "wan1", where, 0x200, 101, gateway6="fe80::1"),
        "both": Uplink("both", "wan2", where, 0x300, 102, gateway="192.0.2.9", gateway6="fe80::9"),
    }
    groups = {"group": Group("group", "balance", (("v4", 1), ("v6", 1)), where)}
    policies = [Policy(f"p{i}", random_match(rng, chance), rng.choice(VIAS), Where("m.yaml", i + 1, 5))
                for i in range(count)]
    # repeat some earlier matches, as configs do, so exact duplicates are covered too
    for i in range(count // 5):
        later = rng.randrange(1, count)
        policies[later] = Policy(policies[later].name, policies[rng.randrange(later)].match, rng.choice(VIAS),
                                 policies[later].where)
    return Model(uplinks=uplinks, groups=groups, policies=tuple(policies))


@pytest.mark.parametrize("seed", range(40))
def test_index_finds_what_every_pair_finds(seed: int) -> None:
    rng = random.Random(seed)
    for _ in range(10):
        model = random_model(rng, rng.randint(2, 60), rng.choice((0.1, 0.25, 0.5)))
        assert indexed(model) == pairwise(model)


def test_index_agrees_on_a_large_model() -> None:
    rng = random.Random(1234)
    model = random_model(rng, 600, 0.3)
    expected = pairwise(model)
    assert len(expected) > 50  # the pools make covering common: the comparison means something
    assert indexed(model) == expected


def test_many_disjoint_destinations_each_hidden_by_its_own_earlier_policy() -> None:
    """The shape the index exists for: thousands of `to:` prefixes, each repeated later with a port."""
    where = Where("m.yaml", 1, 1)
    uplink = Uplink("a", "wan0", where, 0x100, 100, gateway="192.0.2.1")
    prefixes = [Addresses(address_list([parse_address(f"11.{i // 256}.{i % 256}.0/24")])) for i in range(0, 800, 2)]
    policies = [Policy(f"p{i}", Match(dst=dst), "a", Where("m.yaml", i + 1, 5)) for i, dst in enumerate(prefixes)]
    policies += [Policy(f"q{i}", Match(dst=dst, dports=((443, 443),)), "a", Where("m.yaml", 5000 + i, 5))
                 for i, dst in enumerate(prefixes) if i % 7 == 0]
    model = Model(uplinks={"a": uplink}, policies=tuple(policies))
    found = indexed(model)
    assert found == [(f"q{i}", f"p{i}") for i in range(len(prefixes)) if i % 7 == 0]
    assert found == pairwise(model)


@pytest.mark.parametrize("seed", range(10))
def test_members_kept_out_of_the_tree_are_found_as_in_it(seed: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """With every address list "big", each member is bisected in its own intervals instead of
    sitting in the segment tree: the same policies are found."""
    monkeypatch.setattr(_KeyIndex, "BIG", 1)
    rng = random.Random(seed)
    for _ in range(10):
        model = random_model(rng, rng.randint(2, 60), rng.choice((0.25, 0.5)))
        assert indexed(model) == pairwise(model)


def test_a_policy_inside_a_large_set_is_hidden_by_the_set() -> None:
    where = Where("m.yaml", 1, 1)
    uplink = Uplink("a", "wan0", where, 0x100, 100, gateway="192.0.2.1")
    big = Addresses(address_list([parse_address(f"11.{i // 256}.{i % 256}.0/24") for i in range(0, 2000, 2)]), "big")
    inside, outside = (Addresses(address_list([parse_address(p)])) for p in ("11.0.8.7", "11.0.9.7"))
    policies = (Policy("set", Match(dst=big), "a", where), Policy("in", Match(dst=inside), "a", Where("m.yaml", 2, 5)),
                Policy("out", Match(dst=outside), "a", Where("m.yaml", 3, 5)))
    model = Model(uplinks={"a": uplink}, policies=policies)
    assert len(big.addresses) > _KeyIndex.BIG
    assert indexed(model) == pairwise(model) == [("in", "set")]
