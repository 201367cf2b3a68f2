"""Set elements sent over netlink read back from `nft` exactly as the compiler writes them,
and the ruleset generation moves on with every transaction.

apply keeps a record of the elements it loaded and compares later listings with it, so
the elements `nftnetlink` packs must come back from nft 1.0.6 in the very form
`nftjson.address_element` writes: prefixes, ranges, single addresses, neighbours,
and the intervals at both ends of the address space (open intervals have no end
element). A refused batch must change nothing.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator

import pytest
from kernelhelp import KERNEL

from markroute.kernel import KernelError, nftnetlink
from markroute.kernel.netns import inside
from markroute.kernel.nftnetlink import SetChange, generation, table_exists, update
from markroute.lab import Lab
from markroute.plan.nftjson import address_element
from markroute.values import Interval

pytestmark = KERNEL
TOP4, TOP6 = (1 << 32) - 1, (1 << 128) - 1
DOC6 = 0x20010DB8 << 96
EDGES4: tuple[Interval, ...] = (
    (0, 0xFFFFFF),                  # 0.0.0.0/8: starts at the bottom
    (0x0A000000, 0x0A0000FF),       # 10.0.0.0/24
    (0x0A000100, 0x0A0001FF),       # 10.0.1.0/24, its neighbour: one ends where the other starts
    (0x0B000005, 0x0B000005),       # a single address
    (0x0C000001, 0x0C000009),       # a range that is no prefix
    (0xFFFFFF00, TOP4),             # 255.255.255.0/24: reaches the top, an open interval
)
EDGES6: tuple[Interval, ...] = ((0, 0xFF), (DOC6, DOC6 + (1 << 96) - 1), (DOC6 + (1 << 100), DOC6 + (1 << 100)),
                                (TOP6 - 0xFF, TOP6))


@pytest.fixture
def sets() -> Iterator[tuple[Lab, str]]:
    with Lab() as lab:
        ns = lab.add_ns("sets")
        lab.nft(ns, "table inet t {\n"
                    " set a { type ipv4_addr; flags interval; }\n"
                    " set b { type ipv6_addr; flags interval; }\n"
                    " set whole { type ipv4_addr; flags interval; }\n"
                    "}")
        yield lab, ns


def listed(lab: Lab, ns: str, name: str) -> list[object]:
    document = json.loads(lab.run(ns, ["nft", "-j", "list", "set", "inet", "t", name]).stdout)
    return next(item["set"] for item in document["nftables"] if "set" in item).get("elem", [])


def written(version: int, intervals: tuple[Interval, ...]) -> list[object]:
    return [address_element(version, interval) for interval in sorted(intervals)]


def test_loaded_elements_list_as_the_compiler_writes_them(sets: tuple[Lab, str]) -> None:
    lab, ns = sets
    with inside(ns):
        update("t", [SetChange("a", 4, added=EDGES4), SetChange("b", 6, added=EDGES6),
                     SetChange("whole", 4, added=((0, TOP4),))])
    assert listed(lab, ns, "a") == written(4, EDGES4)
    assert listed(lab, ns, "b") == written(6, EDGES6)
    assert listed(lab, ns, "whole") == [{"prefix": {"addr": "0.0.0.0", "len": 0}}]


def test_change_replaces_intervals_in_place_and_its_inverse_undoes_it(sets: tuple[Lab, str]) -> None:
    """Removed and added intervals may share a start (10.0.0.0/24 grows to /23): deletes go first."""
    lab, ns = sets
    change = SetChange("a", 4, removed=(EDGES4[1], EDGES4[2], EDGES4[5]),
                       added=((0x0A000000, 0x0A0001FF), (0xFFFFFE00, TOP4), (0xC0000200, 0xC00002FF)))
    with inside(ns):
        update("t", [SetChange("a", 4, added=EDGES4)])
        update("t", [change])
        after = listed(lab, ns, "a")
        update("t", [change.inverse()])
    wanted = (set(EDGES4) - set(change.removed)) | set(change.added)
    assert after == written(4, tuple(wanted))
    assert listed(lab, ns, "a") == written(4, EDGES4)


@pytest.mark.parametrize("bad", [
    SetChange("a", 4, removed=((0x01000000, 0x010000FF),)),   # not in the set
    SetChange("a", 4, added=((0x0A000080, 0x0A0000FF),)),     # overlaps 10.0.0.0/24
])
def test_refused_batch_changes_nothing(sets: tuple[Lab, str], bad: SetChange) -> None:
    lab, ns = sets
    good = SetChange("b", 6, added=EDGES6)  # earlier in the same batch: must not stay either
    with inside(ns):
        update("t", [SetChange("a", 4, added=EDGES4)])
        with pytest.raises(KernelError, match="set a"):
            update("t", [good, bad])
    assert listed(lab, ns, "a") == written(4, EDGES4)
    assert listed(lab, ns, "b") == []


def test_many_elements_span_several_messages(sets: tuple[Lab, str]) -> None:
    """A netlink attribute holds at most 64 KiB: 20,000 intervals need several messages in one batch."""
    lab, ns = sets
    intervals = tuple((0x0A000000 + 512 * i, 0x0A000000 + 512 * i + 255) for i in range(20_000))
    with inside(ns):
        update("t", [SetChange("a", 4, added=intervals)])
    assert listed(lab, ns, "a") == written(4, intervals)


def test_generation_counts_every_transaction(sets: tuple[Lab, str]) -> None:
    """Anyone's transaction, in any table, moves the generation on; reading it changes nothing."""
    lab, ns = sets
    with inside(ns):
        first = generation()
        assert generation() == first
        update("t", [SetChange("a", 4, added=EDGES4[:1])])
        second = generation()
    lab.run(ns, ["nft", "add", "table", "ip", "other"])
    with inside(ns):
        third = generation()
    assert first < second < third


def test_table_exists_answers_for_our_family_and_name_only(sets: tuple[Lab, str]) -> None:
    lab, ns = sets
    with inside(ns):
        assert table_exists("t") and not table_exists("markroute")
    lab.run(ns, ["nft", "add", "table", "ip", "markroute"])  # the name, in another family
    with inside(ns):
        assert not table_exists("markroute")
    lab.run(ns, ["nft", "add", "table", "inet", "markroute"])
    with inside(ns):
        assert table_exists("markroute") and not table_exists("markroute2")


@pytest.fixture
def kept(monkeypatch: pytest.MonkeyPatch) -> Iterator[nftnetlink.KeptSocket]:
    """Element batches through a kept socket, as in the daemon (`keep_batch_socket`); a fresh one per test."""
    batches = nftnetlink.KeptSocket()
    monkeypatch.setattr(nftnetlink, "_batches", batches)
    monkeypatch.setattr(nftnetlink, "_keeping_batches", True)
    yield batches
    if batches.kept is not None:
        batches.kept[1].close()


def test_a_kept_batch_socket_serves_batch_after_batch_and_follows_the_namespace(
        sets: tuple[Lab, str], kept: nftnetlink.KeptSocket) -> None:
    """One socket for every batch in a namespace, a refused batch included (its answers are all
    read, so none is left for the next); in another namespace, a socket of that namespace."""
    lab, ns = sets
    other = lab.add_ns("other")
    lab.nft(other, "table inet t {\n set a { type ipv4_addr; flags interval; }\n}")
    with inside(ns):
        update("t", [SetChange("a", 4, added=EDGES4[:2])])
        assert kept.kept is not None
        first = kept.kept[1]
        with pytest.raises(KernelError, match="set a"):
            update("t", [SetChange("a", 4, removed=((0x01000000, 0x010000FF),))])
        update("t", [SetChange("a", 4, added=EDGES4[2:])])
        assert kept.kept is not None and kept.kept[1] is first
    assert listed(lab, ns, "a") == written(4, EDGES4)
    with inside(other):
        update("t", [SetChange("a", 4, added=EDGES4[:1])])
    assert kept.kept is not None and kept.kept[1] is not first and first.fileno() == -1, "the old one is closed"
    assert listed(lab, other, "a") == written(4, EDGES4[:1])
    assert listed(lab, ns, "a") == written(4, EDGES4)


def test_threads_sharing_the_kept_batch_socket_each_get_their_own_answers(
        sets: tuple[Lab, str], kept: nftnetlink.KeptSocket) -> None:
    """apply's filling thread and the main thread may both send batches: one at a time through
    the socket, so no thread reads another's acknowledgements (a refused batch fails only itself).
    Without `KeptSocket`'s lock this failed in 1 run of 1 at 400 batches a thread, 1 of 3 at 200."""
    lab, ns = sets
    failures: list[str] = []

    def send(name: str, base: int, refused: bool) -> None:
        with inside(ns):
            for i in range(400):
                interval = (base + 512 * i, base + 512 * i + 255)
                try:
                    update("t", [SetChange(name, 4, added=(interval,))])
                    if refused:
                        update("t", [SetChange(name, 4, removed=((1, 1),))])
                        failures.append(f"{name}: a refused batch was acknowledged")
                except KernelError as exc:
                    if not refused or "set " + name not in str(exc):
                        failures.append(f"{name}: {exc}")

    threads = [threading.Thread(target=send, args=("a", 0x0A000000, False)),
               threading.Thread(target=send, args=("whole", 0x0B000000, True))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert failures == []
    assert len(listed(lab, ns, "a")) == 400 and len(listed(lab, ns, "whole")) == 400
