"""Address guard for the lab: traffic must never leave documentation/private space.

The lab sends real packets.  Even though every packet stays inside network
namespaces the lab created, a typo such as ``8.8.8.8`` would make a test
depend on (and, with a misconfigured host, possibly reach) the real internet.
Every address the lab configures, routes to or probes is therefore checked
against this allow-list, and anything else is refused before a command runs.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

#: Ranges the lab may use: RFC 5737 documentation, RFC 2544 benchmarking,
#: RFC 1918 private, RFC 3849 IPv6 documentation and RFC 4193 ULA.
LAB_NETWORKS: tuple[IPNetwork, ...] = tuple(
    ipaddress.ip_network(net)
    for net in (
        "192.0.2.0/24",
        "198.51.100.0/24",
        "203.0.113.0/24",
        "198.18.0.0/15",
        "10.0.0.0/8",
        "172.16.0.0/12",
        "192.168.0.0/16",
        "2001:db8::/32",
        "fd00::/8",
    )
)

#: Never routable off a host or link, so harmless anywhere in a namespace.
_NEVER_LEAVES_LINK: tuple[IPNetwork, ...] = tuple(
    ipaddress.ip_network(net) for net in ("127.0.0.0/8", "::1/128", "fe80::/10")
)


class AddressGuardError(ValueError):
    """An address outside the lab ranges was about to be used."""


def is_lab_network(value: str) -> bool:
    """Return True if *value* (address or CIDR) lies inside the allowed ranges.

    Prefix length 0 (``0.0.0.0/0``, ``::/0``) counts as allowed because it is
    just another spelling of ``default``, which names no concrete address.
    """
    net = ipaddress.ip_network(value, strict=False)
    if net.prefixlen == 0:
        return True
    allowed = LAB_NETWORKS + _NEVER_LEAVES_LINK
    return any(net.version == lab.version and net.subnet_of(lab) for lab in allowed)  # type: ignore[arg-type]


def check_lab_address(value: str) -> str:
    """Return *value* unchanged, or raise AddressGuardError if it is not a lab address."""
    if not is_lab_network(value):
        raise AddressGuardError(
            f"{value} is outside the lab ranges; use documentation/private space"
        )
    return value


def check_tokens(tokens: Iterable[str]) -> None:
    """Check every token of a command line that looks like an IP address or prefix.

    Only tokens containing ``.`` or ``:`` are considered, because the
    ``ipaddress`` module would happily read a bare number such as a table id
    or a metric as an IPv4 address.  MAC addresses and interface names fail to
    parse and are ignored.
    """
    for token in tokens:
        if "." not in token and ":" not in token:
            continue
        try:
            ipaddress.ip_network(token, strict=False)
        except ValueError:
            continue
        check_lab_address(token)
