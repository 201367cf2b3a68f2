"""Warnings about tunnels: traffic that would leave unencrypted when a tunnel dies, and
tunnels whose health only their link state tells.

Offline, a tunnel-like uplink is one without any gateway: wireguard, tun, ppp and every
other point-to-point interface route "dev X" with no link-layer next hop. (The daemon
and `status` see the interface itself; `check` has only the config.)

Why these two: with the default `last_resort: main`, a VPN-only host's connections
left through the ISP the moment its tunnel went down, and `check` said nothing; and a
tunnel whose peer died keeps its interface UP, so an uplink judged by link state alone
stayed "up" while every packet into it was lost.
"""

from __future__ import annotations

from collections.abc import Iterator

from markroute.diagnostics import Where
from markroute.model import SPECIAL_TARGETS, Model, Uplink

Warning = tuple[Where, str, str | None]


def tunnel_like(uplink: Uplink) -> bool:
    return uplink.gateway is None and uplink.gateway6 is None


def tunnel_warnings(model: Model) -> Iterator[Warning]:
    yield from unencrypted_fallbacks(model)
    yield from blind_tunnels(model)


def preferred_uplinks(model: Model, target: str) -> list[str]:
    """The uplinks TARGET uses while all are healthy: a failover group's first member's, a balance group's all."""
    group = model.groups.get(target)
    if group is None or group.kind == "balance":
        return model.uplinks_of(target)
    return preferred_uplinks(model, group.members[0][0])


def fallbacks(model: Model, target: str) -> list[str]:
    """Where TARGET's traffic can end up when a tunnel fails: its uplinks and its last resort."""
    resort = model.last_resort_of(target) if target in model.groups else model.settings.last_resort
    return model.uplinks_of(target) + [resort]


def unencrypted_fallbacks(model: Model) -> Iterator[Warning]:
    """Policies whose traffic goes into tunnels only, yet would leave through `main` or a non-tunnel uplink."""
    for policy in model.policies:
        if policy.via in SPECIAL_TARGETS:
            continue
        preferred = preferred_uplinks(model, policy.via)
        if not preferred or not all(tunnel_like(model.uplinks[name]) for name in preferred):
            continue
        leaks = [name for name in fallbacks(model, policy.via)
                 if name == "main" or (name in model.uplinks and not tunnel_like(model.uplinks[name]))]
        if leaks:
            tunnels = ", ".join(f"'{name}'" for name in preferred)
            through = ", ".join("the main table" if name == "main" else f"'{name}'" for name in leaks)
            yield (
                policy.where,
                f"policy '{policy.name}' sends its traffic to tunnel {tunnels}; when the tunnel dies it "
                f"would leave unencrypted through {through}",
                f"end the failover list with `blackhole` to fail closed, e.g. via: {{failover: [{preferred[0]}, blackhole]}}",
            )


def blind_tunnels(model: Model) -> Iterator[Warning]:
    """Tunnel-like uplinks without check targets: link state cannot see a dead peer."""
    for uplink in model.uplinks.values():
        if tunnel_like(uplink) and not (uplink.check and uplink.check.targets):
            yield (
                uplink.where,
                f"uplink '{uplink.name}' has no gateway and no check targets: only its link state is followed, "
                "and a tunnel's interface stays up when its peer dies",
                "add check: {targets: [an address reached through the tunnel]}",
            )
