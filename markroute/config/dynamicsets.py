"""`sets:` entries that others fill at run time: `{dynamic: true, timeout: 6h}` and `{domains: [...]}`.

A dynamic set has no elements in the config: a resolver (`domains:`), a script, `nft add
element` or `markroute set add` adds them, each with a lifetime. The config only says
that the set exists and how long an element lives by default, so an empty dynamic set
is valid, and a dynamic set cannot be mixed into a list of addresses (its elements are
not known when the list would be merged).
"""

from __future__ import annotations

import re

from markroute.config.reader import Reader
from markroute.config.source import Node
from markroute.diagnostics import Where
from markroute.model import DynamicSet, Match, Model
from markroute.values import parse_bool, parse_duration, parse_ip, yaml_text

DYNAMIC_KEYS = ("dynamic", "timeout", "domains")
DOMAIN_TIMEOUT = 6 * 3600  # a domain set's default: outlives hourly re-resolutions with room to spare
LABEL = re.compile(r"^(?!-)[a-z0-9_-]{1,63}(?<!-)$")


def is_dynamic(node: Node) -> bool:
    """Whether a `sets:` mapping describes a dynamic set (rather than `{file: PATH}`)."""
    return node.kind == "map" and any(key in node.items for key in DYNAMIC_KEYS)


def read(reader: Reader, name: str, node: Node, where: Where) -> DynamicSet | None:
    """The dynamic set `name` from its mapping, or None after reporting what is wrong."""
    reader.known_keys(node, DYNAMIC_KEYS, f"set '{name}'")
    items = node.items
    domains: tuple[str, ...] = ()
    if "domains" in items:
        listed = reader.one_or_many(items["domains"], f"'domains' of set '{name}'", parse_domain)
        if listed is None:
            return None
        domains = tuple(dict.fromkeys(listed))
    elif "dynamic" in items:
        dynamic = reader.scalar(items["dynamic"], "dynamic", parse_bool)
        if dynamic is None:
            return None
        if not dynamic:
            reader.diag.error(items["dynamic"].where, f"set '{name}' with 'dynamic: false' has no elements",
                              "list its addresses, or give 'file:'")
            return None
    else:
        reader.diag.error(node.where, f"set '{name}' with 'timeout' alone is not dynamic",
                          "add 'dynamic: true' (others fill it) or 'domains:'")
        return None
    timeout: int | None = DOMAIN_TIMEOUT if domains else None
    if "timeout" in items:
        timeout = reader.scalar(items["timeout"], "timeout", parse_duration)
        if timeout is None:
            return None
    return DynamicSet(name, where, timeout, domains)


def parse_domain(value: object) -> str:
    """A DNS name as a resolver compares it: lower case, no trailing dot, IDNA for non-ASCII."""
    text = yaml_text(value).lower().removesuffix(".")
    try:
        text = text.encode("idna").decode("ascii")
    except UnicodeError:
        raise ValueError(f"'{yaml_text(value)}' is not a domain name") from None
    labels = text.split(".")
    if len(text) > 253 or len(labels) < 2 or not all(LABEL.match(label) for label in labels):
        raise ValueError(f"'{yaml_text(value)}' is not a domain name (e.g. netflix.com)")
    return text


def dynamic_policies(model: Model) -> set[str]:
    """Policies that test a dynamic set: whether a packet matches depends on what others added.

    The offline simulator sees such a set empty, so its reachability findings say nothing
    about these policies (or the uplinks only they lead to).
    """
    found: set[str] = set()
    for policy in model.policies:
        match: Match | None = policy.match
        while match is not None:
            if any(a is not None and a.dynamic for a in (match.src, match.dst)):
                found.add(policy.name)
            match = match.negated
    return found


DNS_KEYS = ("dns", "dnsmasq_conf", "dnsmasq_restart", "dns_server")
DNS_MODES = ("markroute", "dnsmasq", "none")


def dns_settings(reader: Reader, items: dict[str, Node]) -> dict[str, object]:
    """`settings.dns` and its dnsmasq options: who fills the domain sets (see `markroute.daemon.dnsmasq`).

    `markroute` (default): `markroute run` resolves the names itself; `dnsmasq`: the LAN's
    dnsmasq adds every answer it forwards, from the `nftset=` lines markroute writes to
    `dnsmasq_conf`, and `dnsmasq_restart` (an argv, no shell) makes dnsmasq read them;
    `none`: someone else fills them.
    """
    values: dict[str, object] = {}
    if "dns" in items:
        values["dns"] = reader.choice(items["dns"], "dns", DNS_MODES)
    if "dnsmasq_conf" in items:
        path = reader.scalar(items["dnsmasq_conf"], "dnsmasq_conf", yaml_text)
        if path is not None and not path.startswith("/"):
            reader.diag.error(items["dnsmasq_conf"].where, "dnsmasq_conf must be an absolute path",
                              "for example /etc/dnsmasq.d/markroute.conf")
            path = None
        values["dnsmasq_conf"] = path
    if "dns_server" in items:
        values["dns_server"] = reader.scalar(items["dns_server"], "dns_server", parse_ip)
    if "dnsmasq_restart" in items:
        values["dnsmasq_restart"] = reader.command(items["dnsmasq_restart"], "dnsmasq_restart")
    if values.get("dns") == "dnsmasq" and not values.get("dnsmasq_conf"):
        if "dnsmasq_conf" not in items:
            reader.diag.error(items["dns"].where, "dns: dnsmasq needs 'dnsmasq_conf:', the file markroute writes",
                              "for example dnsmasq_conf: /etc/dnsmasq.d/markroute.conf")
    return values
