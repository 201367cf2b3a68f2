"""Which rule decided a connection, kept in its conntrack labels (`ct label`).

The connection mark says which uplink a connection uses; `markroute flows` and
`markroute explain` also need to know *why*: which policy matched, or that the
connection arrived through an uplink (`ingress`). The deciding rule writes that into the
connection's 128 label bits, next to the mark, once, on the connection's first packet.

Encoding, in bits `FIRST_BIT` .. `FIRST_BIT + 25` (markroute's; other bits are left alone):

* `POLICY_BIT` set: bits `FIRST_BIT` .. `FIRST_BIT + NUMBER_BITS - 1` hold the policy's
  number, its 1-based position in the config (what `Plan.policies` lists in order);
* `INGRESS_BIT` set: the same bits hold the index of the uplink it arrived through,
  its mark shifted down to the mask's lowest bit (`marks.shift`).

Why labels and not more mark bits: the mark's bits are a shared, scarce 32-bit field
that routing rules read (`fwmark V/M`); labels are 128 bits nothing routes by,
conntrackd synchronises them (`Sync { ... }` carries CTA_LABELS), and
reading them costs nothing at forwarding time. Why a binary number and not one bit per
policy: there are only 128 bits and configs have thousands of policies.

Cost: one `ct label set A | B | ...` statement per decision, whatever its number of
bits: nftables ORs the bits into one 128-bit immediate and the kernel writes them with
one labels update, on a connection's first packet only (a statement per bit, as
`ct label set N` alone writes them, took one update each). Once any rule uses labels,
the kernel gives *every* new connection of the namespace a labels extension (16 more
bytes in the entry's extension area); connections created before the rules were loaded
have none and show as "not recorded".
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import reduce
from typing import Any, Literal

from markroute.plan import nftjson as nj

FIRST_BIT = 96
NUMBER_BITS = 24
POLICY_BIT = FIRST_BIT + NUMBER_BITS
INGRESS_BIT = POLICY_BIT + 1
NUMBER_LIMIT = 1 << NUMBER_BITS
OURS = ((1 << (INGRESS_BIT + 1)) - 1) ^ ((1 << FIRST_BIT) - 1)


@dataclass(frozen=True)
class Decision:
    """What the labels say decided a connection: a policy (by number) or an uplink's ingress (by index)."""

    kind: Literal["policy", "ingress"]
    number: int


def bits(decision: Decision) -> list[int]:
    """The label bits that record `decision`, lowest first."""
    if not 0 < decision.number < NUMBER_LIMIT:
        raise ValueError(f"{decision.kind} number {decision.number} does not fit {NUMBER_BITS} label bits")
    flag = POLICY_BIT if decision.kind == "policy" else INGRESS_BIT
    return [FIRST_BIT + i for i in range(NUMBER_BITS) if decision.number >> i & 1] + [flag]


def statements(decision: Decision) -> list[nj.Expr]:
    """The one `ct label set A | B | ...` statement recording `decision`, nested as nft lists it."""
    first, *rest = bits(decision)
    start: Any = first
    return [nj.mangle(nj.ct("label"), reduce(nj.bor, rest, start))]


def decode(labels: int) -> Decision | None:
    """The decision recorded in a connection's 128 label bits, or None when markroute recorded none."""
    number = labels >> FIRST_BIT & (NUMBER_LIMIT - 1)
    if labels >> POLICY_BIT & 1 and number:
        return Decision("policy", number)
    if labels >> INGRESS_BIT & 1 and number:
        return Decision("ingress", number)
    return None
