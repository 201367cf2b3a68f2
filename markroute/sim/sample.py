"""`--flows N`: many new connections of one flow, each drawing its own random numbers.

For a fixed flow the only thing that differs between connections is what `numgen`
(and a multipath route) draws, so the walks `Simulator.explore` found form a decision
tree: each node is one draw with its weights, each leaf an outcome. Sampling a
connection is walking that tree with real random draws, which is what the kernel does
per connection; walking it for N connections at once (a multinomial split per node)
makes a million connections take well under a second.
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass, field
from itertools import accumulate
from typing import Any

from markroute.sim.trace import Leaf, Outcome


@dataclass
class Node:
    """One draw: its weights and, per option, the next draw or the outcome key."""

    weights: tuple[int, ...] = ()
    children: dict[int, Node | tuple[Any, ...]] = field(default_factory=dict)


def decision_tree(leaves: list[Leaf]) -> Node | tuple[Any, ...]:
    """The draws of `leaves` as a tree whose leaves are `Outcome.key()` tuples."""
    if len(leaves) == 1 and not leaves[0].taken:
        return leaves[0].path.outcome.key()
    root = Node()
    for leaf in leaves:
        node = root
        for depth, (index, (weights, _)) in enumerate(zip(leaf.taken, leaf.points)):
            node.weights = weights
            if depth == len(leaf.taken) - 1:
                node.children[index] = leaf.path.outcome.key()
            else:
                child = node.children.setdefault(index, Node())
                assert isinstance(child, Node)
                node = child
    return root


def sample(tree: Node | tuple[Any, ...], flows: int, rng: random.Random) -> Counter[tuple[Any, ...]]:
    """How many of `flows` new connections end in each outcome."""
    counts: Counter[tuple[Any, ...]] = Counter()
    pending: list[tuple[Node | tuple[Any, ...], int]] = [(tree, flows)]
    while pending:
        node, count = pending.pop()
        if not isinstance(node, Node):
            counts[node] += count
            continue
        options = list(range(len(node.weights)))
        drawn = Counter(rng.choices(options, cum_weights=list(accumulate(node.weights)), k=count))
        for index, times in drawn.items():
            pending.append((node.children[index], times))
    return counts


def split(leaves: list[Leaf], flows: int, seed: int | None = None) -> list[dict[str, Any]]:
    """Expected and sampled share of each outcome over `flows` new connections."""
    outcomes: dict[tuple[Any, ...], Outcome] = {}
    expected: Counter[tuple[Any, ...]] = Counter()
    for leaf in leaves:
        key = leaf.path.outcome.key()
        outcomes.setdefault(key, leaf.path.outcome)
        expected[key] += leaf.path.probability  # type: ignore[assignment]
    counts = sample(decision_tree(leaves), flows, random.Random(seed))
    rows = []
    for key, outcome in sorted(outcomes.items(), key=lambda item: -expected[item[0]]):
        rows.append({
            "outcome": outcome.label(),
            "verdict": outcome.verdict,
            "oif": outcome.oif,
            "mark": hex(outcome.mark),
            "expected": expected[key],
            "sampled": counts[key],
            "fraction": counts[key] / flows if flows else 0.0,
        })
    return rows
