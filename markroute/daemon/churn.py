"""Others removing markroute's ip rules and routes: who did it, said once, not in a loop.

A network manager or VPN client may delete rules it did not create:
systemd-networkd removes every foreign routing policy rule when it starts (unless
`ManageForeignRoutingPolicyRules=no`), and scripts that flush rules or tables take
markroute's with them. The daemon listens to rule and route notifications; a removed
rule or route of protocol 77 (markroute's) triggers a resync, which puts it back
within a fraction of a second.

The notification's netlink header carries the port id of the socket that asked for
the change, which names the process while that socket is open (`/proc/net/netlink`
maps the port to a socket inode, `/proc/PID/fd` the inode to a process); a
short-lived `ip rule del` has exited by then and is named by its port only (for a
process's first socket the port id is its pid). Each (who, what) pair is logged
once as a warning; repeats are counted and summed up at most once a minute, so a
program that keeps deleting the rules does not flood the log.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from markroute.daemon import logs
from markroute.kernel.ipjson import rule_json
from markroute.plan import RULE_PROTOCOL

SUMMARY_INTERVAL = 60.0
PROC = Path("/proc")
NETLINK_ROUTE = 0


def removed(message: Any) -> str | None:
    """The text of markroute's rule or route a RTM_DELRULE / RTM_DELROUTE message removed, else None."""
    event = message.get("event")
    if event == "RTM_DELRULE" and message.get_attr("FRA_PROTOCOL") == RULE_PROTOCOL:
        rule = rule_json(message)
        mark = f" fwmark {rule['fwmark']}/{rule.get('fwmask', '0xffffffff')}" if "fwmark" in rule else ""
        src = f" from {rule['src']}" if rule.get("src", "all") != "all" else ""
        target = f"lookup {rule['table']}" if "table" in rule else rule.get("action", "")
        return f"ip rule {rule['priority']}:{src}{mark} {target}"
    if event == "RTM_DELROUTE" and message["proto"] == RULE_PROTOCOL:
        table = message.get_attr("RTA_TABLE") or message["table"]
        dst = message.get_attr("RTA_DST") or "default"
        length = message["dst_len"]
        return f"route {dst}{f'/{length}' if message.get_attr('RTA_DST') else ''} table {table}"
    return None


def own(port: int) -> bool:
    """Whether this process sent the change: pyroute2 ports are the pid plus a socket number << 22."""
    return port & 0x3FFFFF == os.getpid() & 0x3FFFFF


def sender(port: int, proc: Path = PROC) -> str:
    """The process behind netlink port PORT in this namespace, as far as it can still be found."""
    if port == 0:
        return "the kernel (an interface or address went away)"
    inode = _socket_inode(port, proc)
    if inode is not None:
        found = _process_with(inode, proc)
        if found is not None:
            return found
    comm = _comm(proc / str(port))
    if comm is not None:
        return f"{comm} (pid {port}, by its netlink port)"
    return f"netlink port {port} (the process has exited)"


def _socket_inode(port: int, proc: Path) -> str | None:
    try:
        lines = (proc / "net/netlink").read_text().splitlines()[1:]
    except OSError:
        return None
    for line in lines:
        columns = line.split()
        if len(columns) >= 10 and columns[1] == str(NETLINK_ROUTE) and columns[2] == str(port):
            return columns[9]
    return None


def _process_with(inode: str, proc: Path) -> str | None:
    wanted = f"socket:[{inode}]"
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if any(os.readlink(fd) == wanted for fd in (entry / "fd").iterdir()):
                comm = _comm(entry)
                return f"{comm or 'a process'} (pid {entry.name})"
        except OSError:
            continue
    return None


def _comm(entry: Path) -> str | None:
    try:
        return (entry / "comm").read_text().strip() or None
    except OSError:
        return None


@dataclass
class ChurnLog:
    """Logs each (who, what) once; counts repeats and sums them up now and then."""

    log: logging.Logger
    clock: Callable[[], float] = time.monotonic
    seen: set[tuple[str, str]] = field(default_factory=set)
    repeats: int = 0
    last_summary: float | None = None  # the first repeat is said at once: someone keeps at it

    def note(self, who: str, what: str) -> None:
        if (who, what) not in self.seen:
            self.seen.add((who, what))
            logs.event(self.log, logging.WARNING, f"{who} removed markroute's {what}: putting it back",
                       event="repair", what=what, by=who)
            return
        self.repeats += 1
        now = self.clock()
        if self.last_summary is None or now - self.last_summary >= SUMMARY_INTERVAL:
            self.log.warning("markroute's rules and routes were removed %d more times by the same programs "
                             "and put back each time (see `markroute check --live` for the cause)", self.repeats)
            self.repeats = 0
            self.last_summary = now
