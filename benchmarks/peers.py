"""The same policies written the way two peers of markroute would install them, for side-by-side runs.

Written from the peers' documented behaviour (no code of theirs): what matters for a
benchmark is the per-packet path, so each generator reproduces its peer's chain layout,
mark handling and ip rules, not its configuration language.

* **mwan3-style** (OpenWrt mwan3, iptables + ipset): mangle PREROUTING and OUTPUT jump to
  `mwan3_hook`, which restores the connection mark on every packet, sends still unmarked
  packets through `mwan3_ifaces_in` (connections coming in on an uplink take its mark),
  the `mwan3_connected` ipset (directly connected networks use the main table) and
  `mwan3_rules` (one rule per user rule, in order, jumping to a policy chain that sets the
  uplink's mark, by `statistic --mode random` when the policy balances), then saves the
  mark to the connection. The mark lives under mask 0x3f00, one value per interface id;
  ip rules per interface: `iif` to its table, `fwmark` to its table, `fwmark` unreachable.
  Installed with iptables-nft (as mwan3 runs on an nftables-based OpenWrt) and ipset.
* **pbr-style** (OpenWrt pbr, nft mode): a mangle prerouting chain whose first rule restores
  a mark the connection already has and returns (the early ct-mark restore), then one rule
  per policy in order, each a goto to the uplink's mark chain, which sets `meta mark` and
  `ct mark` under mask 0xff0000; one `fwmark` ip rule per uplink. A policy with many
  destinations matches a named nft interval set.

A policy here is what all three tools can express: a source prefix, a destination prefix,
a named destination set or a UDP/TCP destination port, sent via one uplink or balanced
over several.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Uplink:
    """One uplink of the benchmark router: its interface, next hop and routing table id."""

    name: str
    interface: str
    gateway: str
    table: int


@dataclass(frozen=True)
class Policy:
    """One policy; exactly one of src, dst, dst_set, dport is set. VIA names one uplink or several (balanced)."""

    name: str
    via: tuple[str, ...]
    src: str | None = None
    dst: str | None = None
    dst_set: str | None = None
    dport: int | None = None


# --- markroute -------------------------------------------------------------------------------

def markroute_yaml(uplinks: list[Uplink], policies: list[Policy], sets: dict[str, str]) -> str:
    """markroute's config for POLICIES; SETS maps a set name to the file of its prefixes."""
    lines = ["uplinks:"]
    lines += [f"  {u.name}: {{interface: {u.interface}, gateway: {u.gateway}}}" for u in uplinks]
    if sets:
        lines.append("sets:")
        lines += [f"  {name}: {{file: {path}}}" for name, path in sets.items()]
    groups = sorted({p.via for p in policies if len(p.via) > 1})
    if groups:
        lines.append("groups:")
        lines += [f"  {_group(via)}: {{balance: {{{', '.join(f'{u}: 1' for u in via)}}}}}" for via in groups]
    lines.append("policies:")
    for p in policies:
        match = (f"from: {p.src}" if p.src else f"to: {p.dst}" if p.dst else
                 f"to: '@{p.dst_set}'" if p.dst_set else f"dport: {p.dport}")
        via = p.via[0] if len(p.via) == 1 else _group(p.via)
        lines.append(f"  - {{name: {p.name}, {match}, via: {via}}}")
    return "\n".join(lines) + "\n"


def _group(via: tuple[str, ...]) -> str:
    return "bal_" + "_".join(via)


# --- pbr-style (nft) ---------------------------------------------------------------------------

PBR_MASK = 0xFF0000


def pbr_mark(uplinks: list[Uplink], name: str) -> int:
    """pbr numbers its uplinks from 1 in the mask's lowest bits: 0x010000, 0x020000, ..."""
    return (1 + [u.name for u in uplinks].index(name)) << 16


def pbr_ruleset(uplinks: list[Uplink], policies: list[Policy], sets: dict[str, list[str]]) -> str:
    """The pbr-style table (nft text) for POLICIES; SETS maps a set name to its prefixes."""
    keep = 0xFFFFFFFF ^ PBR_MASK
    out = ["table inet pbr {"]
    for name, prefixes in sets.items():
        out.append(f"  set pbr_{name}_4 {{ type ipv4_addr; flags interval; auto-merge; "
                   f"elements = {{ {', '.join(prefixes)} }} }}")
    out.append("  chain mangle_prerouting {")
    out.append("    type filter hook prerouting priority mangle; policy accept;")
    out.append("    jump pbr_prerouting")
    out.append("  }")
    out.append("  chain mangle_output {")
    out.append("    type route hook output priority mangle; policy accept;")
    out.append("    jump pbr_prerouting")
    out.append("  }")
    out.append("  chain pbr_prerouting {")
    out.append(f"    ct mark and {PBR_MASK:#x} != 0 meta mark set ct mark and {PBR_MASK:#x} return")
    for p in policies:
        match = (f"ip saddr {p.src}" if p.src else f"ip daddr {p.dst}" if p.dst else
                 f"ip daddr @pbr_{p.dst_set}_4" if p.dst_set else f"meta l4proto {{ tcp, udp }} th dport {p.dport}")
        target = p.via[0] if len(p.via) == 1 else _group(p.via)
        out.append(f'    {match} goto pbr_mark_{target} comment "{p.name}"')
    out.append("  }")
    for u in uplinks:
        mark = pbr_mark(uplinks, u.name)
        out.append(f"  chain pbr_mark_{u.name} {{")
        out.append(f"    meta mark set meta mark and {keep:#x} or {mark:#x}")
        out.append(f"    ct mark set ct mark and {keep:#x} or {mark:#x}")
        out.append("    return")
        out.append("  }")
    for via in sorted({p.via for p in policies if len(p.via) > 1}):
        choices = ", ".join(f"{k} : goto pbr_mark_{u}" for k, u in enumerate(via))
        out.append(f"  chain pbr_mark_{_group(via)} {{")
        out.append(f"    numgen random mod {len(via)} vmap {{ {choices} }}")
        out.append("  }")
    out.append("}")
    return "\n".join(out) + "\n"


def pbr_ip_rules(uplinks: list[Uplink]) -> list[list[str]]:
    """`ip rule add` arguments: one fwmark rule per uplink (pbr's priorities start below main's)."""
    return [["fwmark", f"{pbr_mark(uplinks, u.name):#x}/{PBR_MASK:#x}", "lookup", str(u.table), "pref", str(30000 - k)]
            for k, u in enumerate(uplinks)]


# --- mwan3-style (iptables-nft + ipset) --------------------------------------------------------

MWAN3_MASK = 0x3F00
MWAN3_DEFAULT = 0x3F00  # "use the main table": connected networks


def mwan3_mark(uplinks: list[Uplink], name: str) -> int:
    """mwan3 gives interface id N (from 1) the mark N times the mask's lowest bit."""
    return (1 + [u.name for u in uplinks].index(name)) << 8


def mwan3_ipsets(sets: dict[str, list[str]], connected: list[str]) -> str:
    """`ipset restore` input: mwan3's connected set and one hash:net set per named set."""
    out = ["create mwan3_connected hash:net family inet"]
    out += [f"add mwan3_connected {net}" for net in connected]
    for name, prefixes in sets.items():
        out.append(f"create mwan3_{name} hash:net family inet maxelem {max(65536, 2 * len(prefixes))}")
        out += [f"add mwan3_{name} {prefix}" for prefix in prefixes]
    return "\n".join(out) + "\n"


def mwan3_iptables(uplinks: list[Uplink], policies: list[Policy]) -> str:
    """`iptables-restore --noflush` input for the mangle table."""
    mask = f"{MWAN3_MASK:#x}"
    unmarked = f"-m mark --mark 0x0/{mask}"
    policy_chains = sorted({p.via for p in policies})
    out = ["*mangle", ":mwan3_hook - [0:0]", ":mwan3_ifaces_in - [0:0]", ":mwan3_rules - [0:0]"]
    out += [f":mwan3_iface_in_{u.name} - [0:0]" for u in uplinks]
    out += [f":mwan3_policy_{_group(via)} - [0:0]" for via in policy_chains]
    out += ["-A PREROUTING -j mwan3_hook", "-A OUTPUT -j mwan3_hook"]
    out += [
        f"-A mwan3_hook -j CONNMARK --restore-mark --nfmask {mask} --ctmask {mask}",
        f"-A mwan3_hook {unmarked} -j mwan3_ifaces_in",
        f"-A mwan3_hook {unmarked} -m set --match-set mwan3_connected dst -j MARK --set-xmark {MWAN3_DEFAULT:#x}/{mask}",
        f"-A mwan3_hook {unmarked} -j mwan3_rules",
        f"-A mwan3_hook -j CONNMARK --save-mark --nfmask {mask} --ctmask {mask}",
        f"-A mwan3_hook -m mark ! --mark {MWAN3_DEFAULT:#x}/{mask} -m set --match-set mwan3_connected dst "
        f"-j MARK --set-xmark {MWAN3_DEFAULT:#x}/{mask}",
    ]
    for u in uplinks:
        out.append(f"-A mwan3_ifaces_in {unmarked} -j mwan3_iface_in_{u.name}")
        out.append(f"-A mwan3_iface_in_{u.name} -i {u.interface} -m set --match-set mwan3_connected src {unmarked} "
                   f"-j MARK --set-xmark {MWAN3_DEFAULT:#x}/{mask}")
        out.append(f"-A mwan3_iface_in_{u.name} -i {u.interface} {unmarked} "
                   f"-j MARK --set-xmark {mwan3_mark(uplinks, u.name):#x}/{mask}")
    for p in policies:
        match = (f"-s {p.src}" if p.src else f"-d {p.dst}" if p.dst else
                 f"-m set --match-set mwan3_{p.dst_set} dst" if p.dst_set else f"-p udp -m multiport --dports {p.dport}")
        out.append(f'-A mwan3_rules {match} {unmarked} -m comment --comment "{p.name}" -j mwan3_policy_{_group(p.via)}')
    for via in policy_chains:
        # members of equal weight: member k of n takes 1/(n-k) of what the earlier ones left
        for k, name in enumerate(via):
            chance = f"-m statistic --mode random --probability {1 / (len(via) - k):.11f} " if k < len(via) - 1 else ""
            out.append(f"-A mwan3_policy_{_group(via)} {unmarked} {chance}"
                       f"-j MARK --set-xmark {mwan3_mark(uplinks, name):#x}/{mask}")
    out.append("COMMIT")
    return "\n".join(out) + "\n"


def mwan3_ip_rules(uplinks: list[Uplink]) -> list[list[str]]:
    """`ip rule add` arguments in mwan3's numbering: 1000+id iif, 2000+id fwmark, 3000+id unreachable."""
    rules = []
    for k, u in enumerate(uplinks, start=1):
        mark = f"{mwan3_mark(uplinks, u.name):#x}/{MWAN3_MASK:#x}"
        rules.append(["iif", u.interface, "lookup", str(u.table), "pref", str(1000 + k)])
        rules.append(["fwmark", mark, "lookup", str(u.table), "pref", str(2000 + k)])
        rules.append(["fwmark", mark, "unreachable", "pref", str(3000 + k)])
    return rules
