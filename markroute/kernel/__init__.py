"""Everything that touches the running kernel: nftables, the RPDB, links, sysctls, state.

The rest of markroute works on data (`Plan`); this package is the only place that
changes the system, and it only ever changes what markroute owns: the nftables table
`inet markroute`, ip rules and routes tagged with protocol `plan.RULE_PROTOCOL`, and the
sysctls whose previous values it recorded. Commands call `netns.enter` first, so every
socket, subprocess and /proc/sys access below acts inside the chosen namespace.
"""

from __future__ import annotations


class KernelError(RuntimeError):
    """The kernel (or nft) refused an operation; the message says what and why."""


class EnvironmentProblem(RuntimeError):
    """Something markroute needs is missing (root, nft, the namespace): exit code 4."""
