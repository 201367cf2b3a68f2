"""`markroute check`: validate a config and list every problem with its position.

Problems go to stderr, one line each (`FILE:LINE:COL: error: message (hint: ...)`), so
editors and CI logs can link them; the one-line summary of a valid config goes to
stdout. `--json` prints a single document on stdout instead, for tools.
"""

from __future__ import annotations

import sys

import click

from markroute.cliutil import EXIT_FAILED, config_option, json_option, print_diagnostics, print_json
from markroute.diagnostics import Diagnostic
from markroute.model import Model


def simulated(model: Model, diagnostics: list[Diagnostic]) -> list[Diagnostic]:
    """Add the trace interpreter's findings; only `check` pays for compiling and searching."""
    from markroute.analysis import simulated_warnings

    found = [Diagnostic(where, "warning", message, hint) for where, message, hint in simulated_warnings(model)]
    return sorted(diagnostics + found, key=lambda d: (d.where.file, d.where.line, d.where.col))


@click.command("check")
@config_option
@json_option
def command(config: str | None, as_json: bool) -> None:
    """Validate the config; exit 0 when it is valid, 1 with one line per problem."""
    from markroute.config import config_path, load_model

    path = config_path(config)
    model, diagnostics = load_model(path)
    if model is not None:
        diagnostics = simulated(model, diagnostics)
    errors = sum(d.severity == "error" for d in diagnostics)
    warnings = len(diagnostics) - errors
    if as_json:
        print_json({
            "file": path,
            "valid": model is not None,
            "errors": errors,
            "warnings": warnings,
            "diagnostics": [d.to_json() for d in diagnostics],
        })
    else:
        print_diagnostics(diagnostics)
        if model is not None:
            noted = f" ({warnings} warning{'s' if warnings != 1 else ''})" if warnings else ""
            click.echo(
                f"{path}: ok: {len(model.uplinks)} uplinks, {len(model.groups)} groups, "
                f"{len(model.policies)} policies{noted}"
            )
    if model is None:
        sys.exit(EXIT_FAILED)
