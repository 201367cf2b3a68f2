"""`markroute plan`: print exactly what `apply` would install, byte for byte the same each run."""

from __future__ import annotations

import click

from markroute.commands.cliutil import (
    config_option,
    config_path,
    load_model_or_exit,
    print_json,
    without_cycle_collector,
)


@click.command("plan")
@config_option
@click.option("--format", "fmt", type=click.Choice(["text", "nft", "json"]), default="text", show_default=True)
@without_cycle_collector
def command(config: str | None, fmt: str) -> None:
    """Compile the config and print the nftables table, ip rules, routes and sysctls."""
    from markroute.compile import compile_plan
    from markroute.plan import nfttext
    from markroute.plan.render import plan_text

    model = load_model_or_exit(config_path(config))
    plan = compile_plan(model)
    if fmt == "json":
        print_json(plan.to_json())
    elif fmt == "nft":
        click.echo(nfttext.render(plan.nft_document()), nl=False)
    else:
        click.echo(plan_text(plan), nl=False)
