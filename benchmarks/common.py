"""Shared pieces of the benchmark scripts: synthetic inputs and result reporting.

Benchmarks print a Markdown section and, with --write, replace that section in
BENCHMARKS.md, so every figure there comes with the command and machine that made it.
"""

from __future__ import annotations

import os
import platform
import random
import re
import statistics
import sys
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "BENCHMARKS.md"


def random_prefixes(count: int, seed: int = 1) -> list[str]:
    """Distinct IPv4 prefixes (/16 to /28) drawn from everywhere, like a real route feed."""
    rng = random.Random(seed)
    seen: set[str] = set()
    while len(seen) < count:
        length = rng.randint(16, 28)
        value = rng.getrandbits(32) & ~((1 << (32 - length)) - 1) & 0xFFFFFFFF
        seen.add(f"{value >> 24}.{(value >> 16) & 255}.{(value >> 8) & 255}.{value & 255}/{length}")
    return sorted(seen)


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
