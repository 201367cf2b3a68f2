"""Rendering libnftables JSON (list form) as `nft -f` text, for people to read, and a batch
of commands as text for nft to load (`batch`).

Covers the expressions markroute generates and the common ones of hand-written
rulesets; anything else is rendered as its JSON so nothing is silently dropped. The
tests load both forms into a kernel and compare what it lists, which is what proves
this renderer right. `batch` exists because nft 1.0.6 cannot read `socket cgroupv2` in
JSON (`kernel/cgroups.py`): it refuses what it cannot render instead of passing JSON on.
"""

from __future__ import annotations

import json
from typing import Any

PRIORITY_NAMES = {-300: "raw", -150: "mangle", -100: "dstnat", 0: "filter", 50: "security", 100: "srcnat"}
HEX_KEYS = {"mark"}
QUOTED_KEYS = {"iifname", "oifname"}
QUOTED_TYPES = {"cgroupsv2"}  # elements that are paths
BARE_META = {"iifname", "oifname", "iif", "oif"}
VERDICTS = {"accept", "drop", "return", "continue", "jump", "goto"}


def render(document: dict[str, Any]) -> str:
    """The table(s) of a `{"nftables": [...]}` document as nft text."""
    tables: dict[tuple[str, str], dict[str, list[str]]] = {}
    order: list[tuple[str, str]] = []
    chains: dict[tuple[str, str, str], list[str]] = {}
    headers: dict[tuple[str, str, str], str] = {}
    sets: dict[tuple[str, str], list[str]] = {}
    for obj in document.get("nftables", []):
        kind, body = next(iter(obj.items()))
        if kind == "table":
            key = (body["family"], body["name"])
            tables[key] = {}
            order.append(key)
        elif kind == "chain":
            ckey = (body["family"], body["table"], body["name"])
            chains[ckey] = []
            headers[ckey] = _chain_header(body)
        elif kind in ("set", "map"):
            sets.setdefault((body["family"], body["table"]), []).append(_set_text(kind, body))
        elif kind == "rule":
            chains.setdefault((body["family"], body["table"], body["chain"]), []).append(rule_text(body))
    out: list[str] = []
    for family, name in order:
        out.append(f"table {family} {name} {{")
        blocks: list[str] = list(sets.get((family, name), []))
        for (cfamily, ctable, cname), rules in chains.items():
            if (cfamily, ctable) != (family, name):
                continue
            lines = [f"\tchain {cname} {{"]
            if headers.get((cfamily, ctable, cname)):
                lines.append(f"\t\t{headers[(cfamily, ctable, cname)]}")
            lines += [f"\t\t{rule}" for rule in rules]
            lines.append("\t}")
            blocks.append("\n".join(lines))
        out.append("\n\n".join(blocks))
        out.append("}")
    return "\n".join(out) + "\n"


def _chain_header(body: dict[str, Any]) -> str:
    if "hook" not in body:
        return ""
    prio = body.get("prio", 0)
    priority = PRIORITY_NAMES.get(prio, str(prio))
    return f"type {body['type']} hook {body['hook']} priority {priority}; policy {body.get('policy', 'accept')};"


def _set_text(kind: str, body: dict[str, Any]) -> str:
    """A set, or a map (`type KEY : DATA`, elements `key : value`)."""
    lines = [f"\t{kind} {body['name']} {{", *(f"\t\t{line}" for line in _set_lines(kind, body, ",\n\t\t\t     ")), "\t}"]
    return "\n".join(lines)


def _set_lines(kind: str, body: dict[str, Any], separator: str) -> list[str]:
    key_type = body["type"] if isinstance(body["type"], str) else " . ".join(body["type"])
    data = f" : {body['map']}" if kind == "map" else ""
    lines = [f"type {key_type}{data}"]
    if body.get("flags"):
        flags = body["flags"]
        lines.append(f"flags {', '.join(flags if isinstance(flags, list) else [flags])}")
    if body.get("timeout"):
        lines.append(f"timeout {body['timeout']}s")
    elements = body.get("elem", [])
    if elements:
        lines.append("elements = { " + separator.join(_element(kind, e, body["type"]) for e in elements) + " }")
    return lines


def _element(kind: str, element: Any, key_type: Any = None) -> str:
    if kind == "map" and isinstance(element, list) and len(element) == 2:
        key, data = element
        shown = statement(data) if isinstance(data, dict) and len(data) == 1 and next(iter(data)) in VERDICTS else value(data)
        return f"{value(key)} : {shown}"
    if isinstance(element, dict) and "elem" in element:  # an element with its own lifetime
        body = element["elem"]
        timeout = f" timeout {body['timeout']}s" if "timeout" in body else ""
        return f"{_element(kind, body['val'], key_type)}{timeout}"
    return value(element, quoted=key_type in QUOTED_TYPES)


def batch(commands: list[dict[str, Any]]) -> str:
    """A batch of commands (`{"add": {...}}`, ...) as nft text: one transaction, like the JSON batch.

    Only the command kinds markroute sends: add, delete and flush of tables, chains, sets,
    rules and elements. Anything else, or an expression this module cannot write, raises
    ValueError: nft must not be handed a half-translated batch.
    """
    return "".join(_command(verb, kind, body) + "\n" for command in commands for verb, obj in command.items()
                   for kind, body in obj.items())


def _command(verb: str, kind: str, body: dict[str, Any]) -> str:
    if verb not in ("add", "delete", "flush"):
        raise ValueError(f"nft text batch: cannot write '{verb}' commands")
    if kind == "table":
        return f"{verb} table {body['family']} {body['name']}"
    where = f"{body['family']} {body['table']}"
    if kind == "chain":
        header = _chain_header(body)
        return f"{verb} chain {where} {body['name']}" + (f" {{ {header} }}" if verb == "add" and header else "")
    if kind in ("set", "map"):
        details = f" {{ {'; '.join(_set_lines(kind, body, ', '))}; }}" if verb == "add" else ""
        return f"{verb} {kind} {where} {body['name']}{details}"
    if kind == "rule" and verb == "add":
        text = rule_text(body)
        if '{"' in text:
            raise ValueError(f"nft text batch: cannot write this rule as text: {text}")
        return f"add rule {where} {body['chain']} {text}"
    if kind == "element" and verb in ("add", "delete"):
        elements = body["elem"] if isinstance(body["elem"], list) else [body["elem"]]
        paths = "cgroupsv2" if any(isinstance(e, str) and "/" in e for e in elements) else None  # no address has '/'
        return f"{verb} element {where} {body['name']} {{ {', '.join(_element('set', e, paths) for e in elements)} }}"
    raise ValueError(f"nft text batch: cannot write '{verb} {kind}'")


def rule_text(body: dict[str, Any]) -> str:
    parts = [statement(e) for e in body.get("expr", [])]
    if body.get("comment"):
        parts.append(f'comment "{body["comment"]}"')
    return " ".join(parts)


def statement(expr: dict[str, Any]) -> str:
    kind, body = next(iter(expr.items()))
    if kind == "match":
        left = expression(body["left"])
        hex_values = _is_mark(body["left"])
        quoted = _is_name(body["left"])
        right = value(body["right"], hex_values, quoted)
        op = body["op"]
        if op == "==" and _is_flags(body["left"]) and not isinstance(body["right"], (dict, list)):
            return f"{left} == {right}"  # bare, nft reads a flag as "any of these bits" (`in`)
        return f"{left} {right}" if op in ("==", "in") else f"{left} {op} {right}"
    if kind == "mangle":
        return f"{expression(body['key'])} set {value(body['value'], _is_mark(body['key']))}"
    if kind == "counter":
        if isinstance(body, dict) and (body.get("packets") or body.get("bytes")):
            return f"counter packets {body['packets']} bytes {body['bytes']}"
        return "counter"
    if kind in ("accept", "drop", "return", "continue"):
        return kind
    if kind in ("jump", "goto"):
        return f"{kind} {body['target']}"
    if kind == "vmap":
        if isinstance(body["data"], str):  # a named map: `vmap @name`
            return f"{expression(body['key'])} vmap {body['data']}"
        entries = ", ".join(f"{_key_value(body['key'], k)} : {statement(v)}" for k, v in body["data"]["set"])
        return f"{expression(body['key'])} vmap {{ {entries} }}"
    if kind == "masquerade":
        return "masquerade"
    if kind in ("snat", "dnat"):
        family = f" {body['family']}" if body.get("family") else ""
        target = value(body["addr"]) if "addr" in body else ""
        port = f":{body['port']}" if "port" in body else ""
        return f"{kind}{family} to {target}{port}"
    if kind == "log":
        prefix = f' prefix "{body["prefix"]}"' if isinstance(body, dict) and body.get("prefix") else ""
        group = f" group {body['group']}" if isinstance(body, dict) and "group" in body else ""
        return f"log{prefix}{group}"
    if kind == "limit":
        return f"limit rate {body['rate']}/{body.get('per', 'second')}"
    if kind == "reject":
        return "reject"
    return json.dumps(expr, sort_keys=True)


def expression(expr: Any) -> str:
    if not isinstance(expr, dict):
        return value(expr)
    kind, body = next(iter(expr.items()))
    if kind == "payload":
        return f"{body['protocol']} {body['field']}"
    if kind == "meta":
        return body["key"] if body["key"] in BARE_META else f"meta {body['key']}"
    if kind == "ct":
        direction = f" {body['dir']}" if body.get("dir") else ""
        return f"ct{direction} {body['key']}"
    if kind in ("&", "|", "^"):
        word = {"&": "and", "|": "or", "^": "xor"}[kind]
        left, right = body
        names = _flag_names(right)
        if names is not None:  # flags or'ed together, bracketed: `and` would bind first
            return f"{expression(left)} {word} ({'|'.join(names)})"
        return f"{expression(left)} {word} {value(right, _is_mark(left))}"
    if kind == "numgen":
        offset = f" offset {body['offset']}" if body.get("offset") else ""
        return f"numgen {body['mode']} mod {body['mod']}{offset}"
    if kind == "fib":
        return f"fib {' . '.join(body['flags'])} {body['result']}"
    if kind == "socket":
        level = f" level {body['level']}" if "level" in body else ""
        return f"socket {body['key']}{level}"
    if kind == "concat":
        return " . ".join(expression(e) for e in body)
    return json.dumps(expr, sort_keys=True)


def value(item: Any, hex_numbers: bool = False, quoted: bool = False) -> str:
    if isinstance(item, bool):
        return str(item).lower()
    if isinstance(item, int):
        return hex(item) if hex_numbers else str(item)
    if isinstance(item, str):
        return f'"{item}"' if quoted and not item.startswith("@") else item
    if isinstance(item, list):
        return " . ".join(value(e, hex_numbers, quoted) for e in item)
    if isinstance(item, dict):
        kind, body = next(iter(item.items()))
        if kind == "prefix":
            return f"{body['addr']}/{body['len']}"
        if kind == "range":
            return f"{value(body[0], hex_numbers, quoted)}-{value(body[1], hex_numbers, quoted)}"
        if kind == "set":
            members = body if isinstance(body, list) else [body]
            return "{ " + ", ".join(value(e, hex_numbers, quoted) for e in members) + " }"
        if kind in ("&", "|", "^"):
            return expression(item)
        return expression(item)
    return json.dumps(item)


def _key_value(key: Any, item: Any) -> str:
    """A map key as its key expression's type wants it: marks in hex, interface names quoted."""
    if isinstance(key, dict) and "concat" in key and isinstance(item, dict) and "concat" in item:
        return " . ".join(_key_value(part, v) for part, v in zip(key["concat"], item["concat"]))
    return value(item, _is_mark(key), _is_name(key))


def _is_mark(expr: Any) -> bool:
    if not isinstance(expr, dict):
        return False
    kind, body = next(iter(expr.items()))
    if kind in ("meta", "ct"):
        return body.get("key") in HEX_KEYS
    if kind in ("&", "|", "^"):
        return _is_mark(body[0])
    return False


def _flag_names(item: Any) -> list[str] | None:
    """`fin|syn|rst` as markroute writes it (nested `|` of names) or nft lists it (a list of
    names) flattened; None for anything else."""
    if isinstance(item, list) and item and all(isinstance(part, str) for part in item):
        return list(item)
    if not (isinstance(item, dict) and set(item) == {"|"}):
        return None
    names: list[str] = []
    for part in item["|"]:
        inner = [part] if isinstance(part, str) else _flag_names(part)
        if inner is None:
            return None
        names += inner
    return names


def _is_flags(expr: Any) -> bool:
    """A bitmask field, whose bare comparison nft takes as `in` rather than `==`."""
    if not isinstance(expr, dict):
        return False
    kind, body = next(iter(expr.items()))
    return (kind == "ct" and body.get("key") in ("state", "status")) or (
        kind == "payload" and body.get("protocol") == "tcp" and body.get("field") == "flags")


def _is_name(expr: Any) -> bool:
    return isinstance(expr, dict) and "meta" in expr and expr["meta"].get("key") in QUOTED_KEYS
