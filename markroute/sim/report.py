"""Turning the paths of a trace into the `--json` document and the step-by-step text.

With one path the document is that path's outcome and steps. When a random draw
(a balance group's `numgen`, a multipath route) decides, every outcome is listed in
`paths` with its probability; the top-level fields keep only what all paths agree on
(the rest is null), and `steps` holds the steps they share.
"""

from __future__ import annotations

from typing import Any

from markroute.sim.packet import Flow
from markroute.sim.trace import Path

FIELDS = ("verdict", "oif", "next_hop", "table", "mark", "ct_mark", "snat", "dnat", "nat", "policy", "reason",
          "indeterminate", "source_check", "rp_filter", "reply")


def document(flow: Flow, paths: list[Path], source: str, assumptions: list[str], ignored: list[str]) -> dict[str, Any]:
    """The `--json` result: outcome fields, steps, and `paths` when more than one is possible."""
    outcomes = [path.outcome.to_json() for path in paths]
    data: dict[str, Any] = {"flow": flow.to_json(), "direction": "reply" if flow.reply else "original", "source": source}
    for name in FIELDS:
        values = [outcome[name] for outcome in outcomes]
        data[name] = values[0] if all(v == values[0] for v in values) else None
    if len(paths) > 1 and data["verdict"] is None:
        data["verdict"] = "indeterminate"
        data["reason"] = "a random draw decides between different verdicts: see paths"
    data["steps"] = shared_steps(paths)
    if len(paths) > 1:
        data["paths"] = [
            dict(outcome, probability=path.probability, choices=path.choices, steps=path.steps)
            for path, outcome in zip(paths, outcomes)
        ]
    data["assumptions"] = assumptions
    if ignored:
        data["ignored"] = ignored
    return data


def shared_steps(paths: list[Path]) -> list[dict[str, Any]]:
    first = paths[0].steps
    length = len(first)
    for path in paths[1:]:
        length = next((i for i, (a, b) in enumerate(zip(first, path.steps)) if a != b), min(length, len(path.steps)))
    return first[:length]


def text(data: dict[str, Any]) -> str:
    """The document as people read it: hooks, chains, rules, routing, then the verdict."""
    lines = [_headline(data["flow"], data["direction"]), f"source: {data['source']}", ""]
    shared = data["steps"]
    lines += _steps(shared)
    paths = data.get("paths")
    if paths:
        lines += ["", f"{len(paths)} possible paths (a random draw decides):"]
        for number, path in enumerate(paths, 1):
            lines += ["", f"path {number}: {path['probability']:.1%}  {_verdict_line(path)}"]
            lines += ["  " + line for line in _steps(path["steps"][len(shared):])]
            lines += ["  " + line for line in _aftermath(path)]
    else:
        lines += ["", "verdict: " + _verdict_line(data)]
        lines += _aftermath(data)
    if data["assumptions"]:
        lines += ["", "assumed (offline):"] + [f"  - {a}" for a in data["assumptions"]]
    for note in data.get("ignored", ()):
        lines.append(f"ignored: {note}")
    return "\n".join(lines) + "\n"


def _headline(flow: dict[str, Any], direction: str) -> str:
    proto = flow["proto"] or "any protocol"
    src = f"{flow['from']}:{flow['sport']}" if flow["sport"] is not None else flow["from"]
    dst = f"{flow['to']}:{flow['dport']}" if flow["dport"] is not None else flow["to"]
    origin = "sent by this host" if flow["local"] else f"arriving on {flow['iif']}"
    extras = [f"from MAC {flow['mac']}"] if flow["mac"] else []
    if flow["dscp"]:
        extras.append(f"dscp {flow['dscp']}")
    what = "a reply packet of the connection" if direction == "reply" else "the first packet of a new connection"
    return f"trace: {proto} {src} -> {dst}, {origin}{', ' + ', '.join(extras) if extras else ''} ({what})"


def _verdict_line(data: dict[str, Any]) -> str:
    verdict = data["verdict"]
    policy = f" [policy {data['policy']}]" if data.get("policy") else ""
    if verdict == "forward":
        via = f" via {data['next_hop']}" if data.get("next_hop") else ""
        nat = ""
        if data.get("snat"):
            nat = f", source NATed to {data['snat']}"
        elif data.get("nat") and data["nat"].get("note"):
            nat = f", {data['nat']['note']}"
        return f"leaves by {data['oif']}{via} (table {data['table']}, mark {data['mark']}{nat}){policy}"
    if verdict == "local":
        return f"delivered to this host (mark {data['mark']}){policy}"
    if verdict == "drop":
        return f"DROPPED: {data['reason']}{policy}"
    indeterminate = data.get("indeterminate")
    if indeterminate:
        where = f"{indeterminate['rule']}: " if indeterminate.get("rule") else ""
        return (f"INDETERMINATE at {indeterminate['hook']}: {where}{indeterminate['expression']}: "
                f"{indeterminate['reason']}")
    return f"INDETERMINATE: {data.get('reason')}"


def _aftermath(data: dict[str, Any]) -> list[str]:
    lines = []
    reply = data.get("reply")
    if reply:
        where = f"leaves by {reply['oif']}" if reply["verdict"] == "forward" else reply["verdict"]
        same = {True: " (the way the connection came in)", False: " (NOT the way the connection came in)"}.get(
            reply.get("same_path"), "")
        detail = f": {reply['reason']}" if reply.get("reason") else ""
        lines.append(f"reply: {where}{same}, mark {reply['mark']}{detail}")
    rp_filter = data.get("rp_filter")
    if rp_filter:
        dropped = rp_filter.get("reply_dropped")
        answer = {True: "rp_filter DROPS the reply", False: "rp_filter passes the reply",
                  None: "whether rp_filter drops the reply is indeterminate"}[dropped]
        if rp_filter.get("checked") is False:
            answer = "rp_filter does not apply to the reply"
        lines.append(f"{answer} ({rp_filter.get('reason')})")
    return lines


def _steps(steps: list[dict[str, Any]]) -> list[str]:
    lines: list[str] = []
    hook = None
    for step in steps:
        if step["stage"] == "direction":
            hook = None
        elif step.get("hook") != hook:
            hook = step.get("hook")
            lines.append(f"{hook}:")
        lines += _step(step)
    return lines


def _step(step: dict[str, Any]) -> list[str]:
    stage = step["stage"]
    if stage == "direction":
        return [f"== {step['direction']} direction: {step['packet']}"]
    if stage == "chain":
        header = f"  chain {step['chain']} ({step['type']}, priority {step['priority']})"
        if "verdict" not in step:
            return [f"{header}: stopped here"]
        return [f"{header} -> {step['verdict']}, mark {step['mark']}, ct mark {step['ct_mark']}"]
    if stage == "rule":
        comment = f" [{step['comment']}]" if step.get("comment") else ""
        if "indeterminate" in step:
            return [f"    rule{comment}: {step['rule']}", "      ^ INDETERMINATE HERE: "
                    f"{step['indeterminate']['expression']}: {step['indeterminate']['reason']}"]
        verdict = f" -> {step['verdict']}" if step.get("verdict") and step["verdict"] != step["rule"] else ""
        return [f"    rule{comment}: {step['rule']}{verdict}  (mark {step['mark']}, ct mark {step['ct_mark']})"]
    if stage == "conntrack":
        mark = f", ct mark {step['ct_mark']}" if step.get("ct_mark") else ""
        return [f"  conntrack: {step['state']}{mark}"]
    if stage == "nat":
        port = f" port {step['port']}" if step.get("port") else ""
        return [f"  nat: {step['type']} to {step['address']}{port}"]
    if stage == "routing":
        lines = [f"  {step['what']} (mark {step['mark']}):"]
        for rule in step.get("rules") or ():
            if not rule["matched"]:
                lines.append(f"    {rule['rule']}  -- no match")
            else:
                route = f": {rule['route']}" if rule.get("route") else ""
                lines.append(f"    {rule['rule']}  -- matched, {rule.get('result')}{route}")
        if step.get("result"):
            target = f" by {step['oif']}" if step.get("oif") else ""
            gateway = f" via {step['gateway']}" if step.get("gateway") else ""
            table = f" (table {step['table']})" if step.get("table") else ""
            lines.append(f"    => {step['result']}{target}{gateway}{table}")
        return lines
    if stage == "check":
        mode = f" (rp_filter {step['rp_filter']})" if step.get("rp_filter") else ""
        back = f"; route back: {step['route_back']}" if step.get("route_back") else ""
        return [f"  {step['check']}{mode}: {step['result']}: {step['detail']}{back}"]
    if stage == "indeterminate":
        return [f"  INDETERMINATE HERE: {step['expression']}: {step['reason']}"]
    return [f"  {step}"]


def split_text(rows: list[dict[str, Any]], flows: int) -> str:
    lines = [f"{flows} new connections sampled (each draws its own random numbers):",
             f"  {'expected':>9} {'sampled':>9} {'count':>9}  outcome"]
    for row in rows:
        lines.append(f"  {row['expected']:>9.2%} {row['fraction']:>9.2%} {row['sampled']:>9}  {row['outcome']}")
    return "\n".join(lines) + "\n"
