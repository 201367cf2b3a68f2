"""Fixtures shared by the kernel tests: the namespace lab and markroute run inside it.

Kernel tests (``@pytest.mark.kernel``) need root for network namespaces. They are
skipped only on a developer machine without root; in CI (CI=true) they always run, so
a missing privilege fails loudly there instead of silently skipping.

The end-to-end tests drive markroute the way a user does: through the CLI with
``--netns``, with a config file written for the lab's interface names and addresses.
Whatever a test applies is removed again at teardown even when the test fails, so no
state is left under /run/markroute for namespaces that are gone.
"""

from __future__ import annotations

import json
import math
import re
import subprocess
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from kernelhelp import (
    NO_NAMESPACES,
    REPO,
    markroute,
    own_routes,
    own_rules,
    view,
    write_config,
)

from markroute.kernel.state import directory as state_directory
from markroute.lab import Lab

EXAMPLES = REPO / "examples"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Skip kernel tests without root, except in CI where they must run."""
    if not NO_NAMESPACES:
        return
    skip = pytest.mark.skip(reason="needs root for network namespaces (always runs in CI)")
    for item in items:
        if item.get_closest_marker("kernel"):
            item.add_marker(skip)


def existing_namespaces() -> set[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True)
    return {line.split()[0] for line in out.stdout.splitlines() if line.strip()}


@pytest.fixture
def live_namespaces() -> Callable[[], set[str]]:
    """The names `ip netns list` shows right now (a function: call it when needed)."""
    return existing_namespaces


@pytest.fixture
def lab() -> Iterator[Lab]:
    """A lab that is closed after the test, checking nothing was left behind."""
    with Lab() as the_lab:
        yield the_lab
    assert not set(the_lab.namespaces) & existing_namespaces()


class PacketCounters:
    """Named nft counters in a table of their own (``inet observe``) at one hook of *ns*.

    *matches* maps a counter name to an nft match; a packet passing the hook that
    satisfies it is counted there. Tests use it to see which interface a packet left
    by, or what source address it had, without trusting markroute's own counters.
    """

    TABLE = "observe"

    def __init__(self, lab: Lab, ns: str, hook: str, matches: Mapping[str, str]) -> None:
        self.lab, self.ns = lab, ns
        counters = "".join(f"    counter {name} {{}}\n" for name in matches)
        rules = "".join(f'        {match} counter name "{name}"\n' for name, match in matches.items())
        lab.nft(
            ns,
            f"table inet {self.TABLE} {{\n{counters}"
            f"    chain {hook} {{\n        type filter hook {hook} priority 0; policy accept;\n{rules}"
            "    }\n}\n",
        )

    def __getitem__(self, name: str) -> int:
        return self.lab.nft_counter(self.ns, "inet", self.TABLE, name)


@pytest.fixture
def packet_counters(lab: Lab) -> Callable[[str, str, Mapping[str, str]], PacketCounters]:
    """``packet_counters(ns, hook, {name: match})``: see :class:`PacketCounters`."""
    return lambda ns, hook, matches: PacketCounters(lab, ns, hook, matches)


def _outcome(proc: subprocess.CompletedProcess[str]) -> str:
    return f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"


def _without_counts(value: Any) -> Any:
    """An nft JSON object with counter values removed: traffic changes them, not markroute."""
    if isinstance(value, dict):
        return {k: _without_counts(v) for k, v in value.items() if k not in ("packets", "bytes")}
    if isinstance(value, list):
        return [_without_counts(v) for v in value]
    return value


class MarkrouteCli:
    """markroute's CLI aimed at namespaces of one lab, with a before/after comparison.

    `apply` records a view of the namespace (kernelhelp.view: ruleset, rules, routes,
    net sysctls) before markroute first touches it; `down` asserts that the namespace
    shows exactly that again and that nothing of markroute is left, including its
    record under /run/markroute.
    """

    def __init__(self, lab: Lab, workdir: Path) -> None:
        self.lab = lab
        self.workdir = workdir
        self.before: dict[str, dict[str, Any]] = {}
        self.configs = 0

    def write(self, config: str, files: Mapping[str, str] | None = None) -> str:
        """Write a config (and files it names, relative to it) into a fresh directory."""
        self.configs += 1
        folder = self.workdir / f"config{self.configs}"
        folder.mkdir()
        for name, text in (files or {}).items():
            (folder / name).write_text(text)
        return write_config(folder, config)

    def apply(self, ns: str, config: str, files: Mapping[str, str] | None = None) -> str:
        """Apply *config* inside *ns*; its stdout. Fails the test unless exit code 0."""
        self.before.setdefault(ns, self.view(ns))
        proc = markroute("apply", "-c", self.write(config, files), "--netns", ns)
        assert proc.returncode == 0, _outcome(proc)
        return proc.stdout

    def status(self, ns: str) -> dict[str, Any]:
        """`markroute status --json` of *ns*; fails the test on drift or error."""
        proc = markroute("status", "--netns", ns, "--json")
        assert proc.returncode == 0, _outcome(proc)
        report: dict[str, Any] = json.loads(proc.stdout)
        return report

    def policy_packets(self, ns: str) -> dict[str, int]:
        """Packets counted per policy: each policy counts the first packets of connections."""
        return {p["name"]: p["packets"] for p in self.status(ns)["policies"]}

    def down(self, ns: str) -> None:
        """`markroute down`, then check *ns* is exactly as before the first apply."""
        proc = markroute("down", "--netns", ns)
        assert proc.returncode == 0, _outcome(proc)
        before = self.before.pop(ns)
        assert own_rules(self.lab, ns) == [] and own_routes(self.lab, ns) == []
        assert not state_directory(ns).exists()
        after = self.view(ns)
        for part in before:
            assert after[part] == before[part], f"{part} differs after down in {ns}"

    def close(self) -> None:
        """Remove markroute from namespaces a failed test left applied."""
        for ns in list(self.before):
            markroute("down", "--netns", ns)
        self.before.clear()

    def view(self, ns: str) -> dict[str, Any]:
        """kernelhelp.view without counter values: traffic changes them, not markroute."""
        seen = view(self.lab, ns)
        seen["nftables"] = _without_counts(seen["nftables"])
        return seen


@pytest.fixture
def markroute_cli(lab: Lab, tmp_path: Path) -> Iterator[MarkrouteCli]:
    """Apply configs in the lab's namespaces; whatever a test leaves applied is removed."""
    runner = MarkrouteCli(lab, tmp_path)
    try:
        yield runner
    finally:
        runner.close()


def adapt_example(name: str, replacements: Mapping[str, str]) -> str:
    """The text of ``examples/NAME`` with whole tokens replaced for the lab, all at once.

    Every key must occur, so a changed example fails loudly instead of letting a
    test silently exercise something else than the seed scenario.
    """
    text = (EXAMPLES / name).read_text()
    if not replacements:
        return text
    keys = sorted(replacements, key=len, reverse=True)
    pattern = re.compile(r"(?<![\w.:])(" + "|".join(map(re.escape, keys)) + r")(?![\w.:])")
    found: set[str] = set()

    def substitute(match: re.Match[str]) -> str:
        found.add(match.group(1))
        return replacements[match.group(1)]

    text = pattern.sub(substitute, text)
    missing = set(replacements) - found
    assert not missing, f"{sorted(missing)} do not occur in examples/{name}"
    return text


@pytest.fixture
def example() -> Callable[[str, Mapping[str, str]], str]:
    """:func:`adapt_example`, for tests that template the shipped examples."""
    return adapt_example


def binomial_interval(n: int, p: float, alpha: float) -> tuple[int, int]:
    """Central interval [lo, hi] holding Binomial(n, p) with probability >= 1 - alpha.

    Exact: each tail outside it has probability <= alpha / 2, summed from the
    binomial pmf (in logs, so n in the thousands does not overflow).
    """
    log_p, log_q = math.log(p), math.log1p(-p)

    def pmf(k: int) -> float:
        log_comb = math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1)
        return math.exp(log_comb + k * log_p + (n - k) * log_q)

    lo, tail = 0, pmf(0)
    while tail <= alpha / 2:
        lo += 1
        tail += pmf(lo)
    hi, tail = n, pmf(n)
    while tail <= alpha / 2:
        hi -= 1
        tail += pmf(hi)
    return lo, hi


def check_split(counts: Mapping[Any, int], weights: Mapping[Any, int], alpha: float = 1e-6) -> None:
    """Assert that per-member connection counts fit weighted random balancing.

    Each new connection picks member i independently with p_i = w_i / sum(w)
    (nftables `numgen random mod sum(w)` over the weight ranges), so member i's
    count is Binomial(n, p_i). Each member's count must lie in its exact central
    interval of level alpha / k (k members, Bonferroni), so a correct balancer fails
    this check with probability below alpha (1e-6: one spurious failure in a
    million runs), while a wrong split (equal shares, one member unused) falls far
    outside it at n >= 1000.
    """
    assert set(counts) <= set(weights), f"connections outside the group: {dict(counts)}"
    n, total = sum(counts.values()), sum(weights.values())
    for member, weight in weights.items():
        lo, hi = binomial_interval(n, weight / total, alpha / len(weights))
        assert lo <= counts.get(member, 0) <= hi, (
            f"{member}: {counts.get(member, 0)} of {n} connections, expected {lo}..{hi} "
            f"for weight {weight}/{total} (all counts: {dict(counts)})"
        )


@pytest.fixture
def weighted_split() -> Callable[[Mapping[Any, int], Mapping[Any, int]], None]:
    """:func:`check_split`: assert counts per uplink match balance weights."""
    return check_split

