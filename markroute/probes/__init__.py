"""Probe methods, one module each, and the registry config and the daemon iterate.

Adding a method (`dns`, `http`, ...) is one local change: a module here that defines
`METHOD = Method(...)` with its prober, and its entry in `METHODS` below;
tests/test_probe_methods.py fails when a module is not registered or an entry lacks a
part. Nothing else names a method: config takes the choices and the target validation
from `METHODS`, the daemon's monitor the default targets and the probers.

Why a package of its own, low in the layers (it imports only `model` and the base):
config must validate `check:` at check time with file:line errors and may not import
the daemon, while the daemon needs the implementation. Keeping declaration and
implementation in one module per method (instead of a declaration for config and a
second registry in the daemon, kept in step by a test) means a method cannot exist
half. The implementations use nothing but sockets; what they need from the daemon's
event loop is the `Loop` protocol, which `daemon.reactor.Reactor` satisfies.
"""

from __future__ import annotations

from collections.abc import Mapping

from markroute.model import Uplink
from markroute.probes import arp, dns, http, icmp, tcp
from markroute.probes.method import Method
from markroute.values import AUTO_GATEWAY

METHODS: dict[str, Method] = {method.name: method for method in (icmp.METHOD, tcp.METHOD, arp.METHOD, dns.METHOD, http.METHOD)}


def default_targets(method: Method, uplink: Uplink, learned: Mapping[int, str | None] | None = None) -> tuple[str, ...]:
    """What METHOD probes on UPLINK when its check names no targets: some of its gateways, or nothing.

    A `gateway: auto` is probed at the next hop learned from the kernel (LEARNED: IP
    version -> next hop; none known, or on-link: nothing), so the targets move with it.
    """
    gateways = {
        version: (learned or {}).get(version) if configured == AUTO_GATEWAY else configured
        for version, configured in ((4, uplink.gateway), (6, uplink.gateway6))
    }
    return tuple(gateway for version in method.default_gateways if (gateway := gateways[version]))
