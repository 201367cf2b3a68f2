"""One read-only picture of the namespace's routing state, for `trace --live` and debugging."""

from __future__ import annotations

from typing import Any

from markroute.kernel import KernelError, cgroups, iptables, nft, nftnetlink
from markroute.kernel.links import links
from markroute.kernel.rpdb import Rpdb


def snapshot(planned: str | None = None) -> dict[str, Any]:
    """The current namespace's nftables ruleset, ip rules, routes and links.

    PLANNED names markroute's table when the caller puts a plan in its place: that table
    is then not listed at all (`nft.list_ruleset_but`).

    Keys (a stable shape; the simulator consumes it):

    * ``nftables``: the document `nft -j list ruleset` prints (``{"nftables": [...]}``);
    * ``rules``: IPv4 then IPv6 rules, each the object `ip -j rule` (or `ip -6 -j rule`)
      prints, plus ``"family": "inet" | "inet6"``;
    * ``routes``: every route of every table, each the object
      `ip -j route show table all` prints, plus ``"family"``;
    * ``links``: ``{ifname: {"up": bool, "mac": str, "addresses": ["ADDR/LEN", ...]}}``,
      where up means administratively up and with carrier;
    * ``iptables`` (only when some rule holds an iptables-nft `xt` expression):
      ``{"ip": {"save": TEXT} | {"error": WHY}, "ip6": ...}``, what iptables-nft-save
      prints, and ``ipset`` (only when such a rule uses `-m set`): ``{"save": TEXT}``.

    Call `netns.enter` (or `netns.inside`) first to look at another namespace.
    """
    with Rpdb() as rpdb:
        rules = rpdb.rules_json()
        routes = rpdb.routes_json()
        interfaces = {name: link.to_json() for name, link in links(rpdb).items()}
    state: dict[str, Any] = {"rules": rules, "routes": routes, "links": interfaces}
    state.update(_ruleset(planned))
    return state


def _ruleset(planned: str | None, attempts: int = 3) -> dict[str, Any]:
    """The nft listing, and iptables-nft-save's view of the same generation where it is needed.

    The two are read one after the other, and the listing without PLANNED's table table by
    table; a transaction in between (Docker starting a container) would pair rules wrongly,
    so the generation is compared around all reads and they are read again if it moved.
    """
    for _ in range(attempts):
        before = nftnetlink.generation()
        document = cgroups.readable(nft.list_ruleset() if planned is None else nft.list_ruleset_but(planned))
        families = iptables.xt_families(document)
        if not families:
            if planned is None or nftnetlink.generation() == before:
                return {"nftables": document}
            continue
        saved = iptables.saved_rules(families)
        sets = iptables.ipsets(saved)
        if nftnetlink.generation() == before:
            found: dict[str, Any] = {"nftables": document, "iptables": saved}
            if sets is not None:
                found["ipset"] = sets
            return found
    raise KernelError(f"the nftables ruleset kept changing while it was read ({attempts} attempts)")
