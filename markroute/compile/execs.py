"""`markroute exec TARGET -- COMMAND`: every connection of COMMAND through one uplink or group.

Like mwan3's `use`. A process cannot be given a packet mark for all its sockets, and
nft 1.0.6's JSON cannot match a cgroup (`socket cgroupv2` is missing), but it can match
the group that owns a socket (`meta skgid`). So each uplink and group gets a group id
of its own, above any real one (`gid`), `markroute exec` runs the command with that as
its group (its own groups kept as supplementary ones), and the output chain sends new
connections of sockets owned by it to the target's mark or group chain, before any
policy. The source address is chosen by main's route before the mark re-routes the
packet, so an uplink that does not NAT sees the command's packets with main's source.

Only with `settings.exec: true`: the rule makes every trace of router traffic depend
on the socket's group (`trace --group`).
"""

from __future__ import annotations

from markroute.model import Model

EXEC_GID_BASE = 2_000_000_000  # far above the ids of real groups (systemd's dynamic ones stop at 65519)
GROUP_OFFSET = 1 << 30  # a group target's id: base + offset + its position among groups


def gid(model: Model, target: str) -> int:
    """The group id `markroute exec TARGET` runs its command with; KeyError for an unknown target."""
    if target in model.uplinks:
        return EXEC_GID_BASE + model.uplinks[target].table
    return EXEC_GID_BASE + GROUP_OFFSET + list(model.groups).index(target)


def targets(model: Model) -> list[str]:
    """Every uplink and group, in declaration order: what `markroute exec` accepts."""
    return list(model.uplinks) + list(model.groups)
