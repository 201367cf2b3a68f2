"""iptables-nft's `xt` expressions, modelled from the options iptables-nft-save prints.

A rule iptables-nft wrote keeps some extensions as `xt` compatibility expressions
whose options nft's JSON cannot show (see `markroute.kernel.iptables`). The snapshot
of a live system therefore carries iptables-nft-save's text; here it is parsed, each
nft rule holding `xt` is paired with the rule at the same position of the same chain
in that text (after checking that the extension names agree), and the extensions
Docker, ufw, firewalld's iptables backend and kube-proxy use are compiled into the
same closures as native expressions: addrtype, conntrack/state, comment, mark,
connmark, multiport, set (ipset), physdev, icmp/icmp6, tcp/udp, pkttype, iprange, mac,
statistic, and the targets MASQUERADE, SNAT, DNAT, REDIRECT, REJECT, MARK, CONNMARK,
CT --notrack, DSCP and the ones that only log or count.

Anything else, or a rule that cannot be paired, is indeterminate with the reason in
words: the trace then names the rule (table, chain, handle) and the iptables option.
"""

from __future__ import annotations

import ipaddress
import shlex
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from markroute.sim.datatypes import (
    DSCP_CLASSES,
    FIB_TYPES,
    ICMP_TYPES,
    ICMPV6_TYPES,
    L4_PROTOCOLS,
    Span,
)
from markroute.sim.inert import PASSIVE_TARGETS
from markroute.sim.nft import (
    ACCEPT,
    BREAK,
    TRANSPORT_PORTS,
    Verdict,
    _ct_tuple,
    _unknown,
)
from markroute.sim.nft import _pkttype as pkttype
from markroute.sim.packet import CT_ESTABLISHED, CT_NEW, Indeterminate, Packet

if TYPE_CHECKING:
    from markroute.sim.nft import Chain, RuleBuilder

Op = Callable[[Packet], Any]
COMMANDS = {"ip": "iptables", "ip6": "ip6tables"}
# Extensions the iptables binary of another version may name differently in the kernel.
KERNEL_NAMES = {"state": "conntrack", "NOTRACK": "CT"}
# Options taking exactly one argument that may look like an option ("--comment -x").
ONE_ARGUMENT = frozenset({"--comment", "--log-prefix", "--nflog-prefix"})
# Why well-known extensions are not modelled: what they depend on.
UNMODELLED = {
    "recent": ": it depends on the addresses seen recently",
    "limit": ": a rate limit depends on the traffic that came before",
    "hashlimit": ": a rate limit depends on the traffic that came before",
    "connlimit": ": it depends on how many connections are open",
    "connbytes": ": it depends on how much the connection has carried",
    "quota": ": it depends on the traffic that came before",
    "owner": ": it depends on the local socket's owner",
    "socket": ": it depends on the local sockets",
    "time": ": it depends on the time of day",
    "string": ": it depends on the packet's payload",
    "u32": ": it reads raw packet bytes",
    "bpf": ": it runs a BPF program",
    "NFQUEUE": ": a program in user space decides",
    "TPROXY": ": transparent proxying is not modelled",
}
PASSIVE_MATCH_OPTIONS = frozenset({"--update-counters", "--update-subcounters"})
CT_STATE_NAMES = {"INVALID", "NEW", "ESTABLISHED", "RELATED", "UNTRACKED", "SNAT", "DNAT"}
STATISTIC_SCALE = 0x80000000


@dataclass(frozen=True)
class Option:
    name: str
    args: tuple[str, ...]
    negated: bool = False

    @property
    def value(self) -> str:
        return self.args[0] if self.args else ""

    def text(self) -> str:
        words = [self.name, *(shlex.quote(a) for a in self.args)]
        return ("! " if self.negated else "") + " ".join(words)


@dataclass
class Extension:
    """One `-m NAME` or `-j NAME` of a saved rule, with its options in order."""

    name: str
    options: list[Option] = field(default_factory=list)

    def get(self, *names: str) -> Option | None:
        return next((o for o in self.options if o.name in names), None)

    def text(self, kind: str) -> str:
        return " ".join([f"{kind} {self.name}", *(o.text() for o in self.options)])


@dataclass
class SavedRule:
    line: str
    matches: list[Extension]
    target: Extension | None


def parse_save(text: str) -> dict[tuple[str, str], list[SavedRule]]:
    """iptables-save text -> the rules of each (table, chain), in order."""
    chains: dict[tuple[str, str], list[SavedRule]] = {}
    table = ""
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("*"):
            table = line[1:]
        elif line.startswith(":"):
            chains.setdefault((table, line[1:].split()[0]), [])
        elif line.startswith("-A "):
            words = shlex.split(line)
            chains.setdefault((table, words[1]), []).append(parse_rule(line, words))
    return chains


def parse_rule(line: str, words: list[str]) -> SavedRule:
    """The extensions of one `-A CHAIN ...` line; generic options (-s, -i, -p ...) are native in nft."""
    matches: list[Extension] = []
    target: Extension | None = None
    current: Extension | None = None
    negated = False
    index = 2
    while index < len(words):
        word = words[index]
        index += 1
        if word == "!":
            negated = True
            continue
        if word in ("-m", "--match", "-j", "--jump") and index < len(words):
            current = Extension(words[index])
            index += 1
            if word in ("-m", "--match"):
                matches.append(current)
            else:
                target = current
        elif word.startswith("--") and current is not None:
            args: list[str] = []
            if word in ONE_ARGUMENT and index < len(words):
                args.append(words[index])
                index += 1
            while word not in ONE_ARGUMENT and index < len(words) and words[index] != "!" and not (
                    words[index].startswith("-") and not _number(words[index])):
                args.append(words[index])
                index += 1
            current.options.append(Option(word, tuple(args), negated))
        else:
            current = None
            if word not in ("-f", "--fragment") and index < len(words):
                index += 1  # a generic option's argument (-s ADDR, -i IF, -p PROTO, -g CHAIN, -c N N)
                if word in ("-c", "--set-counters"):
                    index += 1
        negated = False
    return SavedRule(line, matches, target)


def _number(word: str) -> bool:
    return word[1:].replace(".", "").isdigit()


@dataclass
class Ipset:
    kind: str  # hash:ip, hash:net, hash:ip,port ...
    family: int | None  # None: a set of ports, for either family
    members: list[tuple[tuple[Any, ...], bool]]  # (one Span or port per dimension, nomatch)


def parse_ipsets(text: str) -> dict[str, Ipset]:
    """`ipset save` text -> the sets and their members."""
    sets: dict[str, Ipset] = {}
    for line in text.splitlines():
        words = line.split()
        if len(words) >= 3 and words[0] == "create":
            kind = words[2]
            family = 6 if "inet6" in words[3:] else 4 if "inet" in words[3:] or kind.startswith("bitmap:ip") else None
            sets[words[1]] = Ipset(kind, family, [])
        elif len(words) >= 3 and words[0] == "add" and words[1] in sets:
            found = sets[words[1]]
            try:
                member = _ipset_member(found, words[2])
            except ValueError:
                continue
            found.members.append((member, "nomatch" in words[3:]))
    return sets


def _ipset_member(found: Ipset, text: str) -> tuple[Any, ...]:
    dimensions = found.kind.split(":", 1)[1].split(",")
    parts = text.split(",")
    if len(parts) != len(dimensions):
        raise ValueError(text)
    member: list[Any] = []
    for dimension, part in zip(dimensions, parts):
        if dimension in ("ip", "net"):
            member.append(_address_span(part))
        elif dimension == "port":
            proto, _, port = part.rpartition(":")
            low, _, high = port.partition("-")
            # hash types store a protocol (tcp unless given); bitmap:port only the number
            member.append((proto or ("tcp" if found.kind.startswith("hash") else None), Span(int(low), int(high or low))))
        else:
            member.append(part)
    return tuple(member)


def _address_span(text: str) -> Span:
    if "-" in text:
        first, last = text.split("-", 1)
        return Span(int(ipaddress.ip_address(first)), int(ipaddress.ip_address(last)))
    network = ipaddress.ip_network(text, strict=False)
    return Span(int(network.network_address), int(network.broadcast_address))


class Iptables:
    """iptables-nft-save's view of a live ruleset, per family, to pair with nft's rules."""

    def __init__(self, saved: dict[str, dict[str, str]], ipset: dict[str, str] | None = None) -> None:
        self.chains: dict[str, dict[tuple[str, str], list[SavedRule]]] = {}
        self.errors: dict[str, str] = {}
        for family, entry in saved.items():
            if "save" in entry:
                self.chains[family] = parse_save(entry["save"])
            else:
                self.errors[family] = entry.get("error", "iptables-nft-save was not read")
        self.ipset_error = ipset.get("error") if ipset else None
        self.sets = parse_ipsets(ipset["save"]) if ipset and "save" in ipset else {}

    @classmethod
    def from_snapshot(cls, snapshot: dict[str, Any]) -> Iptables | None:
        saved = snapshot.get("iptables")
        return cls(saved, snapshot.get("ipset")) if saved else None

    def lists(self, chain: Chain) -> bool:
        """Whether iptables-nft-save lists `chain` (or could not be read for its family)."""
        return chain.family in self.errors or (chain.table, chain.name) in self.chains.get(chain.family, {})

    def binding(self, chain: Chain, position: int, body: dict[str, Any]) -> XtRule:
        """The saved rule at `position` of `chain`, checked against the nft rule's `xt` names."""
        command = COMMANDS.get(chain.family)
        if command is None:
            return XtRule(None, f"{chain.family} tables have no iptables-nft-save to read xt options from")
        if chain.family in self.errors:
            return XtRule(None, self.errors[chain.family])
        saved = self.chains.get(chain.family, {}).get((chain.table, chain.name))
        if saved is None:
            return XtRule(None, f"{command}-nft-save does not list chain {chain.name} of table {chain.table}")
        if position >= len(saved):
            return XtRule(None, f"{command}-nft-save lists {len(saved)} rules in {chain.table} {chain.name}, "
                                f"nft at least {position + 1}: rules were added by nft itself")
        rule = saved[position]
        wanted = [(x["xt"].get("type"), x["xt"].get("name")) for x in body.get("expr", []) if "xt" in x]
        names = {("match", _kernel_name(m.name)) for m in rule.matches}
        if rule.target is not None:
            names.add(("target", _kernel_name(rule.target.name)))
        missing = [f"{kind} {name}" for kind, name in wanted if (kind, _kernel_name(str(name))) not in names]
        if missing:
            return XtRule(None, f"rule {position + 1} of {chain.table} {chain.name} in {command}-nft-save "
                                f"({rule.line}) has no {', '.join(missing)}: the two listings do not pair up")
        return XtRule(rule, None, f"{command} -t {chain.table} {rule.line}", self)


def _kernel_name(name: str) -> str:
    return KERNEL_NAMES.get(name, name)


class XtRule:
    """The `xt` expressions of one nft rule, compiled from the saved rule paired with it."""

    def __init__(self, saved: SavedRule | None, problem: str | None, text: str | None = None,
                 iptables: Iptables | None = None) -> None:
        self.saved = saved
        self.problem = problem
        self.text = text
        self.iptables = iptables
        self.used: dict[tuple[str, str], int] = {}

    def compile(self, compiler: RuleBuilder, body: dict[str, Any]) -> Op | None:
        kind = str(body.get("type"))
        name = str(body.get("name"))
        what = f"iptables {kind} {name}"
        if self.saved is None:
            return _unknown(what, f"its options are not known: {self.problem}")
        candidates = self.saved.matches if kind == "match" else [self.saved.target] if self.saved.target else []
        found = [e for e in candidates if _kernel_name(e.name) == _kernel_name(name)]
        seen = self.used.get((kind, name), 0)
        self.used[(kind, name)] = seen + 1
        extension = found[min(seen, len(found) - 1)]
        text = extension.text("-m" if kind == "match" else "-j")
        builder = (MATCHES if kind == "match" else TARGETS).get(extension.name)
        if builder is None:
            if kind == "target" and extension.name in PASSIVE_TARGETS:
                return None
            why = UNMODELLED.get(extension.name, "")
            return _unknown(text, f"the iptables {'match' if kind == 'match' else 'target'} {extension.name} "
                                  f"is not modelled{why}")
        try:
            return builder(Context(compiler, extension, text, self.iptables))
        except (ValueError, KeyError, IndexError) as exc:
            return _unknown(text, f"these options are not understood ({exc})")


@dataclass
class Context:
    compiler: RuleBuilder
    extension: Extension
    text: str
    iptables: Iptables | None

    @property
    def version(self) -> int | None:
        return {"ip": 4, "ip6": 6}.get(self.compiler.chain.family)

    def unknown(self, why: str) -> Op:
        return _unknown(self.text, why)

    def reject_options(self, known: set[str]) -> None:
        extra = [o.name for o in self.extension.options if o.name not in known]
        if extra:
            raise ValueError(f"option {', '.join(extra)} is not modelled")


def _all(tests: list[Callable[[Packet], bool]]) -> Op:
    """A match that holds when every test does (an iptables rule's options are a conjunction)."""
    def match(p: Packet) -> Any:
        for test in tests:
            if not test(p):
                return BREAK
        return None

    return match


# -- matches ------------------------------------------------------------------------------


def m_comment(ctx: Context) -> Op | None:
    return None


def m_addrtype(ctx: Context) -> Op:
    ctx.reject_options({"--src-type", "--dst-type", "--limit-iface-in", "--limit-iface-out"})
    rpdb = ctx.compiler.system.rpdb
    limit_in = ctx.extension.get("--limit-iface-in") is not None
    limit_out = ctx.extension.get("--limit-iface-out") is not None
    text = ctx.text
    tests: list[Callable[[Packet], bool]] = []
    for name, attribute in (("--src-type", "src"), ("--dst-type", "dst")):
        option = ctx.extension.get(name)
        if option is None:
            continue
        wanted = {FIB_TYPES[t.lower()] for t in option.value.split(",")}
        negated = option.negated

        def test(p: Packet, attribute: str = attribute, wanted: set[int] = wanted, negated: bool = negated) -> bool:
            address = getattr(p, attribute)
            if address is None:
                raise Indeterminate(text, "the address NAT gave this packet is not known")
            dev = p.in_dev if limit_in else p.out_dev if limit_out else None
            found = FIB_TYPES[rpdb.address_type(p.version, address, dev)] in wanted
            return found != negated

        tests.append(test)
    return _all(tests)


def _states(option: Option) -> Callable[[Packet], bool]:
    wanted = {s.upper() for s in option.value.split(",")}
    unknown = wanted - CT_STATE_NAMES
    if unknown:
        raise ValueError(f"state {', '.join(sorted(unknown))}")
    negated = option.negated

    def test(p: Packet) -> bool:
        if p.untracked:
            states = {"UNTRACKED"}
        elif p.ct is None:
            states = {"INVALID"}
        else:
            states = {"ESTABLISHED" if p.ct_state == CT_ESTABLISHED else "NEW" if p.ct_state == CT_NEW else "INVALID"}
            if p.ct.snat is not None:
                states.add("SNAT")
            if p.ct.dnat is not None:
                states.add("DNAT")
        return bool(states & wanted) != negated

    return test


def m_state(ctx: Context) -> Op:
    ctx.reject_options({"--state"})
    option = ctx.extension.get("--state")
    return _all([_states(option)] if option else [])


def m_conntrack(ctx: Context) -> Op:
    ctx.reject_options({"--ctstate", "--state", "--ctdir", "--ctproto", "--ctorigsrc", "--ctorigdst", "--ctreplsrc",
                        "--ctrepldst", "--ctorigsrcport", "--ctorigdstport", "--ctreplsrcport", "--ctrepldstport"})
    tests: list[Callable[[Packet], bool]] = []
    has_state = False
    for option in ctx.extension.options:
        if option.name in ("--ctstate", "--state"):
            tests.append(_states(option))
            has_state = True
    text = ctx.text
    rest: list[Callable[[Packet], bool]] = []
    for option in ctx.extension.options:
        if option.name in ("--ctdir", "--ctproto"):
            rest.append(_ct_field(option))
        elif option.name in CT_TUPLE_OPTIONS:
            rest.append(_ct_tuple_test(option, text))

    def conntrack(p: Packet) -> Any:
        for test in tests:
            if not test(p):
                return BREAK
        if p.ct is None or p.untracked:
            return None if has_state else BREAK  # the kernel: without an entry only the state test can match
        for check in rest:
            if not check(p):
                return BREAK
        return None

    return conntrack


def _ct_field(option: Option) -> Callable[[Packet], bool]:
    """--ctdir ORIGINAL|REPLY, --ctproto P: the direction of this packet, the connection's protocol."""
    if option.name == "--ctdir":
        reply = option.value.upper() == "REPLY"
        return lambda p: (p.ct_reply == reply) != option.negated
    number = int(option.value) if option.value.isdigit() else L4_PROTOCOLS[option.value.lower()]
    return lambda p: (p.proto == number) != option.negated


CT_TUPLE_OPTIONS = {
    "--ctorigsrc": ("original", "saddr"), "--ctorigdst": ("original", "daddr"),
    "--ctreplsrc": ("reply", "saddr"), "--ctrepldst": ("reply", "daddr"),
    "--ctorigsrcport": ("original", "proto-src"), "--ctorigdstport": ("original", "proto-dst"),
    "--ctreplsrcport": ("reply", "proto-src"), "--ctrepldstport": ("reply", "proto-dst"),
}


def _ct_tuple_test(option: Option, text: str) -> Callable[[Packet], bool]:
    """--ctorigsrc ADDR[/MASK], --ctrepldstport PORT[:PORT] ...: the connection's tuples, as nft's `ct` reads them."""
    direction, name = CT_TUPLE_OPTIONS[option.name]
    get = _ct_tuple(direction, name, text)
    if name.startswith("proto"):
        low, _, high = option.value.partition(":")
        span = Span(int(low), int(high or low))
    else:
        network = ipaddress.ip_network(option.value, strict=False)
        span = Span(int(network.network_address), int(network.broadcast_address))
    return lambda p: (span.lo <= get(p) <= span.hi) != option.negated


def _mark_test(option: Option) -> tuple[int, int, bool]:
    value, _, mask = option.value.partition("/")
    return int(value, 0), int(mask, 0) if mask else 0xFFFFFFFF, option.negated


def m_mark(ctx: Context) -> Op:
    ctx.reject_options({"--mark"})
    option = ctx.extension.get("--mark")
    assert option is not None
    value, mask, negated = _mark_test(option)
    return _all([lambda p: ((p.mark & mask) == value) != negated])


def m_connmark(ctx: Context) -> Op:
    ctx.reject_options({"--mark"})
    option = ctx.extension.get("--mark")
    assert option is not None
    value, mask, negated = _mark_test(option)
    # No conntrack entry: the kernel's connmark match fails whatever the inversion.
    return _all([lambda p: p.ct is not None and not p.untracked and ((p.ct.mark & mask) == value) != negated])


def _port_spans(text: str) -> list[Span]:
    spans = []
    for item in text.split(","):
        low, _, high = item.partition(":")
        spans.append(Span(int(low), int(high or low)))
    return spans


def _port(p: Packet, name: str, text: str) -> int | None:
    if p.proto is None:
        raise Indeterminate(text, "depends on the protocol: pass --proto")
    if p.proto not in TRANSPORT_PORTS:
        return None
    value = getattr(p, name)
    if value is None:
        raise Indeterminate(text, f"depends on the {'source' if name == 'sport' else 'destination'} port: "
                                  f"pass --{name}")
    return int(value)


def m_multiport(ctx: Context) -> Op:
    ctx.reject_options({"--sports", "--dports", "--ports", "--source-ports", "--destination-ports"})
    text = ctx.text
    tests: list[Callable[[Packet], bool]] = []
    for option in ctx.extension.options:
        spans = _port_spans(option.value)
        fields = {"--sports": ("sport",), "--source-ports": ("sport",), "--dports": ("dport",),
                  "--destination-ports": ("dport",), "--ports": ("sport", "dport")}[option.name]

        def test(p: Packet, spans: list[Span] = spans, fields: tuple[str, ...] = fields,
                 negated: bool = option.negated) -> bool:
            ports = [_port(p, f, text) for f in fields]
            if any(port is None for port in ports):
                return False
            hit = any(s.lo <= port <= s.hi for s in spans for port in ports if port is not None)
            return hit != negated

        tests.append(test)
    return _all(tests)


def m_tcp_udp(ctx: Context) -> Op:
    ctx.reject_options({"--sport", "--dport", "--source-port", "--destination-port", "--tcp-flags", "--syn"})
    text = ctx.text
    number = 6 if ctx.extension.name == "tcp" else 17 if ctx.extension.name == "udp" else 132
    tests: list[Callable[[Packet], bool]] = [lambda p: p.proto == number]
    for option in ctx.extension.options:
        if option.name in ("--sport", "--source-port", "--dport", "--destination-port"):
            tests.append(_port_test(option, text))
        else:
            tests.append(_flags_test(option, text))
    return _all(tests)


def _port_test(option: Option, text: str) -> Callable[[Packet], bool]:
    span = _port_spans(option.value)[0]
    name = "sport" if option.name in ("--sport", "--source-port") else "dport"

    def test(p: Packet) -> bool:
        port = _port(p, name, text)
        return port is not None and (span.lo <= port <= span.hi) != option.negated

    return test


def _flags_test(option: Option, text: str) -> Callable[[Packet], bool]:
    if option.name == "--syn":
        mask, wanted = 0x17, 0x02
    else:
        mask, wanted = _tcp_flags(option.args[0]), _tcp_flags(option.args[1])

    def test(p: Packet) -> bool:
        return ((_flags(p, text) & mask) == wanted) != option.negated

    return test


def _tcp_flags(text: str) -> int:
    bits = {"FIN": 1, "SYN": 2, "RST": 4, "PSH": 8, "ACK": 16, "URG": 32, "ALL": 63, "NONE": 0}
    value = 0
    for name in text.split(","):
        value |= bits[name.upper()]
    return value


def _flags(p: Packet, text: str) -> int:
    if p.tcp_flags is None:
        raise Indeterminate(text, "the packet's TCP flags are not known")
    return p.tcp_flags


def m_icmp(ctx: Context) -> Op:
    ctx.reject_options({"--icmp-type", "--icmpv6-type"})
    option = ctx.extension.get("--icmp-type", "--icmpv6-type")
    number = 1 if ctx.extension.name == "icmp" else 58
    if option is None or option.value == "any":
        return _all([lambda p: p.proto == number])
    names = ICMP_TYPES if number == 1 else ICMPV6_TYPES
    kind, _, code = option.value.partition("/")
    wanted_type = int(kind) if kind.isdigit() else names[kind]
    codes = Span(int(code), int(code)) if code else Span(0, 255)
    negated = option.negated
    return _all([lambda p: p.proto == number and
                 (p.icmp_type == wanted_type and codes.lo <= 0 <= codes.hi) != negated])


def m_pkttype(ctx: Context) -> Op:
    ctx.reject_options({"--pkt-type"})
    option = ctx.extension.get("--pkt-type")
    assert option is not None
    wanted = {"unicast": 0, "host": 0, "broadcast": 1, "multicast": 2, "otherhost": 3}[option.value.lower()]
    return _all([lambda p: (pkttype(p) == wanted) != option.negated])


def m_iprange(ctx: Context) -> Op:
    ctx.reject_options({"--src-range", "--dst-range"})
    text = ctx.text
    tests: list[Callable[[Packet], bool]] = []
    for option in ctx.extension.options:
        span = _address_span(option.value)
        attribute = "src" if option.name == "--src-range" else "dst"

        def test(p: Packet, span: Span = span, attribute: str = attribute, negated: bool = option.negated) -> bool:
            value = getattr(p, attribute)
            if value is None:
                raise Indeterminate(text, "the address NAT gave this packet is not known")
            return (span.lo <= value <= span.hi) != negated

        tests.append(test)
    return _all(tests)


def m_mac(ctx: Context) -> Op:
    ctx.reject_options({"--mac-source"})
    option = ctx.extension.get("--mac-source")
    assert option is not None
    wanted = option.value.lower()
    text = ctx.text

    def test(p: Packet) -> bool:
        if p.in_dev is None or p.local_out:
            return False  # no Ethernet header: the kernel's mac match fails, inverted or not
        if p.mac is None:
            raise Indeterminate(text, "depends on the sender's MAC address: pass --mac")
        return (p.mac.lower() == wanted) != option.negated

    return _all([test])


def m_physdev(ctx: Context) -> Op:
    """Bridge ports of a bridged packet; a routed packet that never crossed a bridge has none.

    For such a packet the kernel's physdev match succeeds exactly when every option
    it uses is inverted. Only when br_netfilter is loaded can an IP hook see a bridged
    packet, and which bridge port it crossed is not modelled.
    """
    ctx.reject_options({"--physdev-in", "--physdev-out", "--physdev-is-in", "--physdev-is-out",
                        "--physdev-is-bridged"})
    host = ctx.compiler.system.host
    all_inverted = all(o.negated for o in ctx.extension.options)
    text = ctx.text

    def physdev(p: Packet) -> Any:
        if "net/bridge/bridge-nf-call-iptables" in host.sysctls:
            raise Indeterminate(text, "br_netfilter is loaded: whether and over which bridge port the packet "
                                      "was bridged is not modelled")
        return None if all_inverted else BREAK

    return physdev


def m_set(ctx: Context) -> Op:
    ctx.reject_options({"--match-set", "--return-nomatch", *PASSIVE_MATCH_OPTIONS})
    option = ctx.extension.get("--match-set")
    assert option is not None and len(option.args) == 2
    name, directions = option.args
    text = ctx.text
    iptables = ctx.iptables
    if iptables is None or name not in iptables.sets:
        why = iptables.ipset_error if iptables is not None and iptables.ipset_error else f"ipset {name} is not known"
        return ctx.unknown(why)
    found = iptables.sets[name]
    dimensions = found.kind.split(":", 1)[1].split(",")
    if found.kind.split(":")[0] not in ("hash", "bitmap") or any(d not in ("ip", "net", "port") for d in dimensions):
        return ctx.unknown(f"ipset {name} is of type {found.kind}, which is not modelled")
    flags = directions.split(",")
    if len(flags) < len(dimensions):
        return ctx.unknown(f"{directions}: fewer directions than the {found.kind} set has dimensions")
    return_nomatch = ctx.extension.get("--return-nomatch") is not None
    negated = option.negated

    def key(p: Packet) -> tuple[Any, ...] | None:
        values: list[Any] = []
        for dimension, flag in zip(dimensions, flags):
            if dimension in ("ip", "net"):
                value = p.src if flag == "src" else p.dst
                if value is None:
                    raise Indeterminate(text, "the address NAT gave this packet is not known")
                values.append(value)
            else:
                port = _port(p, "sport" if flag == "src" else "dport", text)
                if port is None:
                    return None
                values.append(({6: "tcp", 17: "udp", 132: "sctp"}.get(p.proto or 0, "?"), port))
        return tuple(values)

    def member(p: Packet) -> Any:
        if found.family is not None and p.version != found.family:
            return None if negated else BREAK  # a set of the other family holds nothing of this packet
        values = key(p)
        hit = _ipset_find(found, values) if values is not None else None
        matched = hit is not None and (not hit or return_nomatch)
        return None if matched != negated else BREAK

    return member


def _ipset_find(found: Ipset, values: tuple[Any, ...]) -> bool | None:
    """None: not in the set; else whether the most specific entry is a nomatch entry."""
    best: tuple[int, bool] | None = None
    for member, nomatch in found.members:
        size = 0
        for part, value in zip(member, values):
            if isinstance(part, Span):
                if not part.lo <= value <= part.hi:
                    break
                size += part.hi - part.lo
            elif isinstance(part, tuple):
                proto, span = part
                if proto is not None and value[0] != proto or not span.lo <= value[1] <= span.hi:
                    break
            elif part != value:
                break
        else:
            if best is None or size < best[0]:
                best = (size, nomatch)
    return None if best is None else best[1]


def m_statistic(ctx: Context) -> Op:
    ctx.reject_options({"--mode", "--probability"})
    mode = ctx.extension.get("--mode")
    if mode is None or mode.value != "random":
        return ctx.unknown("statistic --mode nth counts packets, which is not modelled")
    option = ctx.extension.get("--probability")
    assert option is not None
    chance = round(float(option.value) * STATISTIC_SCALE)
    weights = (chance, STATISTIC_SCALE - chance)
    label = f"{ctx.text} in {ctx.compiler.chain.label}"
    negated = option.negated or mode.negated
    return _all([lambda p: (p.choose(weights, label) == 0) != negated])


MATCHES: dict[str, Callable[[Context], Op | None]] = {
    "comment": m_comment, "addrtype": m_addrtype, "conntrack": m_conntrack, "state": m_state, "mark": m_mark,
    "connmark": m_connmark, "multiport": m_multiport, "tcp": m_tcp_udp, "udp": m_tcp_udp, "sctp": m_tcp_udp,
    "icmp": m_icmp, "icmp6": m_icmp, "pkttype": m_pkttype, "iprange": m_iprange, "mac": m_mac,
    "physdev": m_physdev, "set": m_set, "statistic": m_statistic,
}


# -- targets ------------------------------------------------------------------------------


def _nat_target(ctx: Context, option: Option | None, kind: str) -> tuple[Any, Any]:
    """(address or Span or None, port or Span or None) of `--to-source/--to-destination/--to-ports`."""
    if option is None:
        return None, None
    text = option.value
    if kind in ("masquerade", "redirect"):
        low, _, high = text.partition("-")
        return None, Span(int(low), int(high)) if high else int(low)
    if text.startswith("["):
        address_text, _, port_text = text[1:].partition("]")
        port_text = port_text.lstrip(":")
    elif text.count(":") == 1 or ctx.version == 4:
        address_text, _, port_text = text.partition(":")
    else:
        address_text, port_text = text, ""
    address: Any = None
    if address_text:
        first, _, last = address_text.partition("-")
        lo, hi = int(ipaddress.ip_address(first)), int(ipaddress.ip_address(last or first))
        address = lo if lo == hi else Span(lo, hi)
    port: Any = None
    if port_text:
        low, _, high = port_text.partition("-")
        port = Span(int(low), int(high)) if high and high != low else int(low)
    return address, port


def _nat(kind: str, option_name: str | None) -> Callable[[Context], Op]:
    def build(ctx: Context) -> Op:
        ctx.reject_options({"--to-source", "--to-destination", "--to-ports", "--random", "--random-fully",
                            "--persistent"})
        options = [o for o in ctx.extension.options if o.name == option_name] if option_name else []
        if len(options) > 1:
            return ctx.unknown("several NAT ranges in one rule (an old kernel's round robin) are not modelled")
        port_option = ctx.extension.get("--to-ports")
        address, port = _nat_target(ctx, options[0] if options else port_option, kind)
        if kind in ("snat", "dnat") and address is None:
            return ctx.unknown("a NAT target without an address is not modelled")
        text = ctx.text

        def nat(p: Packet) -> Any:
            p.nat_request = (kind, address, port, text)
            return ACCEPT

        return nat

    return build


def t_reject(ctx: Context) -> Op:
    rejected = Verdict("drop", reason=f"rejected ({ctx.text})")
    return lambda p: rejected


def _mark_change(option: str, text: str) -> Callable[[int], int]:
    """What MARK's and CONNMARK's `--set-xmark V/M` (and the others) do to a mark."""
    value, _, mask_text = text.partition("/")
    number = int(value, 0)
    mask = int(mask_text, 0) if mask_text else 0xFFFFFFFF
    if option == "--set-xmark":
        return lambda m: (m & ~mask) ^ number
    if option == "--set-mark":
        return lambda m: (m & ~mask) | number
    if option == "--and-mark":
        return lambda m: m & number
    if option == "--or-mark":
        return lambda m: m | number
    if option == "--xor-mark":
        return lambda m: m ^ number
    raise ValueError(f"option {option}")


def t_mark(ctx: Context) -> Op:
    ctx.reject_options({"--set-xmark", "--set-mark", "--and-mark", "--or-mark", "--xor-mark"})
    option = ctx.extension.options[0]
    change = _mark_change(option.name, option.value)

    def mark(p: Packet) -> None:
        p.mark = change(p.mark) & 0xFFFFFFFF

    return mark


def t_connmark(ctx: Context) -> Op:
    ctx.reject_options({"--set-xmark", "--set-mark", "--save-mark", "--restore-mark", "--nfmask", "--ctmask",
                        "--mask", "--and-mark", "--or-mark", "--xor-mark"})
    options = {o.name: o.value for o in ctx.extension.options}
    mask_all = options.get("--mask")
    nfmask = int(options.get("--nfmask", mask_all or "0xffffffff"), 0)
    ctmask = int(options.get("--ctmask", mask_all or "0xffffffff"), 0)
    if "--save-mark" in options:
        def save(p: Packet) -> None:
            if p.ct is not None and not p.untracked:
                p.ct.mark = ((p.ct.mark & ~ctmask) ^ (p.mark & nfmask)) & 0xFFFFFFFF
        return save
    if "--restore-mark" in options:
        def restore(p: Packet) -> None:
            if p.ct is not None and not p.untracked:
                p.mark = ((p.mark & ~nfmask) ^ (p.ct.mark & ctmask)) & 0xFFFFFFFF
        return restore
    name = next(iter(options))
    change = _mark_change(name, options[name])

    def set_connmark(p: Packet) -> None:
        if p.ct is not None and not p.untracked:
            p.ct.mark = change(p.ct.mark) & 0xFFFFFFFF

    return set_connmark


def t_ct(ctx: Context) -> Op | None:
    if ctx.extension.name == "NOTRACK" or ctx.extension.get("--notrack") is not None:
        ctx.reject_options({"--notrack"})

        def notrack(p: Packet) -> None:
            p.untracked = True

        return notrack
    ctx.reject_options({"--helper"})
    return None  # a helper only follows related connections (ftp data ...), not this flow's routing


def t_dscp(ctx: Context) -> Op:
    ctx.reject_options({"--set-dscp", "--set-dscp-class"})
    option = ctx.extension.options[0]
    value = int(option.value, 0) if option.name == "--set-dscp" else DSCP_CLASSES[option.value.lower()]

    def dscp(p: Packet) -> None:
        p.dscp = value

    return dscp


TARGETS: dict[str, Callable[[Context], Op | None]] = {
    "MASQUERADE": _nat("masquerade", None), "SNAT": _nat("snat", "--to-source"),
    "DNAT": _nat("dnat", "--to-destination"), "REDIRECT": _nat("redirect", None), "REJECT": t_reject,
    "MARK": t_mark, "CONNMARK": t_connmark, "CT": t_ct, "NOTRACK": t_ct, "DSCP": t_dscp,
}
