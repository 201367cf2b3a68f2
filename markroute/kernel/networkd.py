"""Whether systemd-networkd would delete markroute's ip rules, read from its configuration.

networkd removes every routing policy rule it did not configure itself (all but
`proto kernel` ones) whenever it starts or reconfigures links, unless
`ManageForeignRoutingPolicyRules=no` is set in the [Network] section of
networkd.conf (default: yes). A `systemctl restart systemd-networkd` then takes all
of markroute's ip rules away: marked traffic falls through to main. `markroute run`
puts them back within a second, but a router without the daemon stays broken, so
`check --live` says which setting to add.

Files, as networkd.conf(5) orders them: the first of /etc/systemd/networkd.conf,
/run/systemd/, /usr/local/lib/systemd/, /usr/lib/systemd/; then every `*.conf` of the
`networkd.conf.d` directories of the same places, sorted by file name (a name in /etc
hides the same name in /run and /usr), later ones winning. `root` lets tests (and
`$MARKROUTE_ROOT`) point at a copy of those directories.
"""

from __future__ import annotations

import configparser
import os
from dataclasses import dataclass
from pathlib import Path

ROOT_VARIABLE = "MARKROUTE_ROOT"
PLACES = ("etc/systemd", "run/systemd", "usr/local/lib/systemd", "usr/lib/systemd")
KEY = "ManageForeignRoutingPolicyRules"
TRUE = {"1", "yes", "true", "on"}
FALSE = {"0", "no", "false", "off"}
ENABLED_UNIT = "systemd-networkd.service"
DROP_IN = "etc/systemd/networkd.conf.d/markroute.conf"


@dataclass(frozen=True)
class Setting:
    """The effective value and the file it came from (None: networkd's default, yes)."""

    manage_foreign_rules: bool
    source: str | None


def root() -> Path:
    return Path(os.environ.get(ROOT_VARIABLE) or "/")


def in_use(base: Path) -> bool:
    """networkd runs (its state directory exists) or is enabled at boot."""
    if (base / "run/systemd/netif/links").is_dir():
        return True
    wants = base / "etc/systemd/system"
    return wants.is_dir() and any(wants.glob(f"*.wants/{ENABLED_UNIT}"))


def files(base: Path) -> list[Path]:
    """networkd.conf and its drop-ins, in the order networkd reads them."""
    found: list[Path] = []
    main = next((base / place / "networkd.conf" for place in PLACES if (base / place / "networkd.conf").is_file()), None)
    if main is not None:
        found.append(main)
    drop_ins: dict[str, Path] = {}
    for place in reversed(PLACES):  # /etc last: its names hide the others
        directory = base / place / "networkd.conf.d"
        if directory.is_dir():
            for path in directory.glob("*.conf"):
                drop_ins[path.name] = path
    return found + [drop_ins[name] for name in sorted(drop_ins)]


def setting(base: Path) -> Setting:
    """The effective ManageForeignRoutingPolicyRules; unreadable files and bad values are skipped like networkd does."""
    value, source = True, None
    for path in files(base):
        parser = configparser.ConfigParser(strict=False, interpolation=None, comment_prefixes=("#", ";"))
        parser.optionxform = str  # type: ignore[assignment,method-assign]
        try:
            parser.read_string(path.read_text(errors="replace"), source=str(path))
        except (OSError, configparser.Error):
            continue
        if parser.has_option("Network", KEY):
            text = parser.get("Network", KEY).strip().lower()
            if text in TRUE | FALSE:
                value, source = text in TRUE, str(path)
    return Setting(value, source)


def warning(base: Path | None = None) -> tuple[str, str] | None:
    """(message, hint) when networkd is in use and would delete markroute's ip rules."""
    base = base or root()
    if not in_use(base):
        return None
    found = setting(base)
    if not found.manage_foreign_rules:
        return None
    where = f"({found.source})" if found.source else "(its default)"
    return (
        f"systemd-networkd manages foreign routing policy rules {where}: each time it starts or reconfigures a link "
        "it deletes markroute's ip rules, and marked traffic falls back to the main table",
        f"create /{DROP_IN} with `[Network]` and `{KEY}=no`, then `networkctl reload`; "
        "`markroute run` also restores the rules within a second",
    )
