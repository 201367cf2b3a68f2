"""Forwarding cost of markroute's rulesets against the same router with no ruleset at all.

Run (root): python3 benchmarks/bench_dataplane.py [--write] [--runs N] [--seconds S]

Lab: `gen` -- lan0 [rtr] wan0..wan2 -- `sink0..2`. The router forwards; each sink owns
the destination range (AnyIP) and drops every frame at netdev ingress, the cheapest
end. Traffic: `trafficgen.c` (built here with cc) sends 4,096 prepared UDP frames in
turn from both CPUs, 64 per sendmmsg() on an AF_PACKET socket. pktgen would be the
kernel-side source of choice, but this kernel has no pktgen (no /proc/net/pktgen, no
modules), so the source is the cheapest user-space one: a few hundred nanoseconds per
frame, against the microseconds of the router path it drives. On a veth the router's
forwarding runs in the sender's softirq, on the sender's CPU, so "packets/s" is the
rate with both CPUs saturated and "CPU per packet" (all busy CPU time, /proc/stat,
over the frames forwarded) is the cleaner figure: ratios below are to the no-ruleset
router. The UDP flows get no replies, so conntrack keeps them `new` and every packet
is classified by the whole policy chain: the worst case (established traffic skips
the policies).

Configurations are measured in rotation (round r measures every one) so load from
other processes spreads over all of them; medians and ranges over the rounds.
"""

from __future__ import annotations

import ipaddress
import json
import random
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from common import publish, random_prefixes  # noqa: E402

from markroute.compile import compile_plan  # noqa: E402
from markroute.config import load_model  # noqa: E402
from markroute.kernel.apply import apply  # noqa: E402
from markroute.kernel.down import down  # noqa: E402
from markroute.kernel.netns import inside  # noqa: E402
from markroute.lab import Lab  # noqa: E402

HERE = Path(__file__).resolve().parent
DESTINATIONS = "10.128.0.0/9"
PREFIXES = 100_000
NAIVE_RULES = 10_000  # ip rules go in one by one, each walking the list: 100,000 would take many minutes
FRAMES = 4096
UPLINKS = "".join(f"  isp{k}: {{interface: wan{k}, gateway: 10.0.{k}.1}}\n" for k in range(3))


@dataclass
class Case:
    name: str
    install: Callable[[], None]
    remove: Callable[[], None]


def option(name: str, default: int) -> int:
    return int(sys.argv[sys.argv.index(name) + 1]) if name in sys.argv else default


def build(lab: Lab) -> tuple[str, str, list[str]]:
    gen, rtr = lab.add_ns("gen"), lab.add_ns("rtr")
    lab.veth(gen, "g0", rtr, "lan0")
    lab.addr(rtr, "lan0", "192.168.1.1/24")
    sinks = []
    for k in range(3):
        sink = lab.add_ns(f"sink{k}")
        lab.veth(rtr, f"wan{k}", sink, "eth0")
        lab.addr(rtr, f"wan{k}", f"10.0.{k}.2/24")
        lab.addr(sink, "eth0", f"10.0.{k}.1/24")
        lab.route(sink, "local", DESTINATIONS, "dev", "lo")
        lab.nft(sink, "table netdev sink { chain in { type filter hook ingress device eth0 priority 0; meta protocol ip drop; }; }")
        sinks.append(sink)
    lab.route(rtr, "default", "via", "10.0.0.1")
    lab.sysctl(rtr, "net.ipv4.ip_forward", 1)
    return gen, rtr, sinks


def mac(lab: Lab, ns: str, ifname: str) -> bytes:
    return bytes.fromhex(json.loads(lab.run(ns, ["ip", "-j", "link", "show", ifname]).stdout)[0]["address"].replace(":", ""))


def checksum(header: bytes) -> int:
    total = sum(struct.unpack("!10H", header))
    total = (total & 0xFFFF) + (total >> 16)
    return ~((total & 0xFFFF) + (total >> 16)) & 0xFFFF


def frames(macs: tuple[bytes, bytes, bytes, bytes], prefixes: list[str], path: Path, replies: Path) -> None:
    """The traffic mix (mostly unmatched by the 1,000 policies, some hitting each kind) and one reply per flow.

    MACS: the router's lan0, the generator's g0, the router's wan0, sink0's eth0.
    """
    rng = random.Random(7)
    out, back = bytearray(), bytearray()
    for _ in range(FRAMES):
        network = ipaddress.ip_network(rng.choice(prefixes))
        dst = network.network_address + rng.randrange(network.num_addresses)
        src = ipaddress.ip_address(f"10.9.{rng.randrange(20)}.{rng.randrange(256)}" if rng.random() < 0.1
                                   else f"192.168.1.{rng.randrange(10, 250)}")
        dport = 10_000 + rng.randrange(300) if rng.random() < 0.1 else rng.randrange(20_000, 60_000)
        sport = rng.randrange(1024, 65535)
        dscp = rng.randrange(1, 61) if rng.random() < 0.1 else 0
        out += udp_frame(macs[0], macs[1], src, dst, sport, dport, dscp)
        back += udp_frame(macs[2], macs[3], dst, src, dport, sport, dscp)
    path.write_bytes(bytes(out))
    replies.write_bytes(bytes(back))


def udp_frame(dst_mac: bytes, src_mac: bytes, src: Any, dst: Any, sport: int, dport: int, dscp: int) -> bytes:
    """A length-prefixed Ethernet frame with a 64-byte IPv4 UDP packet, as trafficgen.c reads them."""
    udp = struct.pack("!HHHH", sport, dport, 8 + 18, 0) + bytes(18)
    header = struct.pack("!BBHHHBBH4s4s", 0x45, dscp << 2, 20 + len(udp), 1, 0, 64, 17, 0, src.packed, dst.packed)
    header = header[:10] + struct.pack("!H", checksum(header)) + header[12:]
    frame = dst_mac + src_mac + b"\x08\x00" + header + udp
    return struct.pack("!H", len(frame)) + frame


def busy_seconds() -> float:
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]
    return (sum(fields[:8]) - idle) / 100.0


def forwarded(lab: Lab, rtr: str) -> int:
    links = json.loads(lab.run(rtr, ["ip", "-j", "-s", "link", "show"]).stdout)
    return sum(link["stats64"]["tx"]["packets"] for link in links if link["ifname"].startswith("wan"))


def measure(lab: Lab, gen: str, rtr: str, binary: Path, frames_file: Path, seconds: int) -> tuple[float, float]:
    """(forwarded packets/s, busy CPU microseconds per forwarded packet) of one run."""
    count, cpu, start = forwarded(lab, rtr), busy_seconds(), time.monotonic()
    senders = [
        lab.spawn(gen, ["taskset", "-c", str(core), str(binary), "g0", str(frames_file), str(seconds)],
                  stdout=subprocess.PIPE)
        for core in (0, 1)
    ]
    for sender in senders:
        sender.wait(timeout=seconds + 30)
    elapsed, cpu_used, packets = time.monotonic() - start, busy_seconds() - cpu, forwarded(lab, rtr) - count
    return packets / elapsed, cpu_used / max(packets, 1) * 1e6


def model_of(directory: Path, text: str):  # noqa: ANN201 - a Model
    path = directory / "markroute.yaml"
    path.write_text(text)
    model, diagnostics = load_model(str(path))
    assert model is not None, [str(d) for d in diagnostics]
    return model


def thousand_policies() -> str:
    lines = []
    for i in range(300):
        lines.append(f"  - {{name: src{i}, from: 10.9.{i // 16}.{(i % 16) * 16}/28, via: isp{1 + i % 2}}}")
    for i in range(300):
        lines.append(f"  - {{name: port{i}, dport: {10_000 + i}, via: isp{1 + i % 2}}}")
    for i in range(60):
        lines.append(f"  - {{name: dscp{i}, dscp: {i + 1}, via: isp{1 + i % 2}}}")
    for i in range(340):
        lines.append(f"  - {{name: iif{i}, iif: vlan{i}, via: isp{1 + i % 2}}}")
    return "\n".join(lines) + "\n"


def unmergeable_policies() -> str:
    """The sources of `thousand_policies`, each with a `not:`: a shape that stays one rule per policy."""
    return "\n".join(
        f"  - {{name: src{i}, from: 10.9.{i // 16}.{(i % 16) * 16}/28, not: {{dport: 22}}, via: isp{1 + i % 2}}}"
        for i in range(300)
    ) + "\n"


def cases(lab: Lab, rtr: str, tmp: Path, prefixes: list[str]) -> list[Case]:
    (tmp / "big.txt").write_text("\n".join(prefixes) + "\n")

    def markroute(text: str, merge: bool = True) -> Case:
        plan = compile_plan(model_of(tmp, "uplinks:\n" + UPLINKS + text), merge_min=None if not merge else 4)

        def install() -> None:
            with inside(rtr):
                apply(plan, rtr)

        def remove() -> None:
            with inside(rtr):
                down(rtr)

        return Case("", install, remove)

    ip_rules = tmp / "rules.batch"
    ip_rules.write_text("".join(f"rule add to {p} lookup 101 pref 20000\n" for p in prefixes[:NAIVE_RULES]))
    ip_rules_gone = tmp / "rules-gone.batch"
    ip_rules_gone.write_text(ip_rules.read_text().replace("rule add", "rule del"))
    conntrack_only = "table inet ctonly { chain p { type filter hook prerouting priority -150; ct mark 1 accept; }; }"

    def fwmark_rule() -> None:
        lab.run(rtr, ["ip", "rule", "add", "fwmark", "0x300/0xff00", "lookup", "101", "pref", "100"])
        lab.run(rtr, ["ip", "route", "add", "default", "via", "10.0.1.1", "table", "101"])

    def no_fwmark_rule() -> None:
        lab.run(rtr, ["ip", "rule", "del", "pref", "100"])
        lab.run(rtr, ["ip", "route", "flush", "table", "101"])

    found: list[Case] = [
        Case("no ruleset (baseline)", lambda: None, lambda: None),
        Case("conntrack only (one `ct mark` rule)", lambda: lab.nft(rtr, conntrack_only),
             lambda: lab.run(rtr, ["nft", "delete", "table", "inet", "ctonly"])),
        # what having policy routing at all costs, whatever the packets carry: with an ip rule
        # of one's own, every route lookup of a forwarded packet walks the rule list
        Case("one fwmark ip rule that no packet matches, no nftables", fwmark_rule, no_fwmark_rule),
        Case("conntrack + one fwmark ip rule (the floor of mark-based policy routing)",
             lambda: (lab.nft(rtr, conntrack_only), fwmark_rule()),
             lambda: (lab.run(rtr, ["nft", "delete", "table", "inet", "ctonly"]), no_fwmark_rule())),
    ]
    markroute_cases = [
        ("markroute: 1 policy", "policies:\n  - {name: one, to: 10.128.0.0/11, via: isp1}\n", True),
        ("markroute: 1,000 policies (sources, ports, DSCP, interfaces)", "policies:\n" + thousand_policies(), True),
        ("markroute: 100,000 destination prefixes in a set",
         "sets:\n  big: {file: big.txt}\npolicies:\n  - {name: big, to: '@big', via: isp1}\n", True),
        ("markroute: 3-uplink weighted balancing",
         "groups:\n  w: {balance: {isp0: 1, isp1: 2, isp2: 3}}\npolicies:\n  - {name: all, via: w}\n", True),
        ("markroute: 300 policies with `not:` (cannot merge: one rule each)", "policies:\n" + unmergeable_policies(), True),
        ("naive: one nft rule per policy (same 1,000 policies, unmerged)", "policies:\n" + thousand_policies(), False),
    ]
    for name, text, merge in markroute_cases:
        case = markroute(text, merge)
        case.name = name
        found.append(case)
    stateless = tmp / "stateless.nft"
    stateless.write_text(
        "table inet stateless {\n"
        f"  set big {{ type ipv4_addr; flags interval; auto-merge; elements = {{ {', '.join(prefixes)} }} }}\n"
        "  chain p {\n    type filter hook prerouting priority mangle;\n    ip daddr @big meta mark set 0x300\n  }\n}\n"
    )
    found.append(Case(
        "naive: a stateless mark from the 100,000-prefix set, no conntrack (+ one fwmark ip rule)",
        lambda: (lab.run(rtr, ["nft", "-f", str(stateless)]), fwmark_rule()),
        lambda: (lab.run(rtr, ["nft", "delete", "table", "inet", "stateless"]), no_fwmark_rule()),
    ))
    found.append(Case(
        f"naive: one ip rule per prefix ({NAIVE_RULES:,} rules)",
        lambda: lab.run(rtr, ["ip", "-batch", str(ip_rules)], timeout=600),
        lambda: lab.run(rtr, ["ip", "-batch", str(ip_rules_gone)]),
    ))
    return found


def main() -> None:
    runs, seconds = option("--runs", 5), option("--seconds", 3)
    prefixes = random_prefixes(PREFIXES, network=DESTINATIONS, lengths=(26, 30))
    with tempfile.TemporaryDirectory() as directory, Lab() as lab:
        tmp = Path(directory)
        binary = tmp / "trafficgen"
        subprocess.run(["cc", "-O2", "-o", str(binary), str(HERE / "trafficgen.c")], check=True)
        gen, rtr, sinks = build(lab)
        traffic, replies = tmp / "frames.bin", tmp / "replies.bin"
        frames((mac(lab, rtr, "lan0"), mac(lab, gen, "g0"), mac(lab, rtr, "wan0"), mac(lab, sinks[0], "eth0")),
               prefixes, traffic, replies)
        all_cases = cases(lab, rtr, tmp, prefixes)
        results: dict[str, dict[str, list[tuple[float, float]]]] = {
            mode: {case.name: [] for case in all_cases} for mode in ("new", "established")
        }
        for _ in range(runs):
            for case in all_cases:
                lab.run(rtr, ["conntrack", "-F"], check=False)  # no connection keeps a mark from the last case
                case.install()
                try:
                    measure(lab, gen, rtr, binary, traffic, 1)  # warm caches and conntrack
                    results["new"][case.name].append(measure(lab, gen, rtr, binary, traffic, seconds))
                    lab.run(sinks[0], [str(binary), "eth0", str(replies), "0.2"])  # every flow has seen a reply
                    results["established"][case.name].append(measure(lab, gen, rtr, binary, traffic, seconds))
                finally:
                    case.remove()
    publish("Data plane: forwarding with markroute rulesets", report(results, runs, seconds))


def report(results: dict[str, dict[str, list[tuple[float, float]]]], runs: int, seconds: int) -> str:
    text = (
        f"{runs} rounds of {seconds} s per configuration and traffic kind, configurations in rotation; "
        "median (min-max). Source: `benchmarks/trafficgen.c`, 4,096 UDP flows of 64-byte packets from both "
        "CPUs (no pktgen in this kernel). Ratios: packets/s to the no-ruleset rate, and no-ruleset CPU "
        "per packet to this one's (100% = no cost).\n"
    )
    titles = {
        "new": "Unreplied flows: conntrack keeps every packet `new`; flows no policy marked walk the policy "
               "chain on every packet (the worst case for policy matching)",
        "established": "Established flows: each flow has seen a reply (one frame per flow from the uplink side), "
                       "as in real traffic; packets are restored from the connection mark",
    }
    for mode, by_case in results.items():
        base_rate = statistics.median(r for r, _ in by_case["no ruleset (baseline)"])
        base_cpu = statistics.median(c for _, c in by_case["no ruleset (baseline)"])
        text += (
            f"\n### {titles[mode]}\n\n"
            "| configuration | packets/s forwarded | rate vs no ruleset | CPU µs per packet | efficiency vs no ruleset |\n"
            "|---|---|---|---|---|\n"
        )
        for name, samples in by_case.items():
            rates, cpus = [r for r, _ in samples], [c for _, c in samples]
            text += (
                f"| {name} | {statistics.median(rates):,.0f} ({min(rates):,.0f}-{max(rates):,.0f}) "
                f"| {statistics.median(rates) / base_rate:.1%} "
                f"| {statistics.median(cpus):.2f} ({min(cpus):.2f}-{max(cpus):.2f}) "
                f"| {base_cpu / statistics.median(cpus):.1%} |\n"
            )
    return text


if __name__ == "__main__":
    main()
