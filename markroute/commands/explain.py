"""`markroute explain`: why an existing connection uses its uplink, recorded and simulated.

The recorded facts come from conntrack (the connection mark's uplink, the deciding
policy or ingress in its labels, its NAT); the simulator then walks a new connection
with the same 5-tuple through the live ruleset (`sim.live`, as `trace --live`). Where
the two disagree (a failover since, a changed config, a balance draw, a connection
older than the rules) the comparison says so.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import click

from markroute.commands.cliutil import (
    EXIT_USAGE,
    exit_codes,
    fail,
    json_option,
    netns_option,
    print_json,
)

if TYPE_CHECKING:
    from markroute.kernel.flows import TrackedFlow
    from markroute.kernel.state import State
    from markroute.sim.trace import Path

ENDPOINT = re.compile(r"^(?:\[(?P<v6>[0-9a-fA-F:.]+)\]|(?P<addr>[^:\s]+|[0-9a-fA-F:]+))(?::(?P<port>\d+))?$")


@dataclass(frozen=True)
class Wanted:
    """The connection asked about: protocol and original-direction endpoints (ports optional)."""

    proto: str
    src: str
    sport: int | None
    dst: str
    dport: int | None


@click.command("explain")
@click.argument("connection", nargs=-1, required=True)
@netns_option
@json_option
def command(connection: tuple[str, ...], netns: str | None, as_json: bool) -> None:
    """Explain why a live CONNECTION went out the uplink it uses.

    CONNECTION is `PROTO SRC[:PORT] [to] DST[:PORT]` (IPv6 with a port as [ADDR]:PORT),
    e.g. the start of a `markroute flows` line, which can be pasted whole. Prints what
    conntrack recorded (uplink from the mark, deciding policy or ingress from the
    labels, NAT), the decision path a new connection with this 5-tuple takes now
    (simulated on the live ruleset), and where the two disagree.

    Exit codes: 0 explained (agreeing or not: see "comparison"); 1 no such connection,
    or markroute is not applied here; 2 CONNECTION is malformed; 4 not root or no such
    namespace.
    """
    from markroute.kernel import state
    from markroute.kernel.environment import prepare
    from markroute.kernel.flows import tracked_flows

    wanted = parse_connection(connection)
    with exit_codes():
        netns = prepare(netns)
        recorded = state.load(netns)
        if recorded is None:
            fail("markroute is not applied here: nothing recorded to explain (run markroute apply)")
        found = [f for f in tracked_flows(recorded) if matches(f, wanted)]
        if not found:
            fail(f"no tracked connection {' '.join(connection)} (see markroute flows)")
        flow = found[0]
        paths, simulated_flow = simulate(flow, recorded)
    data = explanation(flow, paths, simulated_flow, recorded)
    if len(found) > 1:
        data["other_matches"] = len(found) - 1
    if as_json:
        print_json(data)
    else:
        click.echo(render(data), nl=False)


def parse_connection(words: tuple[str, ...]) -> Wanted:
    """The connection from the command line; a malformed one exits with a usage error."""
    from markroute.kernel.flows import PROTOCOLS

    parts = [w for w in words if w not in ("to", "->")]
    if len(parts) < 3:
        fail("give the connection as PROTO SRC[:PORT] DST[:PORT], e.g. tcp 192.0.2.1:40000 198.51.100.1:443",
             EXIT_USAGE)
    proto = parts[0].lower()
    if proto not in PROTOCOLS.values() and not proto.isdigit():
        fail(f"{parts[0]}: not a protocol (one of {', '.join(PROTOCOLS.values())} or a number)", EXIT_USAGE)
    ends = []
    for word in parts[1:3]:
        m = ENDPOINT.match(word)
        if not m:
            fail(f"{word}: not an address or ADDRESS:PORT", EXIT_USAGE)
        address = m["v6"] or m["addr"]
        port = m["port"]
        if m["addr"] and address.count(":") > 1:  # a bare IPv6 address: its last group is no port
            address, port = word, None
        try:
            address = str(ipaddress.ip_address(address))
        except ValueError:
            fail(f"{word}: {address} is not an IP address", EXIT_USAGE)
        if port is not None and not 0 < int(port) < 65536:
            fail(f"{word}: port {port} is out of range 1-65535", EXIT_USAGE)
        ends.append((address, int(port) if port else None))
    return Wanted(proto, ends[0][0], ends[0][1], ends[1][0], ends[1][1])


def matches(flow: TrackedFlow, wanted: Wanted) -> bool:
    """Whether FLOW is the connection asked about (its original direction; ports only if given)."""
    from markroute.kernel.flows import protocol_name

    c = flow.connection
    return (
        ipaddress.ip_address(c.src) == ipaddress.ip_address(wanted.src)
        and ipaddress.ip_address(c.dst) == ipaddress.ip_address(wanted.dst)
        and wanted.proto in (protocol_name(c.proto), str(c.proto))
        and wanted.sport in (None, c.sport)
        and wanted.dport in (None, c.dport)
    )


def simulate(flow: TrackedFlow, recorded: State) -> tuple[list[Path], Any]:
    """The paths a new connection with FLOW's 5-tuple takes through the live ruleset now.

    The interface it arrived on is not recorded: for an ingress decision it is that
    uplink's interface, otherwise the one the route back to its source leaves by.
    """
    from markroute import sim
    from markroute.commands.trace import _sysctls
    from markroute.kernel.flows import arrival
    from markroute.kernel.snapshot import snapshot
    from markroute.sim.packet import make_flow

    c = flow.connection
    local, iif = arrival(c.src)
    if flow.ingress is not None:
        local, iif = False, next((u.interface for u in recorded.uplinks if u.name == flow.ingress), None)
    simulated = make_flow(c.src, c.dst, c.proto, c.sport, c.dport, None if local else iif, local)
    taken = snapshot()
    try:
        simulator = sim.live(taken, _sysctls(taken.get("links", {})))
        return simulator.paths(simulated), simulated
    except (ValueError, KeyError) as exc:
        fail(f"cannot simulate the live ruleset: {exc}")


def simulated_decision(path: Path) -> str | None:
    """The decision as `flows` words it: the policy the walk matched, or the ingress rule it took."""
    if path.outcome.policy:
        return f"policy {path.outcome.policy}"
    for step in path.steps:
        comment = step.get("comment") or ""
        if step.get("stage") == "rule" and comment.startswith("ingress ") and step.get("verdict"):
            return f"ingress via {comment.removeprefix('ingress ')}"
    return None


def explanation(flow: TrackedFlow, paths: list[Path], simulated: Any, recorded: State) -> dict[str, Any]:
    """Recorded facts, simulated paths and their comparison, as `explain --json` prints them."""
    import time

    from markroute.sim import report

    by_mark = {u.mark: u.name for u in recorded.uplinks}
    outcomes = []
    for path in paths:
        mark = (path.outcome.ct_mark if path.outcome.ct_mark is not None else path.outcome.mark) & recorded.mask
        outcomes.append({
            "probability": path.probability,
            "verdict": path.outcome.verdict,
            "uplink": by_mark.get(mark),
            "mark": hex(mark),
            "oif": path.outcome.oif,
            "reason": simulated_decision(path) or "not recorded",
            "summary": path.outcome.label(),
        })
    recorded_reason = flow.reason
    same_uplink = any(o["uplink"] == flow.uplink for o in outcomes)
    same_reason = flow.decision is None or any(
        o["reason"] == recorded_reason and o["uplink"] == flow.uplink for o in outcomes)
    notes = []
    new_uplinks = " or ".join(sorted({str(o["uplink"] or "the main table") for o in outcomes}))
    new_reasons = " or ".join(sorted({str(o["reason"]) for o in outcomes}))
    if not same_uplink:
        notes.append(f"the connection uses {flow.uplink or 'the main table'}, a new one would use {new_uplinks}: "
                     "an uplink changed state or the config changed since it started (its mark keeps it where it "
                     "was decided)")
    if same_uplink and not same_reason:
        notes.append(f"recorded {recorded_reason}, but a new connection would be decided by {new_reasons}: "
                     "the policies changed since it started")
    if flow.decision is None and not recorded.connection_records:
        notes.append("the applied config records no decisions (settings: connection_records: false): the "
                     "simulation is the only account of why")
    elif flow.decision is None:
        notes.append("markroute recorded no decision for it: to this host, no policy matched, a socket's own mark, "
                     "or older than markroute's rules")
    trace = report.document(simulated, paths, "live (a new connection with this 5-tuple)", [], [])
    return {
        "version": 1,
        "connection": dict(flow.to_json(time.time()), text=flow.endpoints()),
        "recorded": {"uplink": flow.uplink, "mark": hex(flow.connection.mark), "reason": recorded_reason,
                     "snat": flow.connection.snat, "dnat": flow.connection.dnat},
        "simulated": {"outcomes": outcomes, "trace": trace},
        "agree": same_uplink and same_reason,
        "notes": notes,
    }


def render(data: dict[str, Any]) -> str:
    from markroute.sim import report

    c, rec = data["connection"], data["recorded"]
    octets = "-" if c["bytes"] is None else f"{c['bytes']} bytes"
    nat = [f"snat {rec['snat']}"] if rec["snat"] else []
    nat += [f"dnat {rec['dnat']}"] if rec["dnat"] else []
    lines = [
        f"connection: {c['text']} ({c['state'] or 'tracked'}, {octets})",
        "",
        "recorded (conntrack):",
        f"  uplink   {rec['uplink'] or '- (main table)'}  (ct mark {rec['mark']})",
        f"  decided  {rec['reason']}  (ct labels)",
        f"  nat      {', '.join(nat) or 'none'}",
        "",
        "simulated now (a new connection with this 5-tuple, live ruleset):",
    ]
    lines += [f"  {o['probability']:.0%}  uplink {o['uplink'] or '-'}  {o['reason']}  -> {o['summary']}"
              for o in data["simulated"]["outcomes"]]
    lines += ["", "decision path:"] + ["  " + line for line in report.text(data["simulated"]["trace"]).splitlines()]
    lines += ["", "comparison: " + ("recorded and simulated agree" if data["agree"] else "DISAGREE")]
    lines += [f"  {'!' if not data['agree'] else '-'} {note}" for note in data["notes"]]
    if data.get("other_matches"):
        lines.append(f"  ({data['other_matches']} more connections match; add ports to pick one)")
    return "\n".join(lines) + "\n"
