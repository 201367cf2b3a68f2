"""`markroute check`: every broken config in `tests/broken/` is reported exactly as its
header says, by the real command line, and nothing else is reported.

Each corpus file starts with comment lines `# expect: [FILE:]LINE:COL SEVERITY: TEXT`;
FILE (for diagnostics in a set file) is relative to the corpus file. The command must
print exactly one stderr line per expectation, at exactly that position, containing
that text, exit 1 when any error is expected and 0 otherwise, and never a traceback.

The validator is also fuzzed: valid configs are mutated key by key (dropped, renamed,
given values of every other type) and byte by byte, and `load_model` must answer each
with diagnostics, never an exception.
"""

from __future__ import annotations

import json
import os
import random
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from kernelhelp import REPO, markroute
from ruamel.yaml import YAML

from markroute.compile import compile_plan
from markroute.config import load_model
from markroute.config.source import Node, SourceError, load
from markroute.diagnostics import Diagnostic

CORPUS = REPO / "tests" / "broken"
EXAMPLES = REPO / "examples"
EXPECT = re.compile(
    r"^# expect: (?:(?P<file>[^:\s]+):)?(?P<line>\d+):(?P<col>\d+) (?P<severity>error|warning): (?P<text>.+)$"
)
REPORTED = re.compile(r"^(?P<file>.+?):(?P<line>\d+):(?P<col>\d+): (?P<severity>error|warning): (?P<text>.+)$")

ISSUE_EXAMPLE = """\
uplinks:                       # every way out: an interface plus (usually) a gateway
  isp_a:
    interface: eth0
    gateway: 10.0.0.1          # IPv4 next hop; `gateway6:` for IPv6; omit on point-to-point links
    nat: masquerade            # masquerade | none (default) | {snat: ADDRESS}
  isp_b:
    interface: eth1
    gateway: 10.0.1.1
    nat: masquerade
groups:
  both:
    balance: {isp_a: 4, isp_b: 6}   # weighted, per new connection, sticky for its life
  primary:
    failover: [isp_a, both]         # first usable member wins; members: uplinks or groups
policies:                      # first match wins; decided on a connection's first packet
  - name: to-cloudflare
    from: 192.168.1.0/24
    to: 1.1.1.1
    via: isp_a
  - name: mail
    proto: tcp
    dport: 25
    via: isp_b
  - name: lan-local
    to: [172.17.0.0/16, 10.0.0.0/8]
    via: main                  # keep the ordinary routing (main table)
  - name: rest
    via: both
"""

SEED_002_SNIPPET = """\
uplinks:
  router1: {interface: eth0, gateway: 192.168.10.1}
  router2:
    interface: eth0
    gateway: 192.168.10.2
    ingress: {mac: "52:54:00:c2:a5:43", proto: tcp, dport: 80, not: {from: 192.168.10.0/24}}
"""

# Every key of the config contract, so the fuzzer has every validator path to break.
EVERY_KEY = """\
uplinks:
  isp_a:
    interface: eth0
    gateway: 192.0.2.1
    gateway6: "2001:db8::1"
    nat: masquerade
    table: 201
    mark: 0x300
    inbound: {policy: drop, allow: [{proto: tcp, dport: [22, 8000-8080]}]}
    check: {targets: [198.51.100.53, "198.51.100.54:53"], method: icmp, interval: 200ms,
            timeout: 0.5, down: 3, up: 2, max_loss: 20%, max_rtt: 1s}
  isp_b:
    interface: eth1
    gateway: 198.51.100.1
    nat: {snat: 198.51.100.2}
  router2:
    interface: eth1
    gateway: 198.51.100.9
    ingress: {mac: "52:54:00:c2:a5:43", proto: tcp, dport: 80, not: {from: 192.168.10.0/24}}
sets:
  cdn: [203.0.113.0/24, "2001:db8:cd::/48"]
groups:
  both: {balance: {isp_a: 4, isp_b: 6}}
  primary: {failover: [isp_a, both]}
policies:
  - name: voip
    dscp: [ef, 40]
    proto: udp
    sport: 5060-5061
    via: primary
  - name: cdn
    to: "@cdn"
    iif: [lan0, lan1]
    mac: "52:54:00:00:00:01"
    via: isp_b
  - name: own
    local: true
    via: isp_a
  - name: no-dns
    from: 192.168.1.0/24
    not: {proto: udp, dport: 53}
    via: both
  - name: black
    to: 192.0.2.128-192.0.2.200
    via: blackhole
settings:
  mark_mask: 0xff00
  rule_priority: 9000
  table_base: 300
  rp_filter: strict
  last_resort: unreachable
  reply_via_ingress: true
  forwarding: true
"""


@dataclass(frozen=True)
class Expected:
    file: Path
    line: int
    col: int
    severity: str
    text: str


def expectations(path: Path) -> list[Expected]:
    """The `# expect:` lines of a corpus file (read as bytes: some files are not UTF-8)."""
    found = []
    for raw in path.read_bytes().decode("latin-1").splitlines():
        if not raw.startswith("#"):
            break
        match = EXPECT.match(raw)
        if match:
            file = (path.parent / match["file"]) if match["file"] else path
            found.append(Expected(file.resolve(), int(match["line"]), int(match["col"]),
                                  match["severity"], match["text"]))
    return found


def run_check(*args: str) -> subprocess.CompletedProcess[str]:
    """The real command line, as a user runs it."""
    return markroute("check", *args)


CORPUS_FILES = sorted(CORPUS.glob("*.yaml"))


def test_corpus_is_large_enough() -> None:
    assert len(CORPUS_FILES) >= 45
    assert all(expectations(path) for path in CORPUS_FILES), "every corpus file states what it expects"


@pytest.mark.parametrize("path", CORPUS_FILES, ids=[p.stem for p in CORPUS_FILES])
def test_broken_config_is_reported_where_it_is_wrong(path: Path) -> None:
    expected = expectations(path)
    result = run_check("-c", str(path))

    assert "Traceback" not in result.stderr
    assert result.returncode == (1 if any(e.severity == "error" for e in expected) else 0), result.stderr
    reported = result.stderr.splitlines()
    unmatched = list(expected)
    for line in reported:
        match = REPORTED.match(line)
        assert match, f"not a diagnostic line: {line!r}"
        position = (Path(match["file"]).resolve(), int(match["line"]), int(match["col"]), match["severity"])
        hit = next((e for e in unmatched if (e.file, e.line, e.col, e.severity) == position and e.text in line), None)
        assert hit is not None, f"unexpected diagnostic: {line!r}\nexpected: {unmatched}"
        unmatched.remove(hit)
    assert not unmatched, f"not reported: {unmatched}\ngot:\n{result.stderr}"
    if result.returncode == 0:
        assert result.stdout.startswith(f"{path}: ok:")
    else:
        assert result.stdout == ""


def test_json_output_lists_every_diagnostic() -> None:
    path = CORPUS / "settings-wrong-types.yaml"
    result = run_check("-c", str(path), "--json")

    assert result.returncode == 1
    assert result.stderr == ""
    document = json.loads(result.stdout)
    assert document["valid"] is False
    assert document["errors"] == len(expectations(path))
    assert [(d["line"], d["col"], d["severity"]) for d in document["diagnostics"]] == [
        (e.line, e.col, e.severity) for e in expectations(path)
    ]
    assert all(d["file"] == str(path) and d["message"] for d in document["diagnostics"])


def test_json_output_of_a_valid_config_with_warnings(tmp_path: Path) -> None:
    path = CORPUS / "warn-unused-group.yaml"
    result = run_check("-c", str(path), "--json")

    assert result.returncode == 0
    document = json.loads(result.stdout)
    assert (document["valid"], document["errors"], document["warnings"]) == (True, 0, 1)
    assert document["diagnostics"][0]["hint"].startswith("add a policy with via: backup")


def write(tmp_path: Path, text: str, name: str = "markroute.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


@pytest.mark.parametrize("text", [ISSUE_EXAMPLE, SEED_002_SNIPPET], ids=["issue-example", "seed-002"])
def test_the_issue_examples_are_accepted_as_written(tmp_path: Path, text: str) -> None:
    result = run_check("-c", str(write(tmp_path, text)))

    assert result.returncode == 0, result.stderr
    assert "error" not in result.stderr
    assert ": ok:" in result.stdout


def test_issue_example_model_is_what_the_text_says(tmp_path: Path) -> None:
    model, diagnostics = load_model(str(write(tmp_path, ISSUE_EXAMPLE)))

    assert model is not None
    assert [p.name for p in model.policies] == ["to-cloudflare", "mail", "lan-local", "rest"]
    assert model.groups["both"].members == (("isp_a", 4), ("isp_b", 6))
    assert model.groups["primary"].members == (("isp_a", 1), ("both", 1))
    assert [d.message for d in diagnostics] == ["group 'primary' is not used by any policy"]


def test_seed_002_snippet_keeps_every_ingress_condition(tmp_path: Path) -> None:
    model, diagnostics = load_model(str(write(tmp_path, SEED_002_SNIPPET)))

    assert model is not None and diagnostics == []
    ingress = model.uplinks["router2"].ingress
    assert ingress is not None
    assert ingress.macs == ("52:54:00:c2:a5:43",)
    assert ingress.protocols == (6,) and ingress.dports == ((80, 80),)
    assert ingress.negated is not None and ingress.negated.src is not None
    assert model.uplinks["router1"].ingress is None


def test_every_key_config_is_valid(tmp_path: Path) -> None:
    model, diagnostics = load_model(str(write(tmp_path, EVERY_KEY)))

    assert [d.render() for d in diagnostics if d.severity == "error"] == []
    assert model is not None
    assert set(model.uplinks) == {"isp_a", "isp_b", "router2"}


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.yaml")), ids=lambda p: p.stem)
def test_examples_are_valid(path: Path) -> None:
    result = run_check("-c", str(path))

    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr


def test_zero_byte_file_is_empty_config(tmp_path: Path) -> None:
    result = run_check("-c", str(write(tmp_path, "")))

    assert result.returncode == 1
    assert result.stderr.strip() == f"{tmp_path / 'markroute.yaml'}:1:1: error: the config is empty " \
        "(hint: start with 'uplinks:' and describe at least one way out: interface and gateway)"


def test_missing_file_is_one_error(tmp_path: Path) -> None:
    result = run_check("-c", str(tmp_path / "nope.yaml"))

    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        f"{tmp_path / 'nope.yaml'}:1:1: error: cannot read config: No such file or directory"
    ]


def test_config_from_environment_variable(tmp_path: Path) -> None:
    path = write(tmp_path, SEED_002_SNIPPET)
    env = {**os.environ, "PYTHONPATH": str(REPO), "MARKROUTE_CONFIG": str(path)}
    result = subprocess.run([sys.executable, "-m", "markroute", "check"], capture_output=True, text=True,
                            env=env, timeout=60, check=False)

    assert result.returncode == 0
    assert result.stdout.startswith(f"{path}: ok: 2 uplinks")


def test_set_file_is_found_relative_to_the_config(tmp_path: Path) -> None:
    (tmp_path / "lists").mkdir()
    (tmp_path / "lists" / "cdn.txt").write_text("198.51.100.0/24\n203.0.113.0/24 # second\n")
    path = write(tmp_path, "uplinks:\n  a: {interface: eth0, gateway: 192.0.2.1, nat: masquerade}\n"
                           "sets:\n  cdn: {file: lists/cdn.txt}\npolicies:\n  - {to: '@cdn', via: a}\n")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    result = subprocess.run([sys.executable, "-m", "markroute", "check", "-c", "markroute.yaml"], cwd=tmp_path,
                            capture_output=True, text=True, env=env, timeout=60, check=False)

    assert result.returncode == 0, result.stderr
    model, _ = load_model(str(path))
    assert model is not None and len(model.sets["cdn"]) == 2


# -- source positions -----------------------------------------------------------------


def test_positions_of_keys_and_values(tmp_path: Path) -> None:
    root = load(str(write(tmp_path, "uplinks:\n  a:\n    interface:   eth0\n    list: [x, y]\n")))

    uplink = root.items["uplinks"].items["a"]
    assert (uplink.key_where["interface"].line, uplink.key_where["interface"].col) == (3, 5)
    assert (uplink.items["interface"].where.line, uplink.items["interface"].where.col) == (3, 18)
    assert [(e.where.line, e.where.col) for e in uplink.items["list"].elements] == [(4, 12), (4, 15)]


def test_merged_keys_point_at_the_anchor(tmp_path: Path) -> None:
    text = "base: &b {interface: eth0}\nuplinks:\n  a:\n    <<: *b\n    gateway: 192.0.2.1\n"
    root = load(str(write(tmp_path, text)))

    uplink = root.items["uplinks"].items["a"]
    assert uplink.items["interface"].scalar == "eth0"
    assert (uplink.items["interface"].where.line, uplink.items["interface"].where.col) == (1, 22)


def test_keys_that_are_not_text_are_kept_aside(tmp_path: Path) -> None:
    root = load(str(write(tmp_path, "uplinks:\n  1: x\n  null: y\n  true: z\n  [a, b]: v\n  ok: w\n")))

    uplinks = root.items["uplinks"]
    assert list(uplinks.items) == ["ok"]
    assert list(uplinks.odd_keys) == ["1", "null", "true", "[a, b]"]
    assert [(w.line, w.col) for w in uplinks.odd_keys.values()] == [(2, 3), (3, 3), (4, 3), (5, 3)]


def test_undecodable_byte_is_located(tmp_path: Path) -> None:
    path = tmp_path / "latin1.yaml"
    path.write_bytes(b"uplinks:\n  a: {interface: \xe9th0}\n")

    with pytest.raises(SourceError) as raised:
        load(str(path))
    assert (raised.value.diagnostic.where.line, raised.value.diagnostic.where.col) == (2, 18)


@pytest.mark.parametrize(("text", "position", "message"), [
    ("uplinks:\n  a: {interface: !!int eth0}\n", (2, 18), "YAML: cannot read the value 'eth0'"),
    ("uplinks:\n  a: {interface: !custom eth0}\n", (2, 18), "YAML: cannot read the value 'eth0'"),
    ("uplinks: &u\n  a: [*u]\n", (1, 10), "YAML: an alias refers to the value that contains it"),
    ("a: &a [x, x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a, *a]\n"
     "c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b, *b]\nd: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c, *c]\n"
     "e: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d, *d]\nf: &f [*e, *e, *e, *e, *e, *e, *e, *e, *e, *e]\n",
     None, "YAML: aliases repeat more than 100000 values"),
    ("uplinks: " + "[" * 100 + "]" * 100 + "\n", (1, 73), "YAML: the document is nested too deeply"),
    ("uplinks: " + "[" * 5000 + "]" * 5000 + "\n", (1, 1), "YAML: the document is nested too deeply"),
], ids=["bad-int-tag", "unknown-tag", "recursive-alias", "alias-bomb", "deep", "deeper-than-the-parser"])
def test_hostile_yaml_is_an_error_not_a_crash(
    tmp_path: Path, text: str, position: tuple[int, int] | None, message: str,
) -> None:
    model, diagnostics = load_model(str(write(tmp_path, text)))

    assert model is None
    assert len(diagnostics) == 1 and diagnostics[0].message.startswith(message)
    if position:
        assert (diagnostics[0].where.line, diagnostics[0].where.col) == position


def test_every_error_of_a_file_is_reported_at_once(tmp_path: Path) -> None:
    text = (
        "uplinks:\n"
        "  a: {interface: eth0, gateway: 192.0.2.300, nat: masq}\n"
        "policies:\n"
        "  - {via: b, dport: 0}\n"
    )
    _, diagnostics = load_model(str(write(tmp_path, text)))

    assert [(d.where.line, d.message.split(":")[0]) for d in diagnostics] == [
        (2, "gateway"), (2, "nat"), (4, "unknown uplink or group 'b' in policy 'policy-1'"), (4, "'dport'"),
    ]


# -- fuzzing --------------------------------------------------------------------------

REPLACEMENTS: tuple[Any, ...] = (
    None, True, False, 0, -1, 7, 1.5, 2**40, "", "x", "eth0", "@nope", "0xffffffff", "192.0.2.1",
    "2001:db8::1", "1-2", "52:54:00:00:00:01", [], ["x"], [None], [[1]], {}, {"x": 1}, {"from": None},
)


def _paths(data: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    """Every key and list index in a loaded document, parents first."""
    if isinstance(data, dict):
        for key, value in data.items():
            yield prefix + (key,)
            yield from _paths(value, prefix + (key,))
    elif isinstance(data, list):
        for index, value in enumerate(data):
            yield prefix + (index,)
            yield from _paths(value, prefix + (index,))


def mutants(data: Any, replacements: int = len(REPLACEMENTS)) -> Iterator[Any]:
    """Copies of `data` with one key dropped, renamed, or its value replaced by another type.

    With fewer `replacements` than there are, each path gets the next few in turn, so
    across all paths every replacement is still used.
    """
    import copy

    for number, path in enumerate(_paths(data)):
        *parents, last = path
        chosen = [(number * replacements + k) % len(REPLACEMENTS) for k in range(replacements)]
        for action in ("drop", "rename", *chosen):
            mutant = copy.deepcopy(data)
            holder = mutant
            for step in parents:
                holder = holder[step]
            if action == "drop":
                del holder[last]
            elif action == "rename":
                if not isinstance(holder, dict):
                    continue
                holder[f"{last}x"] = holder.pop(last)
            else:
                holder[last] = copy.deepcopy(REPLACEMENTS[action])  # type: ignore[index]
            yield mutant


def _as_node(data: Any, counter: list[int]) -> Node:
    """A `Node` tree straight from Python data (each value on its own line), skipping YAML."""
    from markroute.diagnostics import Where

    counter[0] += 1
    where = Where("mutant.yaml", counter[0], 1)
    if isinstance(data, dict):
        node = Node("map", where)
        for key, value in data.items():
            node.key_where[key] = where
            node.items[key] = _as_node(value, counter)
        return node
    if isinstance(data, list):
        return Node("seq", where, elements=[_as_node(item, counter) for item in data])
    return Node("scalar", where, scalar=data)


def _check_answer(model: Any, diagnostics: list[Diagnostic]) -> None:
    """Diagnostics with positions; errors exactly when there is no model; a model compiles."""
    assert all(isinstance(d, Diagnostic) and d.where.line >= 1 and d.where.col >= 1 for d in diagnostics)
    if model is None:
        assert any(d.severity == "error" for d in diagnostics)
    else:
        assert not any(d.severity == "error" for d in diagnostics)
        compile_plan(model)


FUZZ_SEEDS = {"issue": ISSUE_EXAMPLE, "seed002": SEED_002_SNIPPET, "every-key": EVERY_KEY}


@pytest.mark.parametrize("name", sorted(FUZZ_SEEDS))
def test_fuzz_every_type_at_every_key(name: str) -> None:
    """The validator itself, given every replacement at every position (no YAML, so it is quick)."""
    from markroute.config import Validator

    data = YAML(typ="safe", pure=True).load(FUZZ_SEEDS[name])
    count = 0
    for mutant in mutants(data):
        try:
            _check_answer(*Validator("mutant.yaml").run(_as_node(mutant, [0])))
        except Exception as exc:
            raise AssertionError(f"this mutant broke the validator: {mutant!r}") from exc
        count += 1
    assert count > 2 * len(list(_paths(data)))


@pytest.mark.parametrize("name", ["every-key", "issue"])
def test_fuzz_load_model_on_mutated_files(tmp_path: Path, name: str) -> None:
    """The whole path through YAML: each key dropped, renamed and given two other types."""
    data = YAML(typ="safe", pure=True).load(FUZZ_SEEDS[name])
    path = tmp_path / "mutant.yaml"
    for mutant in mutants(data, replacements=2):
        path.write_text(json.dumps(mutant, indent=1))  # JSON is YAML, and dumps fast
        try:
            _check_answer(*load_model(str(path)))
        except Exception as exc:
            raise AssertionError(f"this file broke load_model:\n{path.read_text()}") from exc


@pytest.mark.parametrize("name", ["every-key", "issue"])
def test_fuzz_text_mutations_never_raise(tmp_path: Path, name: str) -> None:
    """Truncations and byte substitutions: YAML errors, odd types and partial documents."""
    text = FUZZ_SEEDS[name].encode()
    rng = random.Random(name)
    path = tmp_path / "mutant.yaml"
    variants = [text[:cut] for cut in range(0, len(text), max(1, len(text) // 60))]
    noise = b" \t\n:-[]{},#&*!|>'\"%@`\x00\xff\xe9x1"
    for _ in range(150):
        position = rng.randrange(len(text))
        variants.append(text[:position] + bytes([rng.choice(noise)]) + text[position + 1:])
    for variant in variants:
        path.write_bytes(variant)
        try:
            _check_answer(*load_model(str(path)))
        except Exception as exc:
            raise AssertionError(f"this text broke load_model:\n{variant!r}") from exc


def test_node_describe_names_every_kind() -> None:
    from markroute.diagnostics import Where

    where = Where("f", 1, 1)
    assert [Node("scalar", where, scalar=v).describe() for v in (None, True, 1, 1.5, "x")] == [
        "nothing (null)", "a boolean", "a number", "a number", "text",
    ]
    assert Node("map", where).describe() == "a mapping"
    assert Node("seq", where).describe() == "a list"
