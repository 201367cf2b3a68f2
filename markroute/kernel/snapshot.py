"""One read-only picture of the namespace's routing state, for `trace --live` and debugging."""

from __future__ import annotations

from typing import Any

from markroute.kernel import nft
from markroute.kernel.links import links
from markroute.kernel.rpdb import Rpdb


def snapshot() -> dict[str, Any]:
    """The current namespace's nftables ruleset, ip rules, routes and links.

    Keys (a stable shape; the simulator consumes it):

    * ``nftables``: the document `nft -j list ruleset` prints (``{"nftables": [...]}``);
    * ``rules``: IPv4 then IPv6 rules, each the object `ip -j rule` (or `ip -6 -j rule`)
      prints, plus ``"family": "inet" | "inet6"``;
    * ``routes``: every route of every table, each the object
      `ip -j route show table all` prints, plus ``"family"``;
    * ``links``: ``{ifname: {"up": bool, "mac": str, "addresses": ["ADDR/LEN", ...]}}``,
      where up means administratively up and with carrier.

    Call `netns.enter` (or `netns.inside`) first to look at another namespace.
    """
    with Rpdb() as rpdb:
        rules = rpdb.rules_json()
        routes = rpdb.routes_json()
        interfaces = {name: link.to_json() for name, link in links(rpdb).items()}
    return {"nftables": nft.list_ruleset(), "rules": rules, "routes": routes, "links": interfaces}
