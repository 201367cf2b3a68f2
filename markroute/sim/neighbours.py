"""What other software's rules do to markroute's traffic, found by simulating it live.

A router rarely runs markroute alone: a firewall (`inet filter` from nftables.conf,
ufw, firewalld), Docker's iptables-nft chains, Tailscale's or wg-quick's ip rules. Any
of them can drop, reject or re-route the connections markroute steers, and markroute's
own view (counters rising, no drift) does not show it: Docker's FORWARD policy drop
eats the SYN-ACKs of connections markroute sends out a WAN while `status` looks fine.

`inspect` walks a handful of representative connections through the live simulator
(markroute's table plus every foreign table, rule and route), each with its reply:

* per policy, per LAN interface and IP family: a forwarded connection, and one the
  router itself opens: a plain TCP connection from a LAN host first, then with the
  policy's own constants (read from the comments markroute puts on its rules) until
  one really reaches that policy (at most five tries);
* per uplink: a connection arriving through it, whose reply must leave through it.

Every balance outcome is explored, so each uplink a policy can use is seen. A path is
reported when a rule of a table that is not markroute's drops or rejects it, when an
ip rule outside markroute's band sends a packet markroute marked for an uplink
elsewhere, or when a reply leaves by another interface than the one its connection
came in by because of such a rule. A new connection arriving from outside that a
firewall drops is its intent and is not reported; its reply is.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Any

from markroute.plan import UplinkPlan
from markroute.sim.foreign import KERNEL_PRIORITIES, Finding, Ours, in_table
from markroute.sim.packet import TCP, Flow, Indeterminate, address_text
from markroute.sim.reach import WITNESS_MAC, _candidates
from markroute.sim.rpdb import Query
from markroute.sim.system import Link
from markroute.sim.trace import Simulator

SUBJECT = "\x00subject\x00"  # where the merged message names the paths' policies or uplinks
SHOWN = 4
MAX_LAN_INTERFACES = 3
REMOTE = {4: int(ipaddress.ip_address("198.51.100.77")), 6: int(ipaddress.ip_address("2001:db8:ffee::77"))}
OUTSIDE = {4: int(ipaddress.ip_address("203.0.113.77")), 6: int(ipaddress.ip_address("2001:db8:eeee::77"))}
SPORT = 40000
DPORT = 443
INGRESS_PORT = 22


@dataclass(frozen=True)
class Probe:
    """A representative connection and what it stands for."""

    flow: Flow
    what: str  # "policy NAME" or "ingress UPLINK"


def inspect(simulator: Simulator, ours: Ours, document: dict[str, Any]) -> list[Finding]:
    """Every distinct problem foreign rules cause to markroute's representative paths.

    `document` is the live nft listing the simulator was built from: markroute's own
    rules in it say which constants reach each policy.
    """
    grouped: dict[tuple[Any, ...], list[Finding]] = {}
    for probe in probes(simulator, ours, document):
        for finding in _judge(simulator, ours, probe):
            key = (finding.kind, finding.direction, finding.table, finding.chain, finding.rule, finding.hint,
                   finding.message)
            same = grouped.setdefault(key, [])
            if all(f.subjects != finding.subjects for f in same):
                same.append(finding)
    return [_merged(same) for same in grouped.values()]


def _merged(same: list[Finding]) -> Finding:
    """One finding for the paths a rule breaks alike: its message names them all (a few, then a count)."""
    subjects = tuple(s for finding in same for s in finding.subjects)
    first = same[0]
    message = first.message.replace(SUBJECT, _subject_text(subjects)) + f", e.g. {first.flow}"
    return replace(first, message=message, subjects=subjects)


def _subject_text(subjects: tuple[str, ...]) -> str:
    kind = subjects[0].split(" ", 1)[0]
    names = [s.split(" ", 1)[1] for s in subjects]
    shown = ", ".join(names[:SHOWN])
    more = f" and {len(names) - SHOWN} more" if len(names) > SHOWN else ""
    plural = {"policy": "policies", "uplink": "uplinks"}.get(kind, kind) if len(names) > 1 else kind
    return f"{plural} {shown}{more}"


# -- representative flows -------------------------------------------------------------


def probes(simulator: Simulator, ours: Ours, document: dict[str, Any]) -> Iterator[Probe]:
    """Per policy, LAN side and family a flow that reaches it; per uplink an incoming connection."""
    links = simulator.host.links or {}
    uplink_ifs = {u.interface for u in ours.uplinks}
    lans = [link for name, link in sorted(links.items())
            if name != "lo" and name not in uplink_ifs and link.up and link.addresses][:MAX_LAN_INTERFACES]
    candidates = _candidates({"nftables": [o for o in document.get("nftables", []) if in_table(o, ours.table)]})
    reached: dict[Flow, frozenset[str | None]] = {}
    for policy in _policy_names(document, ours.table):
        own = candidates.own.get(f"policy {policy}", {})
        for version in (4, 6):
            for lan in lans:
                client = _client(lan, version)
                if client is not None:
                    flow = _reaching(simulator, policy, version, own, reached, iif=lan.name, src=client)
                    if flow is not None:
                        yield Probe(flow, f"policy {policy}")
            source = _local_source(simulator, links, ours, version)
            if source is not None:
                flow = _reaching(simulator, policy, version, own, reached, iif=None, src=source)
                if flow is not None:
                    yield Probe(flow, f"policy {policy}")
    for uplink in ours.uplinks:
        link = links.get(uplink.interface)
        for version in uplink.versions:
            address = link.first(version) if link is not None else None
            if address is not None:
                flow = Flow(version=version, src=OUTSIDE[version], dst=address, proto=TCP, sport=SPORT,
                            dport=INGRESS_PORT, iif=uplink.interface, mac=WITNESS_MAC)
                yield Probe(flow, f"ingress {uplink.name}")


def _policy_names(document: dict[str, Any], table: str) -> list[str]:
    """Every policy a rule of markroute's table is commented with, in rule order (merged ones too: their
    `pol_N` chains keep the comment)."""
    names: list[str] = []
    for obj in document.get("nftables", []):
        rule = obj.get("rule") if isinstance(obj, dict) else None
        comment = str(rule.get("comment", "")) if rule and rule.get("table") == table else ""
        if comment.startswith("policy ") and comment[7:] not in names:
            names.append(comment[7:])
    return names


def _client(lan: Link, version: int) -> int | None:
    """An address on the LAN's subnet that is not the router's: where a LAN host would send from."""
    own = {address for v, address, _ in lan.addresses if v == version}
    for v, address, plen in lan.addresses:
        bits = 32 if v == 4 else 128
        if v != version or plen >= bits - 1 or (v == 6 and address >> 118 == 0x3FA):
            continue
        network = address & ~((1 << (bits - plen)) - 1)
        for offset in range(1, 8):
            if network + offset not in own:
                return network + offset
    return None


def _local_source(simulator: Simulator, links: dict[str, Link], ours: Ours, version: int) -> int | None:
    """The source a socket of the router gets when it connects without binding, as the kernel picks it.

    The kernel looks the route up with no source (so no `from` rule matches) and takes the
    route's preferred source or its device's first address. markroute installs no `from`
    rule for the uplink holding main's default route, so that source reaches the policies;
    the first uplink's address stands in when nothing routes an unbound socket (it can then
    only send bound, or marked by its owner).
    """
    query = Query(version, 0, REMOTE[version], "lo", None, 0, TCP, SPORT, DPORT, 0, uid=None)
    try:
        found = simulator.rpdb.lookup(query, lambda options, what: 0)
    except Indeterminate:  # e.g. a uidrange rule: the socket's owner is not known
        found = None
    if found is not None and not found.error and not found.delivered and found.dev is not None:
        prefsrc = found.route.prefsrc if found.route is not None else None
        link = links.get(found.dev)
        chosen = prefsrc if prefsrc is not None else link.first(version) if link is not None else None
        if chosen is not None:
            return chosen
    for uplink in ours.uplinks:
        link = links.get(uplink.interface)
        address = link.first(version) if link is not None else None
        if address is not None:
            return address
    return None


def _reaching(simulator: Simulator, policy: str, version: int, own: dict[str, dict[Any, None]],
              reached: dict[Flow, frozenset[str | None]], iif: str | None, src: int) -> Flow | None:
    """The first of a few candidate flows whose first packet reaches `policy`, if any does.

    REACHED keeps the policies each flow walked so far reaches: the plain first candidate
    is every policy's, and a socket's candidates repeat (its source is never the
    policy's), so a socket's flows for a policy that none reaches cost two walks, not five.
    """
    for flow in _candidate_flows(version, own, iif, src):
        if flow not in reached:
            try:
                leaves = simulator.explore(flow, record=False, with_reply=False)
            except ValueError:
                leaves = []
            reached[flow] = frozenset(leaf.path.outcome.policy for leaf in leaves)
        if policy in reached[flow]:
            return flow
    return None


def _candidate_flows(version: int, own: dict[str, dict[Any, None]], iif: str | None, src: int) -> Iterator[Flow]:
    """A plain TCP connection from the LAN side; then with the policy's own constants on top.

    For an interval the constants are its ends, its middle and the values just outside
    (`reach._values`): the middle (third) is tried before the low end. The LAN client's
    own address is kept as long as possible: it is what a real connection comes from.
    """
    base: dict[str, Any] = {"src": src, "dst": REMOTE[version], "proto": TCP, "sport": SPORT, "dport": DPORT,
                            "dscp": 0, "mac": WITNESS_MAC if iif else None}
    yield Flow(version=version, iif=iif, local=iif is None, **base)
    for own_source in (False, True):
        for index in (2, 0):
            values = dict(base)
            for name, found in own.items():
                options = list(found)
                if not options or (name[-1] in "46" and name[-1] != str(version)):
                    continue
                field = name.rstrip("46")
                if field == "src" and not own_source or field in ("src", "mac") and iif is None:
                    continue  # a socket's source is one of the router's addresses; it has no MAC
                value = options[min(index, len(options) - 1)]
                if field in values and isinstance(value, (int, str)):
                    values[field] = value
            if values["proto"] in (1, 58):
                values["proto"] = 1 if version == 4 else 58
            if values["proto"] not in (6, 17, 132):
                values["sport"] = values["dport"] = None
            yield Flow(version=version, iif=iif, local=iif is None, **values)


# -- judging one flow -----------------------------------------------------------------


def _judge(simulator: Simulator, ours: Ours, probe: Probe) -> Iterator[Finding]:
    try:
        leaves = simulator.explore(replace(probe.flow, reply=True), record=True)
    except ValueError:
        return
    for leaf in leaves:
        steps = leaf.path.steps
        split = next((i for i, s in enumerate(steps) if s.get("stage") == "direction" and s.get("direction") == "reply"),
                     len(steps))
        original, reply = steps[:split], steps[split:]
        uplink = _uplink_of(original, ours)
        describe = _describe(probe, uplink)
        ingress = probe.what.startswith("ingress ")
        if not ingress:
            yield from _blocked(simulator, original, ours, probe, uplink, "original", describe)
            yield from _rerouted(original, ours, "original", describe, uplink.interface if uplink else None)
        if reply:
            yield from _blocked(simulator, reply, ours, probe, uplink, "reply", describe)
            back = probe.flow.iif if probe.flow.iif else None
            yield from _rerouted(reply, ours, "reply", describe, back)


def _uplink_of(steps: list[dict[str, Any]], ours: Ours) -> UplinkPlan | None:
    """The uplink whose mark the packet carried at its last routing decision."""
    routing = [s for s in steps if s.get("stage") == "routing"]
    if not routing:
        return None
    mark = int(str(routing[-1].get("mark", "0x0")), 16) & ours.mask
    return next((u for u in ours.uplinks if u.mark == mark), None)


def _describe(probe: Probe, uplink: UplinkPlan | None) -> tuple[str, str, str]:
    """(subject, the paths in words with SUBJECT in place of it, an example connection)."""
    flow = probe.flow
    ports = f" tcp port {flow.dport}" if flow.proto == TCP and flow.dport else ""
    example = f"{address_text(flow.version, flow.src)} -> {address_text(flow.version, flow.dst)}{ports}"
    kind, _, name = probe.what.partition(" ")
    if kind == "ingress":
        return f"uplink {name}", f"connections arriving through {SUBJECT} ({flow.iif})", example
    where = f"from {flow.iif}" if flow.iif else "opened by this host"
    via = f" out {uplink.interface} (uplink '{uplink.name}')" if uplink else ""
    return f"policy {name}", f"connections of {SUBJECT} {where}{via}", example


def _blocked(simulator: Simulator, steps: list[dict[str, Any]], ours: Ours, probe: Probe, uplink: UplinkPlan | None, direction: str,
             describe: tuple[str, str, str]) -> Iterator[Finding]:
    """A drop or reject by a chain of a foreign table, with the rule that decided (or the policy)."""
    for index, step in enumerate(steps):
        if step.get("stage") != "chain" or step.get("verdict") != "drop":
            continue
        family, table, chain = str(step["chain"]).split(" ", 2)
        if family == "inet" and table == ours.table:
            return
        inside = steps[index + 1:]  # the chain's rule steps follow its own step
        inside = inside[:next((i for i, s in enumerate(inside) if s.get("stage") != "rule"), len(inside))]
        deciding = next((s for s in reversed(inside) if str(s.get("verdict", "")).startswith("drop")), None)
        rule_chain = str(deciding["chain"]).split(" ", 2)[2] if deciding else chain
        rule = str(deciding["rule"]) if deciding else None
        kind = "reject" if rule is not None and "reject" in rule.lower() else "drop"
        inn, out = _interfaces(probe, uplink, direction, steps)
        who = neighbour(simulator, family, table)
        decided = f"rule `{rule}` in chain {rule_chain}" if rule else f"chain {chain} (policy drop)"
        what = "replies of" if direction == "reply" else "the first packets of"
        subject, paths, example = describe
        message = f"{WHO[who]}{decided} of table {family} {table} {kind}s {what} {paths} ({step.get('hook')} hook)"
        yield Finding(kind, direction, example, f"{family} {table}", rule_chain, rule, message,
                      _hint(who, family, table, rule_chain, direction, step.get("hook"), inn, out), (subject,))
        return


def _interfaces(probe: Probe, uplink: UplinkPlan | None, direction: str,
                steps: list[dict[str, Any]]) -> tuple[str | None, str | None]:
    """The interfaces the dropped packet came in by and would have left by."""
    routing = [s for s in steps if s.get("stage") == "routing"]
    out = routing[-1].get("oif") if routing else None
    if direction == "original":
        return probe.flow.iif, out or (uplink.interface if uplink else None)
    arrived = uplink.interface if uplink and not probe.what.startswith("ingress ") else None
    return arrived, out or probe.flow.iif


def neighbour(simulator: Simulator, family: str, table: str) -> str:
    """Which program wrote a table, told by the chains it holds: docker, ufw, firewalld, iptables or nft."""
    names = {name for (f, t, name) in simulator.ruleset.chains if (f, t) == (family, table)}
    if family in ("ip", "ip6") and "DOCKER-USER" in names:
        return "docker"
    if any(name.startswith("ufw") for name in names):
        return "ufw"
    if table == "firewalld":
        return "firewalld"
    return "iptables" if family in ("ip", "ip6") and simulator.ruleset.iptables is not None else "nft"


WHO = {"docker": "Docker's ", "ufw": "ufw's ", "firewalld": "firewalld's ", "iptables": "", "nft": ""}


def _hint(who: str, family: str, table: str, chain: str, direction: str, hook: Any, inn: str | None,
          out: str | None) -> str:
    """What to add so the path works, in the neighbour's own terms."""
    i = f" -i {inn}" if inn else ""
    o = f" -o {out}" if out else ""
    established = direction == "reply"
    if who == "docker" or who == "iptables":
        tool = "iptables" if family == "ip" else "ip6tables"
        target = "DOCKER-USER" if who == "docker" else chain
        if established:
            return (f"allow established traffic in {target}, e.g. `{tool} -I {target}{i}{o} "
                    "-m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT`")
        return f"allow it in {target}, e.g. `{tool} -I {target}{i}{o} -j ACCEPT`"
    if who == "ufw":
        if hook == "input":
            return f"e.g. `ufw allow in on {inn or 'IFACE'}`"
        return f"e.g. `ufw route allow in on {inn or 'IFACE'} out on {out or 'IFACE'}`"
    if who == "firewalld":
        return (f"put {inn or 'IFACE'} and {out or 'IFACE'} in zones and allow forwarding between them, e.g. "
                "`firewall-cmd --permanent --new-policy markroute --set-target ACCEPT` with "
                "--add-ingress-zone/--add-egress-zone, then `firewall-cmd --reload`")
    iif = f"iifname {inn} " if inn else ""
    oif = f"oifname {out} " if out else ""
    if established:
        return f"e.g. `nft insert rule {family} {table} {chain} {iif}{oif}ct state established,related accept`"
    return f"e.g. `nft insert rule {family} {table} {chain} {iif}{oif}accept`"


def _rerouted(steps: list[dict[str, Any]], ours: Ours, direction: str, describe: tuple[str, str, str],
              expected: str | None) -> Iterator[Finding]:
    """An ip rule outside markroute's band that decides where a markroute-steered packet goes."""
    routing = [s for s in steps if s.get("stage") == "routing"]
    if not routing or expected is None:
        return
    last = routing[-1]
    rules = last.get("rules") or []
    deciding = next((r for r in reversed(rules) if r.get("matched") and r.get("result") not in (None, "nop")
                     and not str(r.get("result", "")).endswith("continue")
                     and not str(r.get("result", "")).startswith(("suppressed", "goto"))), None)
    if deciding is None:
        return
    priority = int(str(deciding["rule"]).split(":", 1)[0])
    if priority in ours.priorities or priority in KERNEL_PRIORITIES:
        return
    if last.get("oif") == expected and last.get("result") not in ("unreachable", "blackhole", "prohibit", "noroute"):
        return
    if direction == "original" and last.get("result") == "local":
        return
    went = f"out {last['oif']}" if last.get("oif") else str(last.get("result"))
    what = "replies of" if direction == "reply" else "the packets of"
    band = f"{min(ours.priorities)}-{max(ours.priorities)}" if ours.priorities else "?"
    subject, paths, example = describe
    message = (f"ip rule `{deciding['rule']}` sends {what} {paths} {went} instead of {expected}: "
               f"it comes before markroute's rules ({band})")
    last_ours = max(ours.priorities, default=0)
    hint = (f"set settings.rule_priority below {priority} (e.g. {max(priority - 1000, 1)}) so markroute's rules "
            f"come first, or give that rule a priority after {last_ours}")
    yield Finding("reroute", direction, example, None, None, str(deciding["rule"]), message, hint, (subject,))

