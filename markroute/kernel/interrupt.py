"""Signals while a command changes the kernel: noted at once, obeyed between two steps.

A signal that interrupted `apply` in the middle of a netlink call or an nft batch
would leave nobody knowing whether that step happened. So while a command runs
(`noted`), SIGINT, SIGTERM and SIGHUP are only noted; `check`, called by a transaction
between its steps (`point`), turns a noted signal into `Interrupted`, and the
transaction rolls back (`apply`) or, once past the point of no return, completes
(`down`, and apply's commit). The daemon never calls `noted`: it handles its own
signals, so `check` never interrupts an apply it runs.

Test hook: with MARKROUTE_FAULT=N:SIGNAL in the environment, `point` prints each
point to stderr and sends the process SIGNAL at the Nth, so a test can interrupt a
transaction at any point, with SIGKILL too (`tests/test_transactions.py`).
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

from markroute.kernel import KernelError

SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
FAULT_VARIABLE = "MARKROUTE_FAULT"

_received: list[int] = []
_points = 0


class Interrupted(KernelError):
    """A signal asked the command to stop; nothing after the last completed step was done."""

    def __init__(self, number: int) -> None:
        self.signal = number
        super().__init__(f"interrupted by {signal_name(number)}")


def signal_name(number: int) -> str:
    return signal.Signals(number).name


@contextmanager
def noted() -> Iterator[None]:
    """While the body runs, SIGINT, SIGTERM and SIGHUP are noted instead of ending the process."""
    previous = {number: signal.signal(number, _note) for number in SIGNALS}
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


def _note(number: int, frame: FrameType | None) -> None:
    _received.append(number)


def received() -> int | None:
    """The first signal noted, if any."""
    return _received[0] if _received else None


def check() -> None:
    """Raise `Interrupted` if a signal was noted."""
    if _received:
        raise Interrupted(_received[0])


def point(label: str) -> None:
    """A point between two steps of a transaction: the test hook's place, then `check`."""
    fault_point(label)
    check()


def fault_point(label: str) -> None:
    """Only the test hook: a point past which the transaction completes whatever comes."""
    global _points
    spec = os.environ.get(FAULT_VARIABLE)
    if not spec:
        return
    _points += 1
    at, _, name = spec.partition(":")
    print(f"markroute: fault point {_points}: {label}", file=sys.stderr, flush=True)
    if int(at) == _points:
        os.kill(os.getpid(), signal.Signals[f"SIG{name}"])
