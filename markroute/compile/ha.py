"""What `settings.ha` adds to the plan: the hold, and conntrack's liberal TCP window tracking.

The hold (issue #17): keepalived puts the virtual addresses on a router *before* its
notify hook has committed the connections conntrackd replicated from the peer. A packet
of an existing connection arriving in between finds no conntrack entry: forwarded, it
would become a new connection (NATed afresh, classified afresh) and the commit would
then clash with it; for the router itself (a server's segment to the WAN virtual
address) the stack would answer with a reset and kill the connection at the server.
So while the router is not master, two base chains of markroute's table drop

* every forwarded packet of state new, and
* every TCP segment to the router that is new to conntrack and not a plain SYN;

client and server retransmit, and their next packets find the committed entry.

The chains match only while the router holds: the `ha_hold` sets (one per family) then
hold every address, and they are empty once `markroute ha master` has committed the
peer's connections. The sets' elements are the router's role, not the config: the plan
declares them empty (so both routers compile the same plan byte for byte and the
simulator traces a router that forwards), `markroute ha` and every apply set them from
the role the hook recorded (`kernel.ha`), and drift ignores them.

`nf_conntrack_tcp_be_liberal=1`: a router that fails back within conntrackd's
PurgeTimeout still has its own, older entry of a connection; committing the peer's copy
updates the entry but not its TCP window, so the server's next segments are out of
window, INVALID, not de-NATed, and reach the router's own stack, which resets the
connection (measured 5/5 without it, 0/5 with it).
"""

from __future__ import annotations

from markroute.plan import HOLD_SETS, Sysctl
from markroute.plan import nftjson as nj
from markroute.plan.nftjson import AddressElements

#: Before markroute's own filter chains and any other table at the default priority.
HOLD_PRIORITY = -10
LIBERAL = Sysctl("net/netfilter/nf_conntrack_tcp_be_liberal", "1")
_PAYLOAD = {4: "ip", 6: "ip6"}
_SET_TYPES = {4: "ipv4_addr", 6: "ipv6_addr"}


def hold_sets(table: str) -> list[nj.Expr]:
    """The two sets, declared empty: a router forwards unless its role says otherwise."""
    return [nj.named_set(table, name, _SET_TYPES[version], AddressElements(version, ()))
            for version, name in HOLD_SETS.items()]


def hold_chains(table: str) -> dict[str, tuple[nj.Expr, list[list[nj.Expr]]]]:
    """The base chains of the hold, each with its rules' expressions, by chain name."""
    forward: list[list[nj.Expr]] = []
    local: list[list[nj.Expr]] = []
    flags = nj.bor(nj.bor(nj.bor("fin", "syn"), "rst"), "ack")
    not_a_syn = nj.match(nj.band(nj.payload("tcp", "flags"), flags), "syn", "!=")
    for version, name in HOLD_SETS.items():
        held = nj.match(nj.payload(_PAYLOAD[version], "saddr"), f"@{name}")
        new = nj.match(nj.ct("state"), "new")
        forward.append([new, held, nj.counter(), nj.verdict("drop")])
        local.append([new, nj.match(nj.meta("l4proto"), "tcp"), not_a_syn, held, nj.counter(), nj.verdict("drop")])
    return {
        "ha_hold_forward": (_base_chain(table, "ha_hold_forward", "forward"), forward),
        "ha_hold_input": (_base_chain(table, "ha_hold_input", "input"), local),
    }


def _base_chain(table: str, name: str, hook: str) -> nj.Expr:
    chain = nj.chain(table, name, hook)
    chain["chain"]["prio"] = HOLD_PRIORITY
    return chain
