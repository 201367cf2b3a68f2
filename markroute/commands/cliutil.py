"""Options and output helpers shared by the subcommands."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

import click

from markroute import exitcodes
from markroute.diagnostics import Diagnostic
from markroute.kernel import EnvironmentProblem, KernelError
from markroute.plan.nftjson import json_default

if TYPE_CHECKING:
    from markroute.model import Model

F = TypeVar("F", bound=Callable[..., Any])

EXIT_FAILED = exitcodes.FAILED
EXIT_USAGE = exitcodes.USAGE
EXIT_DRIFT = exitcodes.DRIFT
EXIT_ENVIRONMENT = exitcodes.ENVIRONMENT


def config_option(func: F) -> F:
    return click.option(
        "-c", "--config", "config", metavar="FILE", default=None,
        help="Config file (default: $MARKROUTE_CONFIG or /etc/markroute/markroute.yaml).",
    )(func)


def netns_option(func: F) -> F:
    return click.option("--netns", metavar="NAME", default=None, help="Run inside this network namespace.")(func)


def json_option(func: F) -> F:
    return click.option("--json", "as_json", is_flag=True, help="Print one JSON document instead of text.")(func)


def print_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=False, default=json_default))


def print_diagnostics(diagnostics: list[Diagnostic]) -> None:
    for diagnostic in diagnostics:
        click.echo(diagnostic.render(), err=True)


def fail(message: str, code: int = EXIT_FAILED) -> NoReturn:
    click.echo(f"markroute: {message}", err=True)
    sys.exit(code)


def load_model_or_exit(path: str, quiet_warnings: bool = False) -> Model:
    """The validated model, or the diagnostics on stderr and exit 1."""
    from markroute.config import load_model

    model, diagnostics = load_model(path)
    if model is None:
        print_diagnostics(diagnostics)
        sys.exit(EXIT_FAILED)
    if not quiet_warnings:
        print_diagnostics(diagnostics)
    return model


@contextmanager
def exit_codes() -> Iterator[None]:
    """Turn the kernel layer's exceptions into a message on stderr and markroute's exit codes."""
    try:
        yield
    except EnvironmentProblem as exc:
        fail(str(exc), EXIT_ENVIRONMENT)
    except KernelError as exc:
        fail(str(exc), EXIT_FAILED)
