"""`check` accepts a name exactly when nftables (text and JSON) and the kernel would (issue #12, 5).

Hypothesis generates interface, policy, uplink and set names at every boundary: lengths around the
limits counted in UTF-8 bytes, nft's keywords, control characters, quotes, non-ASCII.
Each value is judged twice:

* by the validator `check` runs (`load_model`) on a config that uses it in its place
  (an uplink's interface and an `iif` match; a policy's name; an uplink's name and a
  `via`; a set's name and its `@` reference); a refusal must point at the file and a
  line where the value was written;
* by `nft -c` itself, in a throw-away network namespace (`unshare -n`), on the plan of
  the same config compiled with a harmless placeholder that is then replaced by the
  value: `plan --format nft` text through `nft -c -f`, the JSON through `nft -j -c -f`.

The property: `check` accepts <=> nft accepts both and the kernel takes the interface
name, except for the few refusals `check` makes on purpose, each named in DELIBERATE
with the words its message uses. The seed is fixed (`derandomize`), so a failure
reproduces; `max_examples` keeps the run near a minute.
"""

from __future__ import annotations

import json
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from kernelhelp import KERNEL

from markroute.compile import compile_plan
from markroute.config import load_model
from markroute.config.reader import NAME, SPECIAL_TARGETS
from markroute.diagnostics import Diagnostic
from markroute.plan import nfttext
from markroute.plan.nftjson import json_default
from markroute.values import NFT_PROTOCOL_WORDS

pytestmark = KERNEL

PLACEHOLDERS = {"interface": "zqif0", "policy": "zqpolicy", "uplink": "zqup", "set": "zqset"}
LIMITS = {"interface": 15, "policy": 121, "uplink": 31, "set": 31}  # bytes; the boundary is probed around them
EXAMPLES = {"interface": 120, "policy": 80, "uplink": 50, "set": 50}  # about a minute in all
CONFIG = """\
sets:
  {set}: [198.51.100.0/24]
uplinks:
  {uplink}: {{interface: {interface}, gateway: 192.0.2.1, nat: masquerade}}
  b: {{interface: eth9, gateway: 192.0.2.129}}
policies:
  - name: {policy}
    iif: {interface}
    to: {set_ref}
    via: {uplink}
  - {{name: rest, via: b}}
"""
VALUE_LINES = {"interface": {4, 8}, "policy": {7}, "uplink": {4, 10}, "set": {2, 9}}


def config_text(kind: str | None = None, value: str = "") -> str:
    """CONFIG with VALUE written (escaped) where KIND goes and placeholders everywhere else."""
    values = {k: yaml_string(value) if k == kind else v for k, v in PLACEHOLDERS.items()}
    set_name = value if kind == "set" else PLACEHOLDERS["set"]
    return CONFIG.format(**values, set_ref=yaml_string("@" + set_name))


KEYWORDS = sorted(NFT_PROTOCOL_WORDS | {"ip", "ip6", "inet", "ether", "vlan", "arp", "meta", "ct", "mark", "accept",
                                        "drop", "counter", "table", "chain", "jump", "goto", "iif", "oif", "lo",
                                        "th", "fib", "limit", "log", "snat", "dnat", "masquerade", "*", "$x", "-"})
ODD = "\x00\x01\x07\x1b\x7f\u0085\u00a0\u200b\u2028\ufeff\t\n \"'\\/:@*$;{}#.é€𝄞ß"


def names(max_bytes: int) -> st.SearchStrategy[str]:
    """Names around a byte limit: ASCII, 2-, 3- and 4-byte characters, odd characters and keywords."""
    def fill(unit: str, target: int) -> str:
        return unit * max(1, target // len(unit.encode()))

    around = st.builds(fill, st.sampled_from(["a", "é", "€", "𝄞"]), st.integers(max_bytes - 4, max_bytes + 4))
    mixed = st.text(alphabet=st.sampled_from(list(ODD) + list("abcXYZ019_-")), min_size=1, max_size=20)
    return st.one_of(st.sampled_from(KEYWORDS), around, mixed, st.text(min_size=1, max_size=18))


def kernel_takes_ifname(name: str) -> bool:
    """The kernel's dev_valid_name(): 1-15 bytes, not '.' or '..', no '/', ':' or whitespace."""
    return (0 < len(name.encode()) <= 15 and name not in (".", "..")
            and not any(c in "/:" or c.isspace() for c in name))


def deliberate(kind: str, value: str) -> str | None:
    """Why `check` refuses VALUE although nft and the kernel would take it (words of its message), or None."""
    if kind in ("uplink", "set"):  # names markroute uses in its own chains, sets and messages
        if value in SPECIAL_TARGETS:
            return "reserved"
        return None if NAME.match(value) else "invalid name"
    if not value.isprintable():
        return "printable"
    if kind == "interface":
        if any(c in "'\"" for c in value):
            return "quotes"
        if value.startswith("@"):
            return "set name"
    else:
        if '"' in value or "\\" in value:
            return "quotes"
        if len(value) > 64:
            return "printable characters"
        if len(value.encode()) > 100:  # leaves room for "N policies from NAME" in a merged run's comment
            return "bytes in UTF-8"
    return None


def yaml_string(value: str) -> str:
    """VALUE as a YAML double-quoted scalar, every character that is not printable escaped."""
    return '"' + "".join(c if c.isprintable() and c not in '"\\' else
                         f"\\U{ord(c):08x}" for c in value) + '"'



def check(config: Path, kind: str, value: str) -> list[Diagnostic]:
    config.write_text(config_text(kind, value), encoding="utf-8")
    model, diagnostics = load_model(str(config))
    return [d for d in diagnostics if d.severity == "error"] if model is None else []


def substituted(item: Any, placeholder: str, value: str) -> Any:
    """ITEM (nft JSON) with every string holding PLACEHOLDER rewritten to hold VALUE instead."""
    if isinstance(item, str):
        return item.replace(placeholder, value)
    if isinstance(item, list):
        return [substituted(i, placeholder, value) for i in item]
    if isinstance(item, dict):
        return {k: substituted(v, placeholder, value) for k, v in item.items()}
    return item


def nft_refusals(directory: Path, kind: str, value: str) -> list[str]:
    """What `nft -c` says of the plan with VALUE in place of the placeholder (text, then JSON); [] if accepted."""
    config = directory / "placeholder.yaml"
    config.write_text(config_text())
    model, diagnostics = load_model(str(config))
    assert model is not None, diagnostics
    document = substituted(compile_plan(model).nft_document(), PLACEHOLDERS[kind], value)
    refusals = []
    for flags, body in ((["-c"], nfttext.render(document)), (["-j", "-c"], json.dumps(document, default=json_default))):
        path = directory / "plan.nft"
        path.write_bytes(body.encode("utf-8", errors="surrogatepass"))
        result = subprocess.run(["unshare", "-n", "nft", *flags, "-f", str(path)], capture_output=True, text=True,
                                errors="replace", timeout=30, check=False)
        if result.returncode != 0:
            refusals.append(f"nft {' '.join(flags)}: {result.stderr.strip()[:200]}")
    return refusals


@pytest.mark.parametrize("kind", sorted(PLACEHOLDERS))
def test_check_accepts_exactly_what_nft_and_the_kernel_accept(kind: str) -> None:
    @settings(max_examples=EXAMPLES[kind], derandomize=True, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow])
    @given(value=names(LIMITS[kind]))
    @example(value="tcp")
    @example(value="éééééééé")
    @example(value="eth\x000")
    @example(value="é" * 61)
    def accepted_alike(value: str) -> None:
        with tempfile.TemporaryDirectory() as name:
            directory = Path(name)
            config = directory / "markroute.yaml"
            errors = check(config, kind, value)
            used = value if kind in ("uplink", "set") else value.strip()  # a value is read stripped, a key is not
            refused = nft_refusals(directory, kind, used) if used else ["nothing left"]
            kernel_refuses = kind == "interface" and not kernel_takes_ifname(used)
            if not errors:
                assert not refused and not kernel_refuses, f"check accepted {value!r}, but: {refused or 'the kernel'}"
                return
            assert all(d.where.file == str(config) and d.where.line in VALUE_LINES[kind] for d in errors), errors
            reason = deliberate(kind, used)
            if not refused and not kernel_refuses:
                assert reason is not None, f"check refused {value!r}, which nft and the kernel take: {errors}"
                assert any(reason in d.message for d in errors), (reason, errors)

    accepted_alike()
