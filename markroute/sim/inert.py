"""Rules that cannot change a packet's fate, so what they read never matters.

ufw logs what it drops through rules like `-m limit --limit 3/min -j LOG` and jumps to
chains (`ufw-logging-deny`) that only log and return. Whether a rate limit lets the
packet through depends on traffic the simulator never saw; but such a rule neither
decides, nor rewrites, nor marks anything, so the packet's path is the same either
way. Those rules are skipped instead of making the whole trace indeterminate.

A rule is inert when every statement is a match, a counter or a log, or a jump to a
chain whose rules are all inert or only return. Only rules that read something the
simulator cannot know (a rate limit, a quota, an iptables extension) are skipped:
the others still show in the trace as they matched.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from markroute.sim.nft import Chain, Rule

# iptables targets that neither decide nor change anything routing reads.
PASSIVE_TARGETS = frozenset({"LOG", "NFLOG", "ULOG", "TRACE", "AUDIT", "TCPMSS", "CHECKSUM", "CLASSIFY", "SET",
                             "IDLETIMER", "LED", "NFACCT"})
PASSIVE_STATEMENTS = frozenset({"match", "counter", "log", "limit", "quota"})
UNKNOWABLE = frozenset({"limit", "quota", "xt"})


def skippable(rule: Rule, chains: dict[tuple[str, str, str], Chain]) -> bool:
    """Whether `rule` reads something unknowable yet cannot change anything."""
    exprs = rule.body.get("expr", [])
    if not any(isinstance(e, dict) and UNKNOWABLE & set(e) for e in exprs):
        return False
    return _inert_rule(rule, chains, set())


def _inert_rule(rule: Rule, chains: dict[tuple[str, str, str], Chain], visiting: set[str]) -> bool:
    for expr in rule.body.get("expr", []):
        kind, body = next(iter(expr.items()))
        if kind in PASSIVE_STATEMENTS:
            continue
        if kind == "xt" and (body.get("type") == "match" or body.get("name") in PASSIVE_TARGETS):
            continue
        if kind == "jump":
            target = chains.get((rule.chain.family, rule.chain.table, str(body.get("target"))))
            if target is not None and _inert_chain(target, chains, visiting):
                continue
        return False
    return True


def _inert_chain(chain: Chain, chains: dict[tuple[str, str, str], Chain], visiting: set[str]) -> bool:
    """A chain of inert rules, or rules that only return, leaves the packet as it came."""
    if chain.label in visiting:
        return False
    visiting = visiting | {chain.label}
    for rule in chain.rules:
        exprs: list[Any] = rule.body.get("expr", [])
        only_return = bool(exprs) and "return" in exprs[-1] and all(
            next(iter(e)) in PASSIVE_STATEMENTS or ("xt" in e and e["xt"].get("type") == "match") for e in exprs[:-1])
        if not only_return and not _inert_rule(rule, chains, visiting):
            return False
    return True
