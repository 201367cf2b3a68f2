"""`log:` on a policy or on an uplink's `inbound:` (read by `policies` and `uplinks`).

`log: true` logs each new connection the policy decides (or the inbound drop refuses),
at most 10 a second; `log: {prefix: TEXT, rate: N}` names the lines and sets the rate
(0: no limit). The lines go to nfnetlink_log, which works in every network namespace,
unlike the kernel log (see `markroute log`).
"""

from __future__ import annotations

from markroute.config.reader import Reader
from markroute.config.source import Node
from markroute.model import PacketLog
from markroute.values import yaml_text

PREFIX_LIMIT = 32


def read_log(reader: Reader, node: Node, what: str) -> tuple[bool, PacketLog | None]:
    """(ok, the log or None for `log: false`); ok is False after an error was reported."""
    if node.kind == "scalar":
        on = reader.boolean(node, f"log of {what}")
        return on is not None, PacketLog() if on else None
    if not reader.kind(node, "map", f"log of {what}"):
        return False, None
    reader.known_keys(node, ("prefix", "rate"), f"log of {what}")
    prefix = None
    if "prefix" in node.items:
        prefix = reader.scalar(node.items["prefix"], "log prefix", parse_prefix)
        if prefix is None:
            return False, None
    rate = 10
    if "rate" in node.items:
        found = reader.integer(node.items["rate"], "log rate (lines a second, 0: no limit)", 0, 100000)
        if found is None:
            return False, None
        rate = found
    return True, PacketLog(prefix, rate)


def parse_prefix(value: object) -> str:
    text = yaml_text(value)
    if not text or len(text) > PREFIX_LIMIT or not text.isprintable() or '"' in text:
        raise ValueError(f"'{text}' must be 1-{PREFIX_LIMIT} printable characters without '\"'")
    return text
