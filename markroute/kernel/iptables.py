"""What iptables-nft installed, with the options `nft -j` cannot show.

iptables-nft (Docker, ufw, kube-proxy, firewalld's iptables backend) writes ordinary
nf_tables rules. Much of a rule becomes native expressions (`-s`, `-i`, `-p tcp
--dport`, `-m mark`, `-j ACCEPT`, jumps), but many extensions stay compatibility
expressions (`xt`): addrtype, conntrack/state, comment, connmark, multiport, set,
physdev, icmp, MASQUERADE, SNAT, DNAT, REJECT, MARK, CONNMARK, ... Their options are
an opaque blob of the kernel's xt structs, and libnftables' JSON shows only the
extension's name (`{"xt": {"type": "match", "name": "addrtype"}}`).

`iptables-nft-save` reads the same nf_tables rules and prints every rule with all its
options, chain by chain in rule order: the n-th rule of a chain there is the n-th rule
of that chain in nft's listing. The simulator matches them up by that position (and
checks the extension names agree). Sets used by `-m set` live in ipset, read with
`ipset save`.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterable
from typing import Any

SAVE_COMMANDS = {"ip": "iptables-nft-save", "ip6": "ip6tables-nft-save"}
IPSET = "ipset"


def xt_families(document: dict[str, Any]) -> list[str]:
    """The families (ip, ip6) whose listed rules hold an `xt` expression, in a stable order."""
    found: set[str] = set()
    for item in document.get("nftables", []):
        rule = item.get("rule") if isinstance(item, dict) else None
        if rule and any(isinstance(expr, dict) and "xt" in expr for expr in rule.get("expr", [])):
            found.add(rule.get("family", ""))
    return sorted(found)


def saved_rules(families: Iterable[str]) -> dict[str, dict[str, str]]:
    """Per family, `{"save": TEXT}` as iptables-nft-save prints it, or `{"error": WHY}`."""
    saved: dict[str, dict[str, str]] = {}
    for family in families:
        command = SAVE_COMMANDS.get(family)
        if command is None:
            saved[family] = {"error": f"the options of {family} xt rules cannot be read (no iptables-nft-save for them)"}
            continue
        saved[family] = _output([command], f"install iptables ({command}) to read the options of iptables-nft rules")
    return saved


def ipsets(saved: dict[str, dict[str, str]]) -> dict[str, str] | None:
    """`{"save": TEXT}` of `ipset save` when a saved rule uses `-m set`; None when none does."""
    if not any("--match-set" in entry.get("save", "") for entry in saved.values()):
        return None
    return _output([IPSET, "save"], "install ipset to read the sets iptables rules match with -m set")


def _output(argv: list[str], missing: str) -> dict[str, str]:
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=60)
    except FileNotFoundError:
        return {"error": f"{argv[0]} is not installed: {missing}"}
    except subprocess.TimeoutExpired:
        return {"error": f"{argv[0]} did not answer within 60 s"}
    if proc.returncode != 0:
        message = " ".join(line.strip() for line in proc.stderr.splitlines() if line.strip())
        return {"error": f"{argv[0]} failed: {message or f'exit status {proc.returncode}'}"}
    return {"save": proc.stdout}
