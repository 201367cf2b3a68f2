"""Tracked connections by the uplink bits of their connection mark: counting them, and
deleting those of one uplink (how the daemon moves the flows of an uplink that died)."""

from __future__ import annotations

import socket
from collections import Counter

from markroute.kernel import KernelError

FAMILIES = (socket.AF_INET, socket.AF_INET6)


def count_by_mark(mask: int) -> Counter[int]:
    """How many conntrack entries (IPv4 and IPv6) carry each value of `ct mark & MASK`."""
    from pyroute2 import NetlinkError
    from pyroute2.conntrack import Conntrack

    counts: Counter[int] = Counter()
    for family in FAMILIES:
        try:
            with Conntrack(nfgen_family=family) as ct:
                for entry in ct.dump_entries():
                    counts[(entry.mark or 0) & mask] += 1
        except NetlinkError as exc:
            raise KernelError(f"cannot read the conntrack table: {exc}") from exc
    return counts


def delete_by_mark(mark: int, mask: int) -> None:
    """Delete every entry (IPv4 and IPv6) whose `ct mark & MASK` equals MARK, and no other.

    One netlink request per family: the kernel filters by mark and mask itself, so
    the entries of other uplinks (and unmarked ones) are never even looked at here.
    The next packet of a deleted flow is a new connection and is routed afresh.
    """
    from pyroute2 import NetlinkError
    from pyroute2.conntrack import Conntrack

    if not mark or mark & ~mask:
        raise ValueError(f"mark {mark:#x} is not a non-zero value inside mask {mask:#x}")
    for family in FAMILIES:
        try:
            with Conntrack(nfgen_family=family) as ct:
                ct.flush(mark=mark, mark_mask=mask)
        except NetlinkError as exc:
            raise KernelError(f"cannot delete the connections marked {mark:#x}/{mask:#x}: {exc}") from exc
