"""Domain sets filled by dnsmasq: the `nftset=` lines markroute writes for it (`settings.dns: dnsmasq`).

dnsmasq adds every address it forwards for a listed name (and the names below it) to
the named nftables sets, IPv4 and IPv6 answers each to its own half (`NAME_v4`,
`NAME_v6`); an element added again renews its lifetime, so a name clients keep
resolving keeps its addresses. dnsmasq 2.90 reads `nftset=` only when it starts, not on
SIGHUP, so when the file's content changes markroute runs `dnsmasq_restart` (an argv,
no shell, e.g. `[systemctl, restart, dnsmasq]`); without one it says that dnsmasq must
be restarted. The file is written only when its content changes, atomically (a
temporary file renamed over it), so an unchanged config never restarts dnsmasq.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from markroute.compile.namedsets import dynamic_set_name
from markroute.model import Model

TABLE = "markroute"
RESTART_TIMEOUT = 30.0


@dataclass
class Sync:
    """What `sync` did: messages for the user (or the daemon's log), problems as warnings."""

    changes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def conf_text(model: Model) -> str:
    """The dnsmasq config fragment: one `nftset=` line per domain set, in the config's order."""
    lines = ["# written by markroute: the nftset= lines of its domain sets; do not edit"]
    for name, dynamic in model.dynamic_sets.items():
        if not dynamic.domains:
            continue
        targets = ",".join(f"{version}#inet#{TABLE}#{dynamic_set_name(name, version)}" for version in (4, 6))
        lines.append(f"nftset=/{'/'.join(dynamic.domains)}/{targets}")
    return "\n".join(lines) + "\n"


def sync(model: Model) -> Sync:
    """Bring `dnsmasq_conf` to the model's domain sets; restart dnsmasq if it changed."""
    done = Sync()
    settings = model.settings
    if settings.dns != "dnsmasq" or settings.dnsmasq_conf is None:
        return done
    path = Path(settings.dnsmasq_conf)
    text = conf_text(model)
    try:
        if path.exists() and path.read_text() == text:
            return done
        write(path, text)
    except OSError as exc:
        done.warnings.append(f"cannot write {path} for dnsmasq: {exc.strerror or exc}")
        return done
    done.changes.append(f"dnsmasq: {path} written")
    if not settings.dnsmasq_restart:
        done.warnings.append(f"dnsmasq reads {path} only when it starts: restart it (or set dnsmasq_restart)")
        return done
    try:
        result = subprocess.run(list(settings.dnsmasq_restart), stdin=subprocess.DEVNULL, capture_output=True,
                                text=True, timeout=RESTART_TIMEOUT, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        done.warnings.append(f"dnsmasq_restart {settings.dnsmasq_restart[0]} failed: {exc}")
        return done
    if result.returncode != 0:
        detail = result.stderr.strip() or f"exit status {result.returncode}"
        done.warnings.append(f"dnsmasq_restart {settings.dnsmasq_restart[0]} failed: {detail}")
    else:
        done.changes.append(f"dnsmasq: restarted ({' '.join(settings.dnsmasq_restart)})")
    return done


def write(path: Path, text: str) -> None:
    """Replace PATH with TEXT atomically: dnsmasq starting meanwhile reads the old file or the new one."""
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(handle, "w") as out:
            out.write(text)
        os.chmod(temporary, 0o644)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
