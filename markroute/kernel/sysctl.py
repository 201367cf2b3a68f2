"""Reading and writing sysctls under /proc/sys of the current network namespace.

Every path is checked before it is opened: the paths `down` writes come from a state
file, and a sysctl path must never lead out of /proc/sys/net (`../../etc/...`).
"""

from __future__ import annotations

import re
from pathlib import Path

from markroute.kernel import KernelError

PROC_SYS = Path("/proc/sys")
PER_INTERFACE = ("net/ipv4/conf/", "net/ipv6/conf/", "net/ipv4/neigh/", "net/ipv6/neigh/")
SHARED = ("all", "default")
_PART = re.compile(r"^[^/\x00\s]{1,64}$")  # an interface name or a key: never empty, no '/'


def valid_path(path: str) -> bool:
    """Whether PATH names a networking sysctl: `net/...`, parts without '/', '.' or '..'."""
    parts = path.split("/")
    return len(parts) >= 3 and parts[0] == "net" and all(_PART.match(p) and p not in (".", "..") for p in parts)


def _at(path: str) -> Path:
    if not valid_path(path):
        raise KernelError(f"refusing sysctl path '{path[:80]}': not a networking sysctl under {PROC_SYS}/net")
    return PROC_SYS / path


def interface_of(path: str) -> str | None:
    """The interface a per-interface key belongs to (`net/ipv4/conf/eth0/rp_filter` -> eth0)."""
    for prefix in PER_INTERFACE:
        if path.startswith(prefix):
            name = path[len(prefix):].split("/", 1)[0]
            return None if name in SHARED else name
    return None


def exists(path: str) -> bool:
    return _at(path).is_file()


def read(path: str) -> str:
    try:
        return _at(path).read_text().strip()
    except OSError as exc:
        raise KernelError(f"cannot read sysctl {path}: {exc.strerror}") from exc


def write(path: str, value: str) -> None:
    try:
        _at(path).write_text(f"{value}\n")
    except OSError as exc:
        raise KernelError(f"cannot set sysctl {path} to {value}: {exc.strerror}") from exc
