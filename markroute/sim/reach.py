"""Which policies no packet reaches and which uplinks no new connection uses, by simulation.

`markroute check` asks this of a compiled plan. The answer comes from the same
interpreter `trace` uses, run on witness packets: every field a rule compares (source,
destination, protocol, ports, ingress interface, MAC, DSCP, family, and a local socket's
owner and cgroup) takes values from
the ruleset's own constants (each interval's ends and the values just outside them)
plus one value no rule mentions. Two packets whose fields fall in the same pieces of
that partition are treated alike by every plain comparison, so these witnesses stand
for all packets; each policy also gets witnesses built from its own constants first.

It is a search, not a proof: a policy is reported when none of the witnesses (at most
`BUDGET` per policy) reaches it. Every witness is tried both as a packet arriving on an
interface and as one this router sends (`local: true` policies see only those). Routing
is not consulted (policies decide before routing), so the host is modelled as owning
none of the witnesses' addresses, except the source of the packet it is sending itself
(`SendingHost`): a local socket can only send from one of the host's addresses, and it
may bind any of them.
"""

from __future__ import annotations

import ipaddress
import itertools
import random
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, overload

from markroute.plan import FAMILY_NAMES, Plan
from markroute.plan.nftjson import AddressElements
from markroute.sim.datatypes import Span, UnsupportedValue, parse
from markroute.sim.nft import Ruleset
from markroute.sim.packet import Flow
from markroute.sim.rpdb import Rpdb
from markroute.sim.system import KERNEL_RULES, Host, System
from markroute.sim.trace import Simulator

BUDGET = 3000
PER_FIELD = 256  # witness values kept per field: big sets are sampled, not enumerated
WITNESS_MAC = "02:00:5e:00:53:99"
WITNESS_IIF = "witness0"
WITNESS_ID = 2**32 - 2  # the owner of a local socket no rule names
FIELDS = {
    ("ip", "saddr"): "src4", ("ip", "daddr"): "dst4", ("ip6", "saddr"): "src6", ("ip6", "daddr"): "dst6",
    ("ip", "dscp"): "dscp", ("ip6", "dscp"): "dscp", ("ip", "protocol"): "proto", ("ip6", "nexthdr"): "proto",
    ("ether", "saddr"): "mac",
}
DTYPES = {"src4": "ipv4_addr", "dst4": "ipv4_addr", "src6": "ipv6_addr", "dst6": "ipv6_addr", "dscp": "dscp",
          "proto": "inet_proto", "sport": "inet_service", "dport": "inet_service", "iif": "ifname",
          "mac": "ether_addr", "version": "nf_proto", "uid": "integer", "gid": "integer", "cgroup": "cgroupsv2"}
DEFAULTS: dict[str, list[Any]] = {
    "src4": [int(ipaddress.ip_address("192.0.2.1"))], "dst4": [int(ipaddress.ip_address("198.51.100.1"))],
    "src6": [int(ipaddress.ip_address("2001:db8::1"))], "dst6": [int(ipaddress.ip_address("2001:db8:ffff::1"))],
    "dscp": [0], "proto": [6, 17, 1, 58], "sport": [40000], "dport": [443], "iif": [WITNESS_IIF],
    "mac": [WITNESS_MAC], "version": [4, 6], "uid": [WITNESS_ID], "gid": [WITNESS_ID], "cgroup": [""],
}
LIMITS = {"src4": 2**32 - 1, "dst4": 2**32 - 1, "src6": 2**128 - 1, "dst6": 2**128 - 1, "dscp": 63,
          "sport": 65535, "dport": 65535, "proto": 255, "uid": 2**32 - 1, "gid": 2**32 - 1}


class SendingHost(Rpdb):
    """The witnesses' RPDB: the host owns the source address of the packet it is sending now, nothing else."""

    sending_from: tuple[int, int] | None = None  # (IP version, address) of the witness being sent

    def address_type(self, version: int, address: int, dev: str | None = None) -> str:
        if (version, address) == self.sending_from and dev is None:
            return "local"
        return super().address_type(version, address, dev)


@dataclass
class Candidates:
    """Witness values per field: all the ruleset's, and those of each commented rule (policy, ingress).

    Values keep the order they were found in (dicts as ordered sets): a rule's first
    value lies inside its own constant, the defaults come first among the common ones.
    """

    common: dict[str, dict[Any, None]] = field(
        default_factory=lambda: {k: dict.fromkeys(v) for k, v in DEFAULTS.items()})
    own: dict[str, dict[str, dict[Any, None]]] = field(default_factory=dict)


@dataclass(frozen=True)
class Reach:
    """What the witness search found: policies nothing reaches, uplinks nothing is marked for."""

    unreachable_policies: list[str]
    unused_uplinks: list[str]


def reachability(plan: Plan, hidden: Collection[str] = ()) -> Reach:
    """The policies no witness packet reaches (in config order) and the uplinks no
    witness's new connection is marked for, from one search.

    An uplink counts as used when some new connection gets its mark: chosen by a
    policy, a balance group, or its own ingress rule (replies to connections it brought
    in). A failover member behind an active one is listed as unused, as it is until a
    failover; the caller, which knows the groups, may say so.

    HIDDEN names policies the caller has already proved unreachable (an earlier policy
    or ingress rule matches all their traffic): they are listed without a search, which
    would spend the whole witness budget on each of them.
    """
    reached, marks = _search(plan, frozenset(hidden))
    return Reach(
        unreachable_policies=[name for name in dict.fromkeys(plan.policies) if name not in reached],
        unused_uplinks=[u.name for u in plan.uplinks if u.mark not in marks],
    )


def _search(plan: Plan, hidden: frozenset[str]) -> tuple[set[str], set[int]]:
    """Run witnesses until every policy and uplink mark is seen, or the budgets are spent."""
    rpdb, system = _system(plan)
    simulator = Simulator(Ruleset(plan.nft_document(), system), system)
    candidates = _candidates(plan.nft_document())
    reached: set[str] = set()
    marks: set[int] = set()
    wanted_marks = {u.mark for u in plan.uplinks}
    mark_of = {u.name: u.mark for u in plan.uplinks}
    # The general witnesses (target None) come last: each generator draws from its own
    # seed, so the order changes nothing found, and by then they are rarely needed.
    targets = [f"policy {p}" for p in plan.policies if p not in hidden] + \
        [f"ingress {u.name}" for u in plan.uplinks] + [None]
    policies = set(plan.policies) - hidden
    common = {name: _Ordered(values) for name, values in candidates.common.items()}

    def done(target: str | None) -> bool:
        if target is None:
            return policies <= reached and wanted_marks <= marks
        kind, _, name = target.partition(" ")
        return name in reached if kind == "policy" else mark_of[name] in marks

    for target in targets:
        if done(target):
            continue
        for flow in itertools.islice(_witnesses(candidates, common, target), BUDGET):
            rpdb.sending_from = (flow.version, flow.src) if flow.local else None
            for leaf in simulator.explore(flow, record=False, with_reply=False):
                outcome = leaf.path.outcome
                if outcome.policy is not None:
                    reached.add(outcome.policy)
                marks.add(outcome.mark & plan.mask)
            if done(target):
                break
        if done(None):
            break
    return reached, marks


def _system(plan: Plan) -> tuple[SendingHost, System]:
    """A host that owns none of the witnesses' addresses (but the one it sends from) and routes everything by main."""
    rules = [dict(r.to_json(), family=FAMILY_NAMES[r.version]) for r in plan.rules]
    rules += [dict(r, family=f) for r in KERNEL_RULES for f in ("inet", "inet6")]
    routes: list[dict[str, Any]] = [dict(r.to_json(), family=FAMILY_NAMES[r.version]) for r in plan.routes]
    routes += [{"family": f, "dst": "default", "dev": WITNESS_IIF} for f in ("inet", "inet6")]
    routes += [{"family": "inet", "type": "local", "dst": "127.0.0.0/8", "dev": "lo", "table": "local"},
               {"family": "inet6", "type": "local", "dst": "::1", "dev": "lo", "table": "local"}]
    host = Host(links={}, sysctls={s.path: s.value for s in plan.sysctls}, source="config")
    rpdb = SendingHost(rules, routes)
    return rpdb, System(rpdb, host)


def _candidates(document: dict[str, Any]) -> Candidates:
    """Every constant the rules compare a field with, also filed under the rule's comment.

    A policy merged into a verdict map (`KEY vmap { ELEMENT : goto pol_N }`) owns the
    elements that lead to its chain, whose rule carries its comment.
    """
    found = Candidates()
    objects = document["nftables"]
    sets = {(o["set"]["table"], o["set"]["name"]): o["set"].get("elem", []) for o in objects if "set" in o}
    owner = _chain_owners(objects)

    common, own = found.common, found.own

    def add(name: str | None, right: Any, label: str) -> None:
        if name is None:
            return
        if isinstance(right, str) and right.startswith("@"):
            right = {"set": sets.get((body["table"], right[1:]), [])}
        values = _values(name, right)  # one update per constant, not one per value
        common[name].update(values)
        if label:  # looked up, not `setdefault`: that would build two empty dicts per constant
            fields = own.get(label)
            if fields is None:
                fields = own[label] = {}
            mine = fields.get(name)
            if mine is None:
                fields[name] = values
            else:
                mine.update(values)

    for obj in objects:
        body = obj.get("rule")
        if body is None:
            continue
        label = str(body.get("comment", "")) or _jump_owner(body, owner) or owner.get(body["chain"], "")
        for expr in body.get("expr", []):
            if "match" in expr:
                add(_field(expr["match"]["left"]), expr["match"]["right"], label)
            elif "vmap" in expr and isinstance(expr["vmap"]["data"], dict):
                key = expr["vmap"]["key"]
                names = [_field(part) for part in key["concat"]] if "concat" in key else [_field(key)]
                for element, verdict in expr["vmap"]["data"]["set"]:
                    target = next(iter(verdict.values()), None)
                    element_label = owner.get(target["target"], label) if isinstance(target, dict) else label
                    parts = element["concat"] if isinstance(element, dict) and "concat" in element else [element]
                    for name, part in zip(names, parts):
                        add(name, part, element_label)
    return found


def _chain_owners(objects: list[dict[str, Any]]) -> dict[str, str]:
    """The policy comment of each chain whose commented rules are all one policy's.

    Such a chain is that policy's own: `pol_N` behind a verdict map, or the `unless_N`
    chain of a policy with `not:`, where the rule leading there (`ip daddr X jump
    unless_N`) carries no comment, and the exceptions before the policy's rule neither.
    """
    comments: dict[str, set[str]] = {}
    for obj in objects:
        body = obj.get("rule")
        if body is not None and str(body.get("comment", "")).startswith("policy "):
            comments.setdefault(body["chain"], set()).add(str(body["comment"]))
    return {chain: next(iter(found)) for chain, found in comments.items() if len(found) == 1}


def _jump_owner(body: dict[str, Any], owner: dict[str, str]) -> str | None:
    """The policy whose own chain an uncommented rule jumps or goes to, if any."""
    for expr in body.get("expr", []):
        for verdict in ("jump", "goto"):
            if verdict in expr and expr[verdict]["target"] in owner:
                return owner[expr[verdict]["target"]]
    return None


def _field(left: Any) -> str | None:
    if not isinstance(left, dict):
        return None
    if "payload" in left:
        body = left["payload"]
        key = (body.get("protocol"), body.get("field"))
        if key[1] in ("sport", "dport") and key[0] in ("tcp", "udp", "sctp", "th", "udplite", "dccp"):
            return str(key[1])
        return FIELDS.get(key)
    if "meta" in left:
        return {"l4proto": "proto", "iifname": "iif", "iif": "iif", "nfproto": "version",
                "skuid": "uid", "skgid": "gid"}.get(left["meta"]["key"])
    if "socket" in left and left["socket"].get("key") == "cgroupv2":
        return "cgroup"  # a set's paths are as deep as the rule's level: each is its own witness
    return None


def _values(name: str, right: Any) -> dict[Any, None]:
    """Each constant's own value(s) and, for numbers, the values just outside its interval,
    in order, once each.

    Of a large set only an evenly spread PER_FIELD of its elements are taken: witnesses
    need representatives of it, not all of it. Filled in one loop, not through nested
    generators: a ruleset of 10,000 policies has some 100,000 constants.
    """
    elements = right["set"] if isinstance(right, dict) and "set" in right else [right]
    elements = elements if isinstance(elements, (list, AddressElements)) else [elements]
    found: dict[Any, None] = {}
    limit = LIMITS.get(name)
    for value in _sampled(name, elements):
        if type(value) is Span:
            for point in (value.lo, value.hi, (value.lo + value.hi) // 2, value.lo - 1, value.hi + 1):
                if limit is None or 0 <= point <= limit:
                    found[point] = None
        elif isinstance(value, int) and limit is not None:
            for point in (value, value - 1, value + 1):
                if 0 <= point <= limit:
                    found[point] = None
        elif isinstance(value, str) and name == "iif" and value.endswith("*"):
            found[value[:-1] + "0"] = None
        else:
            found[value] = None
    return found


def _sampled(name: str, elements: list[Any] | AddressElements) -> list[Any]:
    """Evenly spread PER_FIELD of ELEMENTS in comparable form; those the simulator cannot read are left out.

    A list, not a generator: most constants are one element, read 100,000 times a check.
    """
    step = max(1, len(elements) // PER_FIELD)
    if isinstance(elements, AddressElements):  # a compiled set: intervals already
        return [first if first == last else Span(first, last) for first, last in elements.intervals[::step]]
    dtype = DTYPES[name]
    found = []
    for element in elements[::step] if step > 1 else elements:
        try:
            found.append(parse(dtype, element))
        except (UnsupportedValue, ValueError, KeyError, TypeError):
            continue
    return found


def _witnesses(candidates: Candidates, common: dict[str, _Ordered], label: str | None) -> Iterator[Flow]:
    """Witness flows: the rule's own constants (by its comment) first, then all of the ruleset's.

    Most policies are reached by the first witness, built from their own first values;
    the pools of sampled values are only drawn for those that are not, each from its own
    random generator (seeded by the label), so one target's search does not depend on
    how many others needed theirs.
    """
    own = {name: list(values) for name, values in candidates.own.get(label or "", {}).items()}
    base = {name: own[name][0] if own.get(name) else values.values[0] for name, values in common.items()}
    yield from _flows(base)
    for name, values in own.items():  # the rule's own constants, one field at a time
        for value in values[1:]:
            yield from _flows(dict(base, **{name: value}))
    rng = random.Random(label or "")
    pool = {name: _sample(_OwnFirst(own.get(name, []), values), rng) for name, values in common.items()}
    yield from _corners(base, pool)
    while True:
        yield from _flows({k: rng.choice(v) for k, v in pool.items()})


class _Ordered:
    """One field's common values, listed once for every target: with 10,000 policies, listing
    them again per policy was the search's quadratic part."""

    def __init__(self, values: dict[Any, None]) -> None:
        self.values = list(values)
        self.position = {value: index for index, value in enumerate(self.values)}


class _OwnFirst(Sequence[Any]):
    """A rule's own values, then the common values that are not among them, without copying the common ones.

    `_sample` reads a few of them by index; every own value is also a common one.
    """

    def __init__(self, own: list[Any], common: _Ordered, start: int = 0) -> None:
        self.own = own
        self.common = common
        self.skipped = sorted(common.position[value] for value in own)
        self.start = start

    def __len__(self) -> int:
        return max(0, len(self.common.values) - self.start)

    @overload
    def __getitem__(self, index: int) -> Any: ...

    @overload
    def __getitem__(self, index: slice) -> Sequence[Any]: ...

    def __getitem__(self, index: int | slice) -> Any:
        if isinstance(index, slice):
            first, last, step = index.indices(len(self))
            if step == 1 and last == len(self):
                return _OwnFirst(self.own, self.common, self.start + first) if first else self
            return [self[i] for i in range(first, last, step)]
        if not 0 <= index < len(self):
            raise IndexError(index)
        index += self.start
        if index < len(self.own):
            return self.own[index]
        position = index - len(self.own)
        for skipped in self.skipped:  # the common index of the position-th value not skipped
            if skipped > position:
                break
            position += 1
        return self.common.values[position]


def _sample(values: Sequence[Any], rng: random.Random) -> list[Any]:
    """At most PER_FIELD values: the first ones kept in order, a random sample of the rest."""
    if len(values) <= PER_FIELD:
        return list(values)
    head = list(values[: PER_FIELD // 2])
    return head + rng.sample(values[PER_FIELD // 2:], PER_FIELD - len(head))


def _corners(base: dict[str, Any], pool: dict[str, list[Any]]) -> Iterator[Flow]:
    """For each field in turn, each of its values, all other fields at their first value (`base`)."""
    for name, values in pool.items():
        for value in values[1:]:
            yield from _flows(dict(base, **{name: value}))


def _flows(values: dict[str, Any]) -> Iterator[Flow]:
    version = values["version"]
    proto = values["proto"]
    if proto == 1 and version == 6 or proto == 58 and version == 4:
        proto = 58 if version == 6 else 1
    ports = proto in (6, 17, 132)
    common = dict(version=version, src=values[f"src{version}"], dst=values[f"dst{version}"], proto=proto,
                  sport=values["sport"] if ports else None, dport=values["dport"] if ports else None,
                  dscp=values["dscp"])
    yield Flow(iif=values["iif"], mac=values["mac"], **common)
    yield Flow(local=True, uid=values["uid"], gid=values["gid"], cgroup=values["cgroup"], **common)
