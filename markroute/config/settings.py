"""The `settings:` section: read first, since marks and tables are allocated within it."""

from __future__ import annotations

from typing import Any

from markroute import marks
from markroute.config import dynamicsets
from markroute.config.reader import Reader
from markroute.config.source import Node
from markroute.model import SPECIAL_TARGETS, HaSettings, Settings
from markroute.values import parse_argument, parse_mark

SETTINGS_KEYS = (
    "mark_mask", "rule_priority", "table_base", "rp_filter", "last_resort",
    "reply_via_ingress", "forwarding", "on_change", "ha", "exec", "connection_records",
    *dynamicsets.DNS_KEYS,
)


def read_settings(reader: Reader, node: Node | None) -> Settings:
    """The settings given, the defaults for the rest (and for every setting that is wrong)."""
    if node is None or not reader.kind(node, "map", "settings"):
        return Settings()
    reader.known_keys(node, SETTINGS_KEYS, "settings")
    values: dict[str, Any] = {}
    items = node.items
    if "mark_mask" in items:
        mask = reader.scalar(items["mark_mask"], "mark_mask", parse_mark)
        if mask is not None and not marks.is_contiguous(mask):
            reader.diag.error(
                items["mark_mask"].where,
                f"mark_mask {mask:#x} must be one run of set bits",
                "for example 0xff00 or 0x3f00",
            )
        elif mask is not None and marks.capacity(mask) < 3:
            reader.diag.error(items["mark_mask"].where, f"mark_mask {mask:#x} is too small",
                              "give it at least two bits")
        elif mask is not None:
            values["mark_mask"] = mask
            for message, hint in marks.mask_overlaps(mask):
                reader.diag.warning(items["mark_mask"].where, message, hint)
    if "rule_priority" in items:
        values["rule_priority"] = reader.integer(items["rule_priority"], "rule_priority", 1, 32700)
    if "table_base" in items:
        values["table_base"] = reader.integer(items["table_base"], "table_base", 1, 2**31)
    if "rp_filter" in items:
        values["rp_filter"] = reader.choice(items["rp_filter"], "rp_filter", ("loose", "strict", "off"))
    if "last_resort" in items:
        values["last_resort"] = reader.choice(items["last_resort"], "last_resort", SPECIAL_TARGETS)
    for key in ("reply_via_ingress", "forwarding", "exec", "connection_records"):
        if key in items:
            values[key] = reader.boolean(items[key], key)
    if "on_change" in items:
        values["on_change"] = reader.command(items["on_change"], "on_change")
    if "ha" in items:
        values["ha"] = read_ha_settings(reader, items["ha"])
    values.update(dynamicsets.dns_settings(reader, items))
    return Settings(**{k: v for k, v in values.items() if v is not None})


def read_ha_settings(reader: Reader, node: Node) -> HaSettings | None:
    """`ha: {}` or `ha: {conntrackd: /etc/conntrackd/conntrackd.conf}`."""
    if not reader.kind(node, "map", "ha"):
        return None
    reader.known_keys(node, ("conntrackd",), "ha")
    if "conntrackd" not in node.items:
        return HaSettings()
    path = reader.scalar(node.items["conntrackd"], "ha.conntrackd", parse_argument)
    if path is not None and not path.startswith("/"):
        reader.diag.error(node.items["conntrackd"].where, f"ha.conntrackd must be an absolute path, not '{path}'",
                          "conntrackd's config file, such as /etc/conntrackd/conntrackd.conf")
        return None
    return HaSettings(conntrackd=path)
