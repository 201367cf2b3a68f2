"""Entering a network namespace, for `--netns NAME` and for tests.

Switching the process itself (rather than running `ip netns exec` per call) means nft
subprocesses, pyroute2 sockets and /proc/sys/net all see the same namespace without
each caller having to pass it along. setns(2) moves only the calling thread, so this
must happen at command start, before any thread, socket or subprocess exists.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from markroute.kernel import EnvironmentProblem

NETNS_DIR = Path("/run/netns")
NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


def path(name: str) -> Path:
    """The bind mount `ip netns add NAME` creates; refuses names that could leave NETNS_DIR."""
    if not NAME.match(name) or name in (".", ".."):
        raise EnvironmentProblem(f"'{name}' is not a valid network namespace name")
    return NETNS_DIR / name


def enter(name: str) -> None:
    """Move this process into namespace NAME for the rest of its life."""
    from pyroute2 import netns as pyroute2_netns

    target = path(name)
    if not target.exists():
        raise EnvironmentProblem(f"network namespace '{name}' does not exist (see: ip netns list)")
    try:
        pyroute2_netns.setns(str(target), flags=0)
    except OSError as exc:
        raise EnvironmentProblem(f"cannot enter network namespace '{name}': {exc.strerror or exc}") from exc


def current() -> str | None:
    """The name of the namespace this process is in, if `ip netns` knows it (as `ip netns identify`).

    So `ip netns exec NAME markroute status` finds the state that
    `markroute apply --netns NAME` recorded.
    """
    here = os.stat("/proc/self/ns/net")
    try:
        entries = sorted(NETNS_DIR.iterdir())
    except FileNotFoundError:
        return None
    for entry in entries:
        try:
            there = entry.stat()
        except OSError:
            continue
        if (there.st_dev, there.st_ino) == (here.st_dev, here.st_ino):
            return entry.name
    return None


@contextmanager
def inside(name: str) -> Iterator[None]:
    """Run a block inside NAME and come back, for in-process callers such as tests."""
    from pyroute2 import netns as pyroute2_netns

    home = os.open("/proc/self/ns/net", os.O_RDONLY)
    try:
        enter(name)
        yield
    finally:
        try:
            pyroute2_netns.setns(home, flags=0)
        finally:
            os.close(home)
