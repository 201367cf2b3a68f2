"""Putting a sysctl back without undoing what a neighbour relies on.

markroute records, for each sysctl it changed, the value it found (`original`) and the
value it set (`applied`). Going back (`down`, an apply that no longer wants the
sysctl, the rollback of a failed apply) follows two rules:

* a sysctl is restored only while it still holds the value markroute set: a different
  value means someone else changed it since, and theirs stays;
* IP forwarding is never turned off again once markroute turned it on (`down`, and an
  apply that stops wanting it). Forwarding is shared by everything that routes:
  Docker, libvirt, wg-quick, Tailscale. A program started after markroute that needs
  it writes the same value `1`, and such a write cannot be told apart from markroute's
  own; turning forwarding off would silently cut its traffic (measured: containers
  lost every connection after `markroute down` restored `ip_forward=0` under a dockerd
  started after the apply). The rollback of a failed apply is the exception: it
  undoes a change made moments earlier, in the same command.

`decide` is pure (tests call it directly); `restore` reads and writes /proc/sys.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from markroute.kernel import sysctl
from markroute.plan import Sysctl

FORWARDING_SUFFIX = "/forwarding"
IPV4_FORWARD = "net/ipv4/ip_forward"

Action = Literal["restore", "keep", "nothing"]


@dataclass(frozen=True)
class Decision:
    """What to do with one sysctl on the way back, and the sentence that says why."""

    action: Action
    message: str | None = None


def is_forwarding(path: str) -> bool:
    """ip_forward and the per-interface or all/default `forwarding` keys of both families."""
    return path == IPV4_FORWARD or (path.startswith(("net/ipv4/conf/", "net/ipv6/conf/"))
                                    and path.endswith(FORWARDING_SUFFIX))


def decide(path: str, original: str, applied: str | None, current: str, rollback: bool = False) -> Decision:
    """Whether to put `original` back into `path`, which now holds `current`."""
    name = Sysctl(path, original).name
    if current == original:
        return Decision("nothing")
    if applied is not None and current != applied:
        return Decision("keep", f"sysctl {name} was changed by someone else ({current}); left as is")
    if not rollback and is_forwarding(path) and current != "0" and original == "0":
        return Decision("keep", (
            f"sysctl {name} left at {current}: forwarding is shared with other software that routes "
            f"(Docker, VPNs, libvirt) and may have come to rely on it; to turn it off: sysctl -w {name}=0"))
    return Decision("restore", f"sysctl {name}: {current} -> {original} (restored)")


def restore(path: str, original: str, applied: str | None, rollback: bool = False) -> Decision:
    """Apply `decide` to the live value; a missing sysctl (interface gone) is left alone."""
    if not sysctl.exists(path):
        return Decision("nothing")
    decision = decide(path, original, applied, sysctl.read(path), rollback)
    if decision.action == "restore":
        sysctl.write(path, original)
    return decision


def undo(path: str, found: str, written: str) -> None:
    """The rollback of writing `written` over `found`: put `found` back if `written` is still there."""
    restore(path, found, written, rollback=True)
