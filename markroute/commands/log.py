"""`markroute log`: the packet log lines of `log:` policies and inbound drops, decoded."""

from __future__ import annotations

import json
import sys
import time
from typing import TYPE_CHECKING, Any

import click

from markroute.commands.cliutil import exit_codes, json_option, netns_option

if TYPE_CHECKING:
    from markroute.kernel.nflog import LoggedPacket


@click.command("log")
@click.option("--count", metavar="N", type=click.IntRange(min=1), default=None, help="Stop after N lines.")
@click.option("--timeout", metavar="S", type=click.FloatRange(min=0), default=None,
              help="Stop when no line came for S seconds (default: run until Ctrl-C).")
@netns_option
@json_option
def command(count: int | None, timeout: float | None, netns: str | None, as_json: bool) -> None:
    """Follow the packet log: one line per new connection a `log:` policy decided or an
    inbound drop refused, with the policy and its target uplink or group (or the uplink
    whose inbound drop refused it), the packet's interfaces and endpoints.

    Reads nfnetlink_log group 77 of the namespace (works in any network namespace,
    unlike the kernel log); one reader at a time. --json prints one JSON object a line.

    Exit codes: 0 stopped (Ctrl-C, --count or --timeout); 1 the group cannot be bound
    (another reader has it); 4 not root or no such namespace.
    """
    from markroute.kernel import nft, state
    from markroute.kernel.environment import prepare
    from markroute.kernel.groups import policy_targets
    from markroute.kernel.nflog import PacketLogReader
    from markroute.plan.packetlog import GROUP

    shown = 0
    with exit_codes():
        netns = prepare(netns)
        recorded = state.load(netns)
        listing = nft.list_table(recorded.table_name) if recorded else None
        targets = policy_targets(listing or [])
        try:
            with PacketLogReader(GROUP) as reader:
                print(f"listening to packet log group {GROUP}", file=sys.stderr, flush=True)
                for packet in reader.packets(timeout):
                    line = decoded(packet, targets)
                    if line is None:
                        continue
                    click.echo(json.dumps(line) if as_json else text(line))
                    sys.stdout.flush()
                    shown += 1
                    if count is not None and shown >= count:
                        break
        except KeyboardInterrupt:
            pass


def decoded(packet: LoggedPacket, targets: dict[str, str]) -> dict[str, Any] | None:
    """A line as data: what decided (policy and target, or drop and uplink) and the packet; None if not ours."""
    from markroute.kernel.flows import protocol_name
    from markroute.plan.packetlog import decode

    logged = decode(packet.prefix)
    if logged is None:
        return None
    return {
        "time": round(packet.when, 3),
        "kind": logged.kind,
        "policy": logged.name if logged.kind == "policy" else None,
        "target": targets.get(logged.name) if logged.kind == "policy" else None,
        "uplink": logged.name if logged.kind == "drop" else None,
        "prefix": logged.prefix,
        "in": packet.indev,
        "out": packet.outdev,
        "proto": protocol_name(packet.proto) if packet.proto is not None else None,
        "src": packet.src, "sport": packet.sport, "dst": packet.dst, "dport": packet.dport,
        "mark": hex(packet.mark),
    }


def text(line: dict[str, Any]) -> str:
    from markroute.kernel.flows import endpoint

    clock = time.strftime("%H:%M:%S", time.localtime(line["time"]))
    if line["kind"] == "policy":
        what = f"policy {line['policy']} -> {line['target'] or '?'}"
    else:
        what = f"dropped inbound on uplink {line['uplink']}"
    prefix = f"[{line['prefix']}] " if line["prefix"] else ""
    where = f" in {line['in']}" if line["in"] else ""
    packet = f"{line['proto']} {endpoint(line['src'], line['sport'])} to {endpoint(line['dst'], line['dport'])}" \
        if line["src"] else "(no packet headers)"
    return f"{clock} {prefix}{what}: {packet}{where}"
