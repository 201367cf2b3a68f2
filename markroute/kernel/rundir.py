"""Where markroute keeps a network namespace's records: one private directory under /run/markroute.

`/run/markroute` for the namespace markroute runs in, `/run/markroute/netns/NAME` under
`--netns NAME`. The records in it (`kernel.state`), the lock, the journal and the
daemon's control socket (`daemon.control`) all live here; this module is only the
directory, so a command that needs the place (the hand-over of `apply` to a running
daemon) does not import the records' machinery with it.

The directories steer what root's `down` writes, so they are private: created 0700
whatever the umask, reached level by level with O_NOFOLLOW (a planted symlink is never
followed), and one that markroute (root) does not own is refused rather than trusted.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from markroute.kernel import KernelError

RUN_DIR = Path("/run/markroute")
DIRECTORY_MODE = 0o700  # whatever the umask: the records steer what root's `down` writes


def directory(netns: str | None) -> Path:
    return RUN_DIR / "netns" / netns if netns else RUN_DIR


def secure_directory(netns: str | None) -> Path:
    """The namespace's directory, created 0700 whatever the umask; an unsafe one is an error.

    Each level is opened without following symlinks; a directory markroute (root) does
    not own, or that others may write to, is refused rather than trusted.
    """
    try:
        with directory_fd(netns, create=True):
            pass
    except OSError as exc:
        raise KernelError(f"cannot use {directory(netns)}: {exc.strerror or exc}") from exc
    return directory(netns)


@contextmanager
def directory_fd(netns: str | None, create: bool) -> Iterator[int]:
    """A descriptor of the namespace's directory, reached level by level with O_NOFOLLOW."""
    if netns is not None and ("/" in netns or "\0" in netns or netns in ("", ".", "..")):
        raise OSError(errno.EINVAL, f"'{netns[:80]}' cannot name a directory under {RUN_DIR / 'netns'}")
    parts = [RUN_DIR.name] + (["netns", netns] if netns else [])
    fd = os.open(RUN_DIR.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for part in parts:
            if create:
                with contextlib.suppress(FileExistsError):
                    os.mkdir(part, DIRECTORY_MODE, dir_fd=fd)
            child = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
            os.close(fd)
            fd = child
            if create:
                secured(fd, part)
        yield fd
    finally:
        os.close(fd)


def secured(fd: int, name: str) -> None:
    """Make a directory markroute owns 0700 (an older version or a lax umask made it wider)."""
    info = os.fstat(fd)
    if info.st_uid != os.geteuid():
        raise PermissionError(0, f"{name} belongs to uid {info.st_uid}, not to this user")
    if stat.S_IMODE(info.st_mode) != DIRECTORY_MODE:
        os.fchmod(fd, DIRECTORY_MODE)
