"""A JSON batch streamed to nft as it is encoded (`nft._fed`) is still one transaction.

The pieces must add up to exactly the document `_dumps` writes whole; a batch many
times the pipe's size goes in complete; one nft refuses changes nothing and says why;
and encoding that fails half way leaves no nft process behind and nothing loaded.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from kernelhelp import KERNEL

from markroute.kernel import KernelError, nft
from markroute.kernel.netns import inside
from markroute.lab import Lab

TABLE = {"table": {"family": "inet", "name": "streamed"}}


def chains(count: int) -> list[dict[str, Any]]:
    """COUNT commands adding a chain with one rule each (about 200 bytes a command)."""
    commands: list[dict[str, Any]] = [{"add": TABLE}]
    for n in range(count):
        commands.append({"add": {"chain": {"family": "inet", "table": "streamed", "name": f"c{n}"}}})
        commands.append({"add": {"rule": {"family": "inet", "table": "streamed", "chain": f"c{n}",
                                          "comment": f"rule {n}", "expr": [{"counter": None}, {"accept": None}]}}})
    return commands


@pytest.mark.parametrize("count", [0, 1, nft.PIECE - 1, nft.PIECE, 3 * nft.PIECE + 7])
def test_pieces_make_the_whole_document(count: int) -> None:
    commands = [{"add": {"chain": {"name": f"c{n}"}}} for n in range(count)]
    assert "".join(nft._encoded(commands)) == nft._dumps({"nftables": commands})


def listed_chains(lab: Lab, ns: str) -> list[str]:
    listing = json.loads(lab.run(ns, ["nft", "-j", "list", "chains"]).stdout)["nftables"]
    return [item["chain"]["name"] for item in listing if "chain" in item and item["chain"]["table"] == "streamed"]


@KERNEL
def test_a_batch_far_bigger_than_the_pipe_goes_in_whole(lab: Lab) -> None:
    ns = lab.add_ns("stream")
    loading = threading.Event()
    with inside(ns):
        nft.run_batch(chains(2 * nft.PIECE), loading=loading)
    assert loading.is_set()
    assert sorted(listed_chains(lab, ns)) == sorted(f"c{n}" for n in range(2 * nft.PIECE))
    rules = json.loads(lab.run(ns, ["nft", "-j", "list", "chain", "inet", "streamed", "c1999"]).stdout)["nftables"]
    assert [item["rule"]["comment"] for item in rules if "rule" in item] == ["rule 1999"]


@KERNEL
def test_a_refused_streamed_batch_changes_nothing(lab: Lab) -> None:
    ns = lab.add_ns("stream")
    commands = chains(2 * nft.PIECE)
    commands.append({"add": {"rule": {"family": "inet", "table": "streamed", "chain": "nowhere",
                                      "expr": [{"accept": None}]}}})
    with inside(ns), pytest.raises(KernelError, match="^nft: .*Could not process rule"):
        nft.run_batch(commands)
    assert "streamed" not in lab.run(ns, ["nft", "list", "tables"]).stdout


@KERNEL
def test_encoding_that_fails_half_way_loads_nothing(lab: Lab) -> None:
    ns = lab.add_ns("stream")
    whole = list(nft._encoded(chains(2 * nft.PIECE)))

    def broken() -> Iterator[str]:
        yield from whole[:len(whole) // 2]
        raise ValueError("encoding failed")

    loading = threading.Event()
    with inside(ns), pytest.raises(ValueError, match="encoding failed"):
        nft._fed(["-j", "-f", "-"], broken(), loading)
    assert loading.is_set()  # a thread waiting for the hand-over is not left waiting
    assert "streamed" not in lab.run(ns, ["nft", "list", "tables"]).stdout
