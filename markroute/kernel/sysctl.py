"""Reading and writing sysctls under /proc/sys of the current network namespace."""

from __future__ import annotations

from pathlib import Path

from markroute.kernel import KernelError

PROC_SYS = Path("/proc/sys")
PER_INTERFACE = ("net/ipv4/conf/", "net/ipv6/conf/", "net/ipv4/neigh/", "net/ipv6/neigh/")
SHARED = ("all", "default")


def interface_of(path: str) -> str | None:
    """The interface a per-interface key belongs to (`net/ipv4/conf/eth0/rp_filter` -> eth0)."""
    for prefix in PER_INTERFACE:
        if path.startswith(prefix):
            name = path[len(prefix):].split("/", 1)[0]
            return None if name in SHARED else name
    return None


def exists(path: str) -> bool:
    return (PROC_SYS / path).is_file()


def read(path: str) -> str:
    try:
        return (PROC_SYS / path).read_text().strip()
    except OSError as exc:
        raise KernelError(f"cannot read sysctl {path}: {exc.strerror}") from exc


def write(path: str, value: str) -> None:
    try:
        (PROC_SYS / path).write_text(f"{value}\n")
    except OSError as exc:
        raise KernelError(f"cannot set sysctl {path} to {value}: {exc.strerror}") from exc
