"""nft JSON in plain words, for the shapes the nft text renderer does not know.

A trace names what it could not model; it never shows raw JSON. `{"limit": {"rate":
3, "per": "minute"}}` reads "limit rate 3 per minute", close to nft's own text.
"""

from __future__ import annotations

from typing import Any


def plain(item: Any) -> str:
    """Any nft JSON value as words: keys and values in order, nested objects inline."""
    if isinstance(item, dict):
        if len(item) == 1:
            kind, body = next(iter(item.items()))
            if kind == "xt" and isinstance(body, dict):
                return f"xt {body.get('type', '')} {body.get('name', '')}".strip()
            if body is None or body == {}:
                return str(kind)
            return f"{kind} {plain(body)}"
        return " ".join(f"{key} {plain(value)}" for key, value in item.items())
    if isinstance(item, list):
        return ", ".join(plain(value) for value in item)
    if isinstance(item, bool):
        return str(item).lower()
    return str(item)
