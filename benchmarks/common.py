"""Shared pieces of the benchmark scripts: synthetic inputs and result reporting.

Benchmarks print a Markdown section and, with --write, replace that section in
BENCHMARKS.md, so every figure there comes with the command and machine that made it.
"""

from __future__ import annotations

import ipaddress
import os
import platform
import random
import re
import statistics
import subprocess
import sys
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "BENCHMARKS.md"

# Two uplinks, one policy sending a `sets:` file (big.txt beside the config) through one, a balance group.
BIG_SET_CONFIG = """\
uplinks:
  isp_a: {interface: wan0, gateway: 10.0.0.1, nat: masquerade}
  isp_b: {interface: wan1, gateway: 10.0.1.1, nat: masquerade}
sets:
  big: {file: big.txt}
groups:
  both:
    balance: {isp_a: 1, isp_b: 1}
policies:
  - {name: big-set, to: "@big", via: isp_b}
  - {name: rest, via: both}
"""


def random_prefixes(
    count: int, seed: int = 1, network: str = "0.0.0.0/0", lengths: tuple[int, int] = (16, 28)
) -> list[str]:
    """Distinct IPv4 prefixes (LENGTHS, at most as wide as NETWORK) drawn from NETWORK, like a route feed."""
    rng = random.Random(seed)
    base, width = ipaddress.ip_network(network).network_address, ipaddress.ip_network(network).prefixlen
    seen: set[str] = set()
    while len(seen) < count:
        length = rng.randint(max(lengths[0], width), lengths[1])
        value = (int(base) | rng.getrandbits(32 - width)) & ~((1 << (32 - length)) - 1) & 0xFFFFFFFF
        seen.add(f"{value >> 24}.{(value >> 16) & 255}.{(value >> 8) & 255}.{value & 255}/{length}")
    return sorted(seen)


def compile_bytecode() -> None:
    """markroute's bytecode compiled, as `pip install` leaves it: commands timed in a child
    process must not compile their modules on every run (which they would whenever
    PYTHONDONTWRITEBYTECODE is set)."""
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(ROOT / "markroute")], check=True,
                   stdout=subprocess.DEVNULL)


def machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores, Linux {platform.release()}, Python {platform.python_version()}"


def summary(samples: list[float]) -> str:
    """Median and spread of timings in seconds."""
    return (
        f"median {statistics.median(samples) * 1000:.1f} ms, "
        f"min {min(samples) * 1000:.1f} ms, max {max(samples) * 1000:.1f} ms, n={len(samples)}"
    )


def publish(section: str, body: str) -> None:
    """Print the section; with --write also store it in BENCHMARKS.md in place of the old one."""
    command = "python3 " + " ".join([os.path.relpath(sys.argv[0], ROOT), *sys.argv[1:]])
    text = f"## {section}\n\nCommand: `{command}`  \nMachine: {machine()}  \nDate: {date.today()}\n\n{body.strip()}\n"
    print(text)
    if "--write" not in sys.argv:
        return
    current = RESULTS.read_text() if RESULTS.exists() else "# Benchmarks\n\nFigures measured by the scripts in `benchmarks/`; each section names the command that produced it.\n"
    pattern = re.compile(rf"^## {re.escape(section)}\n.*?(?=^## |\Z)", re.S | re.M)
    if pattern.search(current):
        current = pattern.sub(lambda _: text + "\n", current)
    else:
        current = current.rstrip() + "\n\n" + text
    RESULTS.write_text(current.rstrip() + "\n")
