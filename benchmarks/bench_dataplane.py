"""CPU per forwarded packet: markroute side by side with its peers, the floor and no ruleset.

Run (root): python3 benchmarks/bench_dataplane.py [--write] [--rounds N] [--seconds S] [--first-seconds F] [--extra]

Goal (issue 15): per first packet of a connection, markroute with 1 policy costs no more CPU
than the pbr-style ruleset (paired ratio pbr/markroute >= 1.0) and stays ahead of pbr-style
and mwan3-style at 1,000 policies and with a 100,000-prefix set; per packet of an established
connection it keeps >= 97% of the floor's efficiency (floor/markroute >= 0.97).

Lab: one router namespace per configuration, all built alike and all installed at the start
(`rK`: lan0 -- wan0..wan2 to `sK`, whose interfaces own the destination range and drop every
frame at netdev ingress, the cheapest end). One generator namespace holds the other end of
every router's lan0, so a round measures every configuration in turn, in a new random order
each round, without reinstalling anything: ratios are paired within a round, so load from the
other work on this shared machine falls on both sides of each ratio.

With --extra, five diagnostic configurations are added: markroute's 1,000 policies compiled
without merging (one rule each); markroute's 1-policy install with the realm put back on
the default routes of the tables its fwmark rules look up, where it was before the bound
tables (`compile.bound`); and three that split what markroute's 1-policy install
costs beyond pbr-style's, each rewritten by hand after apply: (1) without what only
`status`, `flows` and `explain` read (the rules' counters, `ct label set`, the sysctls
`nf_conntrack_acct` and `nf_conntrack_timestamp`); (2) markroute's `prerouting` replaced by
pbr-style's two rules with markroute's mask and mark (no ingress map, `ct state` rule,
local check or restore map; acct/timestamp off; its other chains stay, unreached), so only
the rest of markroute's install differs from pbr-style; (3) that, also without markroute's
`from <uplink address>` ip rules and its routes' realms.
(The single-rule diagnostics of earlier runs, the `iifname` map as one rule per uplink and
the local check deleted, measured no difference and were replaced by these.)

Configurations: no ruleset; the floor of mark-based policy routing (conntrack, one `ct mark`
rule, one fwmark ip rule); markroute, pbr-style and mwan3-style (`peers.py`) with the same
policies: 1 policy (a destination /11), 1,000 policies (500 source /28s, 500 UDP ports) and
one policy over a 100,000-prefix destination set; and markroute with the same policies and
`settings: {connection_records: false}` (no `ct label set`, conntrack accounting and
timestamps left off as the namespace has them, so new connections get no conntrack
extension).

Traffic: `trafficgen.c` (cc here) sends 4,096 prepared 64-byte UDP frames in turn from both
CPUs through AF_PACKET, 64 per sendmmsg(). This kernel has no pktgen.
* first packets: the generator rewrites each frame's source port from a counter (a distinct
  offset per CPU), so every packet opens a new connection; conntrack is flushed before. Each
  CPU sends at most FIRST_PACKETS frames (or for F s, 0.5 by default), because the table holds
  262,144 connections (nf_conntrack_max, not settable outside the host's namespace) and a full
  table evicts or drops on every new connection: the report gives the largest count seen at
  the end of a window;
* established: conntrack flushed, the 4,096 flows sent for 0.3 s, one reply per flow sent from
  the uplink side, then the same flows measured.
* replies (the download direction): conntrack flushed, 4,096 LAN flows that the policies send
  through isp1 (the floor and no ruleset: through main's default route, wan0) sent for 0.3 s,
  then their replies sent from the sink into that uplink for S s, from both CPUs, and
  measured over the frames the router sent on lan0 (each LAN host has a static neighbour
  entry; the generator drops what reaches it at ingress). A reply's source check lands in
  the uplink's table, so whatever that table's routes carry (a realm) shows here and
  nowhere else.

CPU per packet: the generators' own CPU time (user + system, `wait4`) plus that of the two
ksoftirqd threads, over the frames the router sent on its uplinks. On a veth the router's
forwarding runs in the sender's softirq and is charged to the sender (this kernel has no
IRQ time accounting); what the kernel defers goes to ksoftirqd. Unlike /proc/stat totals,
this leaves out other processes on the machine.
"""

from __future__ import annotations

import ipaddress
import json
import os
import random
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from common import publish, random_prefixes  # noqa: E402
from peers import (  # noqa: E402
    Policy,
    Uplink,
    markroute_yaml,
    mwan3_ip_rules,
    mwan3_ipsets,
    mwan3_iptables,
    pbr_ip_rules,
    pbr_ruleset,
)

from markroute.compile import compile_plan  # noqa: E402
from markroute.config import load_model  # noqa: E402
from markroute.kernel.apply import apply  # noqa: E402
from markroute.kernel.down import down  # noqa: E402
from markroute.kernel.netns import inside  # noqa: E402
from markroute.lab import Lab  # noqa: E402

HERE = Path(__file__).resolve().parent
DESTINATIONS = "10.128.0.0/9"
PREFIXES = 100_000
FRAMES = 4096
FIRST_PACKETS = 90_000  # per CPU: 180,000 new connections stay well under nf_conntrack_max
UPLINKS = [Uplink(f"isp{k}", f"wan{k}", f"10.0.{k}.1", 101 + k) for k in range(3)]
LAN = "192.168.1.0/24"
# every router alike, so one frames file serves all: (router lan0, generator, router wan0, sink eth0)
MACS = ("02:00:00:00:00:01", "02:00:00:00:00:02", "02:00:00:00:01:01", "02:00:00:00:02:01")
BASELINE, FLOOR = "no ruleset", "floor: conntrack + one fwmark ip rule"
SCALES = ("1 policy", "1,000 policies", "100,000-prefix set")
PEERS = ("markroute", "pbr-style", "mwan3-style")
UNRECORDED = "markroute (connection_records: false)"  # the same config with `settings: {connection_records: false}`


@dataclass
class Variant:
    name: str
    install: Callable[[Lab, str, Path], None]
    router: str = ""
    samples: dict[str, list[float]] = field(default_factory=lambda: {"first": [], "established": [], "replies": []})
    most_connections: int = 0
    scale: str = SCALES[0]  # whose reply traffic it gets
    uplink: int = 1  # the uplink its reply traffic's connections leave by (wan1: isp1, the policies' uplink)


def option(name: str, default: float) -> float:
    return float(sys.argv[sys.argv.index(name) + 1]) if name in sys.argv else default


# --- the policies, the same for every tool ---------------------------------------------------

def policies(scale: str) -> list[Policy]:
    if scale == "1 policy":
        return [Policy("one", ("isp1",), dst="10.128.0.0/11")]
    if scale == "1,000 policies":
        return ([Policy(f"src{i}", (f"isp{1 + i % 2}",), src=f"10.9.{i // 16}.{(i % 16) * 16}/28") for i in range(500)]
                + [Policy(f"port{i}", (f"isp{1 + i % 2}",), dport=10_000 + i) for i in range(500)])
    return [Policy("big", ("isp1",), dst_set="big")]


# --- installing each configuration in its router ---------------------------------------------

def rewrite_chains(lab: Lab, rtr: str, tmp: Path, chains: dict[str, list[str]]) -> None:
    """Replace the rules of some chains of markroute's applied table, in one transaction (diagnostics)."""
    script = tmp / f"{rtr}.rewrite.nft"
    script.write_text("".join(f"flush chain inet markroute {chain}\n"
                              + "".join(f"add rule inet markroute {chain} {rule}\n" for rule in rules)
                              for chain, rules in chains.items()))
    lab.run(rtr, ["nft", "-f", str(script)])


def ip_rules(lab: Lab, rtr: str, rules: list[list[str]]) -> None:
    for rule in rules:
        lab.ip(rtr, "rule", "add", *rule)


def uplink_tables(lab: Lab, rtr: str) -> None:
    """Each uplink's table: its default route, and the LAN (as mwan3 and pbr copy connected routes)."""
    for u in UPLINKS:
        lab.ip(rtr, "route", "add", "default", "via", u.gateway, "table", str(u.table))
        lab.ip(rtr, "route", "add", LAN, "dev", "lan0", "table", str(u.table))


def floor(lab: Lab, rtr: str, tmp: Path) -> None:
    lab.nft(rtr, "table inet ctonly { chain p { type filter hook prerouting priority -150; ct mark 1 accept; }; }")
    uplink_tables(lab, rtr)
    ip_rules(lab, rtr, [["fwmark", "0x300/0xff00", "lookup", "102", "pref", "100"]])


def markroute_variant(scale: str, records: bool = True) -> Callable[[Lab, str, Path], None]:
    def install(lab: Lab, rtr: str, tmp: Path) -> None:
        path = tmp / f"{rtr}.yaml"
        path.write_text(markroute_yaml(UPLINKS, policies(scale), {"big": str(tmp / "big.txt")}
                                       if scale == SCALES[2] else {})
                        + ("" if records else "settings: {connection_records: false}\n"))
        model, diagnostics = load_model(str(path))
        assert model is not None, [str(d) for d in diagnostics]
        with inside(rtr):
            apply(compile_plan(model), rtr)
    return install


def pbr_variant(scale: str, prefixes: list[str]) -> Callable[[Lab, str, Path], None]:
    def install(lab: Lab, rtr: str, tmp: Path) -> None:
        path = tmp / f"{rtr}.nft"
        path.write_text(pbr_ruleset(UPLINKS, policies(scale), {"big": prefixes} if scale == SCALES[2] else {}))
        lab.run(rtr, ["nft", "-f", str(path)], timeout=600)
        uplink_tables(lab, rtr)
        ip_rules(lab, rtr, pbr_ip_rules(UPLINKS))
    return install


def mwan3_variant(scale: str, prefixes: list[str]) -> Callable[[Lab, str, Path], None]:
    def install(lab: Lab, rtr: str, tmp: Path) -> None:
        connected = [LAN] + [f"10.0.{k}.0/24" for k in range(len(UPLINKS))]
        sets = tmp / f"{rtr}.ipset"
        sets.write_text(mwan3_ipsets({"big": prefixes} if scale == SCALES[2] else {}, connected))
        lab.run(rtr, ["ipset", "restore", "-file", str(sets)], timeout=600)
        rules = tmp / f"{rtr}.iptables"
        rules.write_text(mwan3_iptables(UPLINKS, policies(scale)))
        lab.run(rtr, ["iptables-nft-restore", "--noflush", str(rules)], timeout=600)
        uplink_tables(lab, rtr)
        ip_rules(lab, rtr, mwan3_ip_rules(UPLINKS))
    return install


def variants(prefixes: list[str], extra: bool) -> list[Variant]:
    found = [Variant(BASELINE, lambda lab, rtr, tmp: None, uplink=0), Variant(FLOOR, floor, uplink=0)]
    for scale in SCALES:
        found.append(Variant(f"markroute, {scale}", markroute_variant(scale), scale=scale))
        found.append(Variant(f"{UNRECORDED}, {scale}", markroute_variant(scale, records=False), scale=scale))
        found.append(Variant(f"pbr-style, {scale}", pbr_variant(scale, prefixes), scale=scale))
        found.append(Variant(f"mwan3-style, {scale}", mwan3_variant(scale, prefixes), scale=scale))
    if extra:
        def unmerged(lab: Lab, rtr: str, tmp: Path) -> None:
            path = tmp / f"{rtr}.yaml"
            path.write_text(markroute_yaml(UPLINKS, policies(SCALES[1]), {}))
            model, _ = load_model(str(path))
            assert model is not None
            with inside(rtr):
                apply(compile_plan(model, merge_min=None), rtr)

        def observability_off(lab: Lab, rtr: str, tmp: Path) -> None:
            """markroute's 1-policy table without what only `status`, `flows` and `explain` read."""
            markroute_variant(SCALES[0])(lab, rtr, tmp)
            rewrite_chains(lab, rtr, tmp, {f"ingress_{u.name}": [f"meta nfproto ipv4 goto mark_{u.name}"] for u in UPLINKS}
                           | {"policies_fwd": [f"ip daddr {policies(SCALES[0])[0].dst} goto via_isp1"]})
            lab.sysctls(rtr, {"net.netfilter.nf_conntrack_acct": "0", "net.netfilter.nf_conntrack_timestamp": "0"})

        def pbr_shape(lab: Lab, rtr: str, tmp: Path) -> None:
            """markroute's install with pbr-style's rules (markroute's mask and isp1's mark): what its own rules cost."""
            markroute_variant(SCALES[0])(lab, rtr, tmp)
            mask, mark = 0xFF00, 0x300  # markroute's default mask; isp1, the only uplink a policy uses, has the second mark
            keep = 0xFFFFFFFF ^ mask
            rewrite_chains(lab, rtr, tmp, {"prerouting": [
                f"ct mark and {mask:#x} != 0 meta mark set meta mark and {keep:#x} or {mark:#x} return",
                f"ip daddr {policies(SCALES[0])[0].dst} meta mark set meta mark and {keep:#x} or {mark:#x} "
                f"ct mark set ct mark and {keep:#x} or {mark:#x} accept"]})
            lab.sysctls(rtr, {"net.netfilter.nf_conntrack_acct": "0", "net.netfilter.nf_conntrack_timestamp": "0"})

        def pbr_shape_plain_routes(lab: Lab, rtr: str, tmp: Path) -> None:
            pbr_shape(lab, rtr, tmp)
            for rule in [r for r in json.loads(lab.ip(rtr, "-j", "rule", "show").stdout) if r.get("src", "all") != "all"]:
                lab.ip(rtr, "rule", "del", "pref", str(rule["priority"]), "from", rule["src"])
            for route in json.loads(lab.ip(rtr, "-j", "route", "show", "table", "all").stdout):
                if route.get("dst") == "default" and route.get("table", "main") != "main":  # markroute's uplink tables
                    lab.ip(rtr, "route", "replace", "default", "via", route["gateway"], "dev", route["dev"],
                           "table", str(route["table"]), "proto", "77")

        def realms_in_uplink_tables(lab: Lab, rtr: str, tmp: Path) -> None:
            """markroute's 1-policy install with the realm on the default route of each table a fwmark rule
            looks up, where it was before the bound tables (`compile.bound`): what the realm costs there."""
            markroute_variant(SCALES[0])(lab, rtr, tmp)
            tables = {r["table"] for r in json.loads(lab.ip(rtr, "-j", "rule", "show").stdout) if "fwmark" in r}
            for route in json.loads(lab.ip(rtr, "-j", "route", "show", "table", "all").stdout):
                if route.get("dst") == "default" and route.get("table") in tables:
                    lab.ip(rtr, "route", "replace", "default", "via", route["gateway"], "dev", route["dev"],
                           "table", route["table"], "proto", "77", "realm", route["table"])

        found.append(Variant("markroute, 1,000 policies, merging off (one rule each)", unmerged, scale=SCALES[1]))
        found.append(Variant("markroute, 1 policy, the realm on its uplink tables' default routes as before the bound "
                             "tables (diagnostic)", realms_in_uplink_tables))
        found.append(Variant("markroute, 1 policy, without counters, `ct label set` and conntrack acct/timestamp "
                             "(diagnostic)", observability_off))
        found.append(Variant("markroute, 1 policy, its rules replaced by pbr-style's (diagnostic: no ingress map, "
                             "`ct state` rule or local check; restore by one comparison)", pbr_shape))
        found.append(Variant("the same, also without markroute's `from` ip rules and route realms (diagnostic)",
                             pbr_shape_plain_routes))
    return found


# --- the lab -----------------------------------------------------------------------------------

def build(lab: Lab, count: int) -> str:
    """The generator namespace and COUNT routers, router K reached from the generator's gK."""
    gen = lab.add_ns("gen")
    for k in range(count):
        rtr, sink = lab.add_ns(f"r{k}"), lab.add_ns(f"s{k}")
        lab.veth(gen, f"g{k}", rtr, "lan0", mac_a=MACS[1], mac_b=MACS[0])
        lab.addr(rtr, "lan0", "192.168.1.1/24")
        for j in range(len(UPLINKS)):
            lab.veth(rtr, f"wan{j}", sink, f"eth{j}", mac_a=MACS[2], mac_b=MACS[3])
            lab.addr(rtr, f"wan{j}", f"10.0.{j}.2/24")
            lab.addr(sink, f"eth{j}", f"10.0.{j}.1/24")
            lab.nft(sink, f"table netdev sink{j} {{ chain in {{ type filter hook ingress device eth{j} priority 0; "
                          "meta protocol ip drop; }; }")
        lab.route(sink, "local", DESTINATIONS, "dev", "lo")
        lab.route(rtr, "default", "via", "10.0.0.1")
        lab.sysctl(rtr, "net.ipv4.ip_forward", 1)
        neighbours = "".join(f"neigh replace 192.168.1.{h} lladdr {MACS[1]} dev lan0 nud permanent\n" for h in range(2, 255))
        lab.run(rtr, ["ip", "-batch", "-"], input=neighbours)  # replies reach LAN hosts that never answer ARP
        lab.nft(gen, f"table netdev drop{k} {{ chain in {{ type filter hook ingress device g{k} priority 0; "
                     "meta protocol ip drop; }; }")
    return gen


def checksum(header: bytes) -> int:
    total = sum(struct.unpack("!10H", header))
    total = (total & 0xFFFF) + (total >> 16)
    return ~((total & 0xFFFF) + (total >> 16)) & 0xFFFF


def udp_frame(dst_mac: bytes, src_mac: bytes, src: Any, dst: Any, sport: int, dport: int) -> bytes:
    """A length-prefixed Ethernet frame with a 64-byte IPv4 UDP packet (checksum 0), as trafficgen.c reads them."""
    udp = struct.pack("!HHHH", sport, dport, 8 + 18, 0) + bytes(18)
    header = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 1, 0, 64, 17, 0, src.packed, dst.packed)
    header = header[:10] + struct.pack("!H", checksum(header)) + header[12:]
    frame = dst_mac + src_mac + b"\x08\x00" + header + udp
    return struct.pack("!H", len(frame)) + frame


def reply_frames(scale: str, prefixes: list[str], path: Path, replies: Path) -> None:
    """Flows from LAN hosts that SCALE's policies send through isp1, and one reply to each:
    1 policy: destinations in its /11; 1,000 policies: to the even ports among theirs (isp1's);
    the set: destinations from the set."""
    macs = [bytes.fromhex(m.replace(":", "")) for m in MACS]
    rng = random.Random(11)
    one = ipaddress.ip_network(policies(SCALES[0])[0].dst or "")
    out, back = bytearray(), bytearray()
    for _ in range(FRAMES):
        if scale == SCALES[2]:
            network = ipaddress.ip_network(rng.choice(prefixes))
            dst = network.network_address + rng.randrange(network.num_addresses)
        else:
            dst = one.network_address + rng.randrange(one.num_addresses)
        dport = 10_000 + 2 * rng.randrange(250) if scale == SCALES[1] else rng.randrange(20_000, 60_000)
        src, sport = ipaddress.ip_address(f"192.168.1.{rng.randrange(10, 250)}"), rng.randrange(1024, 65535)
        out += udp_frame(macs[0], macs[1], src, dst, sport, dport)
        back += udp_frame(macs[2], macs[3], dst, src, dport, sport)
    path.write_bytes(bytes(out))
    replies.write_bytes(bytes(back))


def frames(prefixes: list[str], path: Path, replies: Path) -> None:
    """The traffic mix and one reply per flow: destinations from the big set; 10% of flows from
    the 1,000 policies' sources, 10% to their ports, so most walk the whole policy list."""
    macs = [bytes.fromhex(m.replace(":", "")) for m in MACS]
    rng = random.Random(7)
    out, back = bytearray(), bytearray()
    for _ in range(FRAMES):
        network = ipaddress.ip_network(rng.choice(prefixes))
        dst = network.network_address + rng.randrange(network.num_addresses)
        src = ipaddress.ip_address(f"10.9.{rng.randrange(32)}.{rng.randrange(256)}" if rng.random() < 0.1
                                   else f"192.168.1.{rng.randrange(10, 250)}")
        dport = 10_000 + rng.randrange(500) if rng.random() < 0.1 else rng.randrange(20_000, 60_000)
        sport = rng.randrange(1024, 65535)
        out += udp_frame(macs[0], macs[1], src, dst, sport, dport)
        back += udp_frame(macs[2], macs[3], dst, src, dport, sport)
    path.write_bytes(bytes(out))
    replies.write_bytes(bytes(back))


# --- measuring ---------------------------------------------------------------------------------

def ksoftirqd_seconds() -> float:
    """CPU time of the ksoftirqd threads so far (softirq work the kernel deferred)."""
    total = 0
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "comm").read_text().startswith("ksoftirqd/"):
                    fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                    total += int(fields[11]) + int(fields[12])
            except OSError:
                continue
    return total / os.sysconf("SC_CLK_TCK")


def sent(lab: Lab, rtr: str, prefix: str = "wan") -> int:
    links = json.loads(lab.run(rtr, ["ip", "-j", "-s", "link", "show"]).stdout)
    return sum(link["stats64"]["tx"]["packets"] for link in links if link["ifname"].startswith(prefix))


def blast(lab: Lab, gen: str, ifname: str, binary: Path, traffic: Path, seconds: float, unique: bool) -> float:
    """Send from both CPUs; the senders' CPU seconds (user + system)."""
    senders = [
        lab.spawn(gen, ["taskset", "-c", str(core), str(binary), ifname, str(traffic), str(seconds),
                        *([str(core * 32768), str(FIRST_PACKETS)] if unique else [])])
        for core in (0, 1)
    ]
    cpu = 0.0
    for sender in senders:
        _, status, usage = os.wait4(sender.pid, 0)
        sender.returncode = os.waitstatus_to_exitcode(status)
        cpu += usage.ru_utime + usage.ru_stime
    return cpu


def measure(lab: Lab, gen: str, k: int, variant: Variant, binary: Path, traffic: Path, replies: Path,
            seconds: tuple[float, float], sink: str) -> None:
    """One sample of each kind for VARIANT (router K): CPU microseconds per forwarded packet."""
    rtr = variant.router
    lab.run(rtr, ["conntrack", "-F"], check=False)
    count, softirq = sent(lab, rtr), ksoftirqd_seconds()
    cpu = blast(lab, gen, f"g{k}", binary, traffic, seconds[0], unique=True)
    packets = sent(lab, rtr) - count
    variant.samples["first"].append((cpu + ksoftirqd_seconds() - softirq) / max(packets, 1) * 1e6)
    connections = lab.run(rtr, ["conntrack", "-C"], check=False).stdout.strip()
    variant.most_connections = max(variant.most_connections, int(connections or 0))
    lab.run(rtr, ["conntrack", "-F"], check=False)
    blast(lab, gen, f"g{k}", binary, traffic, 0.3, unique=False)
    lab.run(sink, [str(binary), "eth0", str(replies), "0.2"])  # every flow has seen a reply
    count, softirq = sent(lab, rtr), ksoftirqd_seconds()
    cpu = blast(lab, gen, f"g{k}", binary, traffic, seconds[1], unique=False)
    packets = sent(lab, rtr) - count
    variant.samples["established"].append((cpu + ksoftirqd_seconds() - softirq) / max(packets, 1) * 1e6)


def measure_replies(lab: Lab, gen: str, k: int, variant: Variant, binary: Path, traffic: dict[str, tuple[Path, Path]],
                    seconds: float, sink: str) -> None:
    """One sample of CPU microseconds per reply forwarded to the LAN (router K)."""
    rtr = variant.router
    flows, replies = traffic[variant.scale]
    lab.run(rtr, ["conntrack", "-F"], check=False)
    blast(lab, gen, f"g{k}", binary, flows, 0.3, unique=False)  # the connections, each decided by its first packet
    count, softirq = sent(lab, rtr, "lan"), ksoftirqd_seconds()
    cpu = blast(lab, sink, f"eth{variant.uplink}", binary, replies, seconds, unique=False)
    packets = sent(lab, rtr, "lan") - count
    variant.samples["replies"].append((cpu + ksoftirqd_seconds() - softirq) / max(packets, 1) * 1e6)


def main() -> None:
    rounds, seconds = int(option("--rounds", 15)), (option("--first-seconds", 0.5), option("--seconds", 1.0))
    prefixes = random_prefixes(PREFIXES, network=DESTINATIONS, lengths=(26, 30))
    all_variants = variants(prefixes, "--extra" in sys.argv)
    load = Path("/proc/loadavg").read_text().split()[:3]
    with tempfile.TemporaryDirectory() as directory, Lab() as lab:
        tmp = Path(directory)
        (tmp / "big.txt").write_text("\n".join(prefixes) + "\n")
        binary = tmp / "trafficgen"
        subprocess.run(["cc", "-O2", "-o", str(binary), str(HERE / "trafficgen.c")], check=True)
        gen = build(lab, len(all_variants))
        traffic, replies = tmp / "frames.bin", tmp / "replies.bin"
        frames(prefixes, traffic, replies)
        downloads = {scale: (tmp / f"flows{n}.bin", tmp / f"replies{n}.bin") for n, scale in enumerate(SCALES)}
        for scale, (flows, answers) in downloads.items():
            reply_frames(scale, prefixes, flows, answers)
        for k, variant in enumerate(all_variants):
            variant.router = f"{lab.prefix}-r{k}"
            start = time.monotonic()
            variant.install(lab, variant.router, tmp)
            print(f"installed {variant.name} in {time.monotonic() - start:.1f} s", file=sys.stderr)
        order = list(enumerate(all_variants))
        shuffle = random.Random(15)
        try:
            for r in range(rounds):
                shuffle.shuffle(order)
                for k, variant in order:
                    measure(lab, gen, k, variant, binary, traffic, replies, seconds, f"{lab.prefix}-s{k}")
                    measure_replies(lab, gen, k, variant, binary, downloads, seconds[1], f"{lab.prefix}-s{k}")
                print(f"round {r + 1}/{rounds} done", file=sys.stderr)
        finally:
            for variant in all_variants:
                if variant.name.startswith("markroute"):
                    with inside(variant.router):
                        down(variant.router)  # leaves no record under /run/markroute
    load_after = Path("/proc/loadavg").read_text().split()[:3]
    publish("Data plane: markroute and its peers, per first packet, per established packet and per reply",
            report(all_variants, rounds, seconds, load, load_after))


def spread(values: list[float], digits: int = 2, percent: bool = False) -> str:
    """Median, quartiles and range of VALUES."""
    q1, median, q3 = statistics.quantiles(values, n=4, method="inclusive")
    show = (lambda v: f"{v:.1%}") if percent else (lambda v: f"{v:.{digits}f}")
    return f"{show(median)} (IQR {show(q1)}-{show(q3)}, range {show(min(values))}-{show(max(values))})"


def ratios(numerator: Variant, denominator: Variant, kind: str) -> list[float]:
    """Per-round ratios of two variants' CPU per packet, paired within each round."""
    return [a / b for a, b in zip(numerator.samples[kind], denominator.samples[kind])]


def report(all_variants: list[Variant], rounds: int, seconds: tuple[float, float], load: list[str],
           load_after: list[str]) -> str:
    by_name = {v.name: v for v in all_variants}
    most = max(v.most_connections for v in all_variants)
    text = (
        f"{rounds} rounds; in each, every configuration measured once in a new random order: first packets "
        f"(2 x {FIRST_PACKETS:,} new connections or {seconds[0]:g} s, whichever ends first; largest conntrack table "
        f"at the end: {most:,} of 262,144), {seconds[1]:g} s of established packets and {seconds[1]:g} s of replies "
        "coming in through the uplink (the download direction). Each configuration has its own router namespace, "
        "installed once. CPU µs per forwarded packet: the senders' CPU time (their softirq forwarding included) "
        "plus ksoftirqd's, over the frames sent on the uplinks (replies: on the LAN). Ratios are paired: computed "
        "within a round, then summarised over the rounds as median "
        f"(IQR, range). Load average of the shared machine before/after: {' '.join(load)} / {' '.join(load_after)}."
        "\n\n| configuration | first packet: CPU µs | established: CPU µs | replies: CPU µs |\n|---|---|---|---|\n"
    )
    for v in all_variants:
        text += (f"| {v.name} | {spread(v.samples['first'])} | {spread(v.samples['established'])} "
                 f"| {spread(v.samples['replies'])} |\n")
    text += ("\n### Paired ratios (issue 15 goals)\n\n"
             "| ratio | first packet | established | replies |\n|---|---|---|---|\n")

    def row(label: str, numerator: Variant, denominator: Variant, percent: bool = False) -> str:
        return f"| {label} | " + " | ".join(spread(ratios(numerator, denominator, kind), percent=percent)
                                            for kind in ("first", "established", "replies")) + " |\n"

    for scale in SCALES:
        for name in (PEERS[0], UNRECORDED):
            ours = by_name[f"{name}, {scale}"]
            for peer in PEERS[1:]:
                text += row(f"{peer} / {name} CPU, {scale} (>= 1.0: markroute cheaper)", by_name[f"{peer}, {scale}"], ours)
            text += row(f"floor / {name} CPU, {scale} (efficiency vs the floor; goal >= 97% established)",
                        by_name[FLOOR], ours, percent=True)
        text += row(f"{UNRECORDED} / markroute CPU, {scale} (< 1.0: what recording costs)",
                    by_name[f"{UNRECORDED}, {scale}"], by_name[f"markroute, {scale}"])
    text += row("no ruleset / floor CPU (what conntrack + a fwmark rule cost)", by_name[BASELINE], by_name[FLOOR],
                percent=True)
    ours = by_name[f"markroute, {SCALES[0]}"]
    for v in all_variants:
        if v.name.endswith("(diagnostic)"):
            text += row(f"markroute, 1 policy / {v.name[:-len(' (diagnostic)')]} (> 1.0: that one is cheaper)", ours, v)
    return text


if __name__ == "__main__":
    main()
