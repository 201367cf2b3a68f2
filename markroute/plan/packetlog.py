"""Packet log lines of `log:` policies and inbound drops: nfnetlink_log group and prefixes.

The kernel's own log (`log` without `group`) drops lines from every network namespace
but the first unless the host-wide sysctl nf_log_all_netns is 1, which is the host's
to set; nfnetlink_log delivers them over netlink from any namespace to whoever binds
the group there. So rules log with `log group GROUP prefix "..."` and `markroute log`
binds GROUP and decodes the prefix back.

Prefix: `[USER PREFIX ]mr:policy:NAME` or `[USER PREFIX ]mr:drop:UPLINK`; markroute's
part comes last so a user prefix cannot be mistaken for it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from markroute.plan import nftjson as nj

GROUP = 77  # one nflog group per namespace; the same number as markroute's routing protocol
TAG = "mr:"


@dataclass(frozen=True)
class Logged:
    """What a log prefix says decided: a policy, or an uplink's inbound drop."""

    kind: Literal["policy", "drop"]
    name: str
    prefix: str | None


def statements(prefix: str | None, rate: int, kind: Literal["policy", "drop"], name: str) -> list[nj.Expr]:
    """`[limit rate N/second] log group GROUP prefix "..."`: a rule of its own, since a limit over
    its rate ends the rule (it must never stop the decision that follows)."""
    text = f"{prefix + ' ' if prefix else ''}{TAG}{kind}:{name}"
    limit = [{"limit": {"rate": rate, "per": "second"}}] if rate else []
    return limit + [{"log": {"prefix": text, "group": GROUP}}]


def decode(prefix: str) -> Logged | None:
    """The decision a log line's prefix names, or None for a line markroute did not write."""
    head, tag, rest = prefix.rpartition(TAG)
    kind, _, name = rest.partition(":")
    if not tag or kind not in ("policy", "drop") or not name:
        return None
    return Logged(kind, name, head.strip() or None)  # type: ignore[arg-type]
