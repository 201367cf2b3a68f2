"""`markroute run`: the daemon that applies the config and keeps it true (markroute.daemon)."""

from __future__ import annotations

import os
import sys
from functools import partial

import click

from markroute.commands.cliutil import (
    config_option,
    config_path,
    exit_codes,
    load_model_or_exit,
    netns_option,
)


@click.command("run")
@config_option
@netns_option
@click.option("--metrics", metavar="HOST:PORT", default=None,
              help="Serve Prometheus metrics here, e.g. 127.0.0.1:9586 (default: off).")
@click.option("--down-on-exit", is_flag=True, help="Remove everything markroute installed when stopped.")
@click.option("-v", "--verbose", is_flag=True, help="Also log debug details.")
def command(config: str | None, netns: str | None, metrics: str | None, down_on_exit: bool, verbose: bool) -> None:
    """Apply the config, then probe every uplink and fail over in under a second.

    Each uplink is probed through itself only (`check:` in the config; by default its
    gateway, ten times a second). An uplink that stops answering, or whose link goes
    down, leaves every balance group and failover list in one nftables transaction, and
    only its own connections are moved; it is used again after enough answered probes.
    Flapping is damped. State changes go to stderr (journald-friendly) and run
    `settings.on_change`; `markroute status` and --metrics show the uplinks' state.

    SIGTERM/SIGINT stop it and leave the rules in place (unless --down-on-exit);
    SIGHUP reloads the config and applies the difference, and so does `markroute
    apply` of the same file (it asks the daemon, over /run/markroute's control socket).

    Exit codes: 0 stopped by a signal; 1 invalid config, or the first apply failed (and
    was rolled back); 2 wrong usage; 4 not root, nft missing, no such namespace, the
    metrics address cannot be used or another markroute run serves the namespace.
    """
    from markroute.config import load_model
    from markroute.config.sets import SetFiles
    from markroute.daemon.logs import setup
    from markroute.daemon.metrics import parse_address
    from markroute.daemon.service import Daemon, Options
    from markroute.kernel.environment import prepare

    try:
        address = parse_address(metrics) if metrics else None
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--metrics") from None
    path = config_path(config)
    load = partial(load_model, set_files=SetFiles())  # the daemon reads its config again on each reload
    model = load_model_or_exit(path, load=load)
    with exit_codes():
        netns = prepare(netns)
        options = Options(partial(load, path), os.path.abspath(path), netns, address, down_on_exit)
        code = Daemon(options, model, setup(verbose)).run()
    sys.exit(code)
