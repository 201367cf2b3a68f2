"""Entering a network namespace, for `--netns NAME` and for tests.

Switching the process itself (rather than running `ip netns exec` per call) means nft
subprocesses, netlink sockets and /proc/sys/net all see the same namespace without
each caller having to pass it along. setns(2) moves only the calling thread, so this
must happen at command start, before any thread, socket or subprocess exists.

setns(2) is called through ctypes, the way pyroute2's own `netns.setns` does it: apply
never imports pyroute2 (`kernel.rtnetlink` says why), and it starts loading set elements
into the kernel as early as it can (`markroute.kernel.apply`), which it can only do once
it is in the namespace. (Python 3.12's `os.setns` will make this a standard call.)
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from markroute.kernel import EnvironmentProblem

NETNS_DIR = Path("/run/netns")
CLONE_NEWNET = 0x40000000
NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


def path(name: str) -> Path:
    """The bind mount `ip netns add NAME` creates; refuses names that could leave NETNS_DIR."""
    if not NAME.match(name) or name in (".", ".."):
        raise EnvironmentProblem(f"'{name}' is not a valid network namespace name")
    return NETNS_DIR / name


def enter(name: str) -> None:
    """Move this process into namespace NAME for the rest of its life."""
    target = path(name)
    if not target.exists():
        raise EnvironmentProblem(f"network namespace '{name}' does not exist (see: ip netns list)")
    try:
        descriptor = os.open(target, os.O_RDONLY | os.O_CLOEXEC)
        try:
            _setns(descriptor)
        finally:
            os.close(descriptor)
    except OSError as exc:
        raise EnvironmentProblem(f"cannot enter network namespace '{name}': {exc.strerror or exc}") from exc


def _setns(descriptor: int) -> None:
    """setns(2) into the network namespace DESCRIPTOR refers to."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(descriptor, CLONE_NEWNET) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))


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
    home = os.open("/proc/self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        enter(name)
        yield
    finally:
        try:
            _setns(home)
        finally:
            os.close(home)
