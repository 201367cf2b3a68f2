"""keepalived's notify script in the HA lab: hand the connection table over with conntrackd.

keepalived runs it (inside the router's namespace) on every state change of
the router's VRRP sync group::

    python -m markroute.lab.ha_notify master|backup|fault
        --conntrackd-conf FILE --state-file FILE --log FILE

The steps follow conntrackd(8) and the primary-backup.sh script shipped with
it (``/usr/share/doc/conntrackd/examples/sync``):

* master: ``-c`` commits the external cache (the peer's connections) into
  the kernel table, ``-f internal`` flushes the internal cache, ``-R``
  refills it from the kernel table (now holding the committed connections,
  so this router replicates them from here on) and ``-B`` sends a bulk
  update to the peer.  Only then is the hold lifted.  The shipped script
  flushes both caches with a bare ``-f``; conntrackd 1.4.7 refuses that
  after a commit ("ignoring flush command, commit still in progress", still
  refused 6 s later although ``-c`` had returned with every entry in the
  kernel), so the external cache is left as it is: the peer's bulk update
  refreshes it when the peer comes back.
* backup: ``-t`` schedules the purge of the kernel table (PurgeTimeout) so
  stale entries of the former master role go away, ``-n`` asks the master
  for a full resync of the external cache.
* fault: ``-t`` only.

The hold: keepalived adds the virtual addresses *before* it runs this
script, so packets of existing connections can reach a new master before
their state is committed.  Without a conntrack entry such a packet is a new
connection and would be NATed afresh (or, for TCP mid-stream, tracked with
the wrong state), and the commit of the synced entry then clashes with it.
Worse, a server's segment for a NATed TCP connection reaches the new
master's own stack (it is addressed to the WAN virtual address), which
answers with a reset and kills the connection at the server.  While the
router is not master, a table of the lab's own drops every forwarded
packet of state new and every TCP segment for the router itself that is
not a SYN and has no conntrack entry; the master step deletes it after the
commit.  Client and server retransmit, and their next packets find the
committed entry.

The script writes the state it reached to *state-file* once its steps are
done, so ``ha.vrrp_role`` reads "master" only after the commit, and logs
each step with its duration to *log*.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

#: The lab's own table holding new forwarded connections while not master.
HOLD_TABLE = "mrlabhold"
#: nft input that installs the hold (replacing any previous one in the same transaction).
HOLD_ON = f"""
add table inet {HOLD_TABLE}
delete table inet {HOLD_TABLE}
table inet {HOLD_TABLE} {{
    chain forward {{
        type filter hook forward priority -10; policy accept;
        ct state new counter drop
    }}
    chain input {{
        type filter hook input priority -10; policy accept;
        ct state new tcp flags & (fin|syn|rst|ack) != syn counter drop
    }}
}}
"""
#: nft input that lifts the hold whether or not it is in place.
HOLD_OFF = f"add table inet {HOLD_TABLE}\ndelete table inet {HOLD_TABLE}\n"

#: conntrackd client steps per state (see the module docstring for why).
STEPS: dict[str, tuple[tuple[str, ...], ...]] = {
    "master": (("-c",), ("-f", "internal"), ("-R",), ("-B",)),
    "backup": (("-t",), ("-n",)),
    "fault": (("-t",),),
}

#: keepalived may start scripts with a minimal environment; the tools live here.
_TOOL_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"


def _tool(name: str) -> str:
    found = shutil.which(name, path=os.pathsep.join((os.environ.get("PATH", ""), _TOOL_PATH)))
    if found is None:
        raise SystemExit(f"ha_notify: {name} not found")
    return found


class StepLog:
    """Appends one line per step: state, step, exit code, seconds taken."""

    def __init__(self, path: Path, state: str) -> None:
        self.path, self.state = path, state

    def run(self, argv: Sequence[str], input: str | None = None) -> int:
        began = time.monotonic()
        proc = subprocess.run(list(argv), input=input, capture_output=True, text=True, check=False)
        took = time.monotonic() - began
        detail = (proc.stderr or proc.stdout).strip().replace("\n", " | ")
        self.write(f"{' '.join(argv[1:])} rc={proc.returncode} {took:.3f}s {detail}")
        return proc.returncode

    def write(self, text: str) -> None:
        with self.path.open("a") as log:
            log.write(f"{time.time():.3f} {self.state} {text}\n")


def hand_over(state: str, conntrackd_conf: Path, log: StepLog) -> None:
    """Run the conntrackd steps of *state*, with the hold set before or lifted after them."""
    nft = [_tool("nft"), "-f", "-"]
    if state != "master":
        log.run(nft, input=HOLD_ON)
    for step in STEPS[state]:
        log.run([_tool("conntrackd"), "-C", str(conntrackd_conf), *step])
    if state == "master":
        log.run([nft[0], "list", "table", "inet", HOLD_TABLE])  # what the hold caught
        log.run(nft, input=HOLD_OFF)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m markroute.lab.ha_notify", description=__doc__)
    parser.add_argument("state", choices=sorted(STEPS))
    parser.add_argument("--conntrackd-conf", type=Path, required=True)
    parser.add_argument("--state-file", type=Path, required=True)
    parser.add_argument("--log", type=Path, required=True)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    log = StepLog(args.log, args.state)
    log.write("begin")
    hand_over(args.state, args.conntrackd_conf, log)
    staged = args.state_file.with_suffix(".new")
    staged.write_text(args.state + "\n")
    staged.replace(args.state_file)
    log.write("done")


if __name__ == "__main__":
    main()
