"""Counting tracked connections by the uplink bits of their connection mark."""

from __future__ import annotations

import socket
from collections import Counter

from markroute.kernel import KernelError


def count_by_mark(mask: int) -> Counter[int]:
    """How many conntrack entries (IPv4 and IPv6) carry each value of `ct mark & MASK`."""
    from pyroute2 import NetlinkError
    from pyroute2.conntrack import Conntrack

    counts: Counter[int] = Counter()
    for family in (socket.AF_INET, socket.AF_INET6):
        try:
            with Conntrack(nfgen_family=family) as ct:
                for entry in ct.dump_entries():
                    counts[(entry.mark or 0) & mask] += 1
        except NetlinkError as exc:
            raise KernelError(f"cannot read the conntrack table: {exc}") from exc
    return counts
