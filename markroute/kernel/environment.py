"""What every kernel command does first: check prerequisites, enter the namespace, map errors.

A missing prerequisite (root, nft, the namespace) is one clear message and exit code
4; a refusal by the kernel is its message and exit code 1; never a traceback.
"""

from __future__ import annotations

import os
import shutil

from markroute.kernel import EnvironmentProblem


def require_root() -> None:
    if os.geteuid() != 0:
        raise EnvironmentProblem("this command changes the kernel's routing and firewall: run it as root")


def require_nft() -> None:
    if shutil.which("nft") is None:
        raise EnvironmentProblem("the nft command is missing: install nftables (apt install nftables)")


def prepare(netns: str | None) -> str | None:
    """Checks first, then the namespace switch, before any socket or subprocess exists.

    Returns the name the namespace's state is kept under: NETNS, or the name of the
    namespace the process already runs in (`ip netns exec NAME markroute ...`).
    """
    from markroute.kernel import netns as namespaces

    require_root()
    require_nft()
    if netns:
        namespaces.enter(netns)
        return netns
    return namespaces.current()

