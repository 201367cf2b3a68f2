"""The kernel-only reference of bench_apply: insert a prebuilt element batch, timed alone.

Run by bench_apply.py as a child process (so its peak RSS is its own):
    python3 benchmarks/kernel_batch.py NETNS TABLE SET PREFIX_FILE
The set `inet TABLE SET` (ipv4_addr, flags interval) must exist and be empty. The
prefixes (one canonical IPv4 prefix a line) become the same netlink element batch
markroute's apply sends (`markroute.kernel.nftnetlink.element_batch` of the packed
intervals `markroute.values` reads), built before the clock starts; what is timed is
sending them as one batch and the kernel committing it. Prints the wall seconds and the CPU
seconds of that (the kernel's work on a netlink batch runs in the sending thread, as system time).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from markroute.kernel import nftnetlink  # noqa: E402
from markroute.kernel.netns import inside  # noqa: E402
from markroute.values import Ipv4Intervals, ipv4_text, merge_ipv4  # noqa: E402


def main() -> None:
    netns, table, set_name, prefix_file = sys.argv[1:5]
    intervals = Ipv4Intervals()
    with open(prefix_file) as lines:
        while piece := lines.readlines(1 << 20):  # a megabyte of whole lines at a time, as apply reads them
            found, others, _ = ipv4_text("".join(piece))
            if others:
                sys.exit(f"{prefix_file}: {others[0][1]!r} is not a canonical IPv4 prefix")
            intervals.words.extend(found.words)
    batch = nftnetlink.element_batch(table, [nftnetlink.SetChange(set_name, 4, added=merge_ipv4(intervals))])
    with inside(netns):
        start, cpu = time.perf_counter(), time.process_time()
        nftnetlink._commit(batch)
        print(f"{time.perf_counter() - start:.6f} {time.process_time() - cpu:.6f}")


if __name__ == "__main__":
    main()
