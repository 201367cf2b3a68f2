"""An undo log: every completed step of a change registers how to take it back.

Netlink has no transactions, so `apply` makes its own: on failure the steps done so
far are undone newest first, and each undo that fails is reported rather than stopping
the others.
"""

from __future__ import annotations

from collections.abc import Callable

from markroute.kernel import KernelError


class Journal:
    def __init__(self) -> None:
        self._undo: list[tuple[str, Callable[[], None]]] = []

    def done(self, undo_what: str, undo: Callable[[], None]) -> None:
        self._undo.append((undo_what, undo))

    def rollback(self) -> list[str]:
        """Undo everything, newest first; the messages of the undos that failed."""
        problems: list[str] = []
        while self._undo:
            what, undo = self._undo.pop()
            try:
                undo()
            except KernelError as exc:
                problems.append(f"{what}: {exc}")
        return problems
