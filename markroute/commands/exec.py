"""`markroute exec TARGET -- COMMAND [ARGS]`: run COMMAND with every connection through one uplink or group.

Like mwan3's `use IFACE cmd`: whatever the policies say, new connections of the command
(and of its children) leave through TARGET, with its NAT. It works by running the
command with the socket group that `settings.exec: true` makes the output chain send to
TARGET (see `markroute.compile.execs`); the command keeps its user and its groups, now
as supplementary ones.
"""

from __future__ import annotations

import os

import click

from markroute.commands.cliutil import (
    EXIT_USAGE,
    config_option,
    config_path,
    exit_codes,
    fail,
    load_model_or_exit,
    netns_option,
)

TABLE = "markroute"


@click.command("exec", context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False})
@config_option
@netns_option
@click.argument("target")
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
def command(config: str | None, netns: str | None, target: str, command: tuple[str, ...]) -> None:
    """Run COMMAND so that each of its connections goes through uplink or group TARGET.

    The applied config needs `settings: {exec: true}`. Exit codes: COMMAND's own; 1 the
    config does not allow it; 2 unknown target; 4 not root, nft missing or no such namespace.
    """
    from markroute.compile import execs
    from markroute.kernel.environment import prepare
    from markroute.kernel.execgroups import pinned_gids

    model = load_model_or_exit(config_path(config), quiet_warnings=True)
    if target not in execs.targets(model):
        fail(f"no uplink or group '{target}' in the config (there are: {', '.join(execs.targets(model))})",
             EXIT_USAGE)
    if not model.settings.exec:
        fail("the config does not allow markroute exec: add 'exec: true' under 'settings:' and apply it")
    group = execs.gid(model, target)
    with exit_codes():
        prepare(netns)
        if group not in pinned_gids(TABLE):
            fail(f"the applied table does not know '{target}' for markroute exec: apply this config first")
    argv = list(command)
    if argv and argv[0] == "--":
        argv = argv[1:]
    if not argv:
        fail("give the command to run after TARGET, e.g. markroute exec isp_b -- curl https://example.net",
             EXIT_USAGE)
    own = os.getgid()
    os.setgroups(sorted(set(os.getgroups()) | {own}))
    os.setresgid(group, group, group)
    try:
        os.execvp(argv[0], argv)
    except OSError as exc:
        fail(f"cannot run {argv[0]}: {exc.strerror or exc}", 127)
