"""Problems found in a configuration, tied to the place in the file that caused them.

Every user mistake becomes a `Diagnostic` instead of an exception with a traceback, so
`check` can report all of them at once, in the `FILE:LINE:COL: severity: message` form
that editors and CI logs already know how to link.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Severity = Literal["error", "warning"]


@dataclass(frozen=True)
class Where:
    """A position in a source file; lines and columns count from 1 like compilers do."""

    file: str
    line: int
    col: int

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.col}"


@dataclass(frozen=True)
class Diagnostic:
    """One problem: where, how bad, what is wrong, and (when it helps) what to do about it."""

    where: Where
    severity: Severity
    message: str
    hint: str | None = None

    def render(self) -> str:
        text = f"{self.where}: {self.severity}: {self.message}"
        return f"{text} (hint: {self.hint})" if self.hint else text

    def to_json(self) -> dict[str, object]:
        return {
            "file": self.where.file,
            "line": self.where.line,
            "col": self.where.col,
            "severity": self.severity,
            "message": self.message,
            "hint": self.hint,
        }


class Diagnostics:
    """Collects problems while validation carries on, so one run reports them all."""

    def __init__(self) -> None:
        self.items: list[Diagnostic] = []

    def error(self, where: Where, message: str, hint: str | None = None) -> None:
        self.items.append(Diagnostic(where, "error", message, hint))

    def warning(self, where: Where, message: str, hint: str | None = None) -> None:
        self.items.append(Diagnostic(where, "warning", message, hint))

    @property
    def errors(self) -> list[Diagnostic]:
        return [d for d in self.items if d.severity == "error"]

    def sorted(self) -> list[Diagnostic]:
        return sorted(self.items, key=lambda d: (d.where.file, d.where.line, d.where.col))
