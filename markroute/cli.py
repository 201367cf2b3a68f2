"""The `markroute` command: subcommands in the style of `ip`/`nft`/`systemctl`.

Each subcommand lives in its own module under `markroute.commands` and is imported only
when it runs, so `markroute --version` or `markroute check` never pay for pyroute2 or the
kernel layer.

Exit codes: 0 success; 1 the config is invalid or an operation failed (and was rolled
back); 2 wrong usage; 3 the kernel does not match the applied plan (drift); 4 the
environment is missing something (not root, no nft binary, no such namespace).
"""

from __future__ import annotations

import atexit
import gc
import importlib

import click

from markroute import __version__

COMMANDS = {
    "check": "Validate a config and explain every mistake.",
    "plan": "Print exactly what apply would install.",
    "apply": "Install the config in the kernel, or change nothing if it fails.",
    "down": "Remove everything markroute installed.",
    "status": "Show uplinks, counters, connections and drift.",
    "trace": "Simulate the path of one packet, step by step, offline or live.",
    "flows": "List live connections with their uplink and the policy that decided.",
    "explain": "Explain why a live connection uses its uplink, recorded and simulated.",
    "log": "Follow the packet log of `log:` policies and inbound drops, decoded.",
    "run": "Apply the config and keep it true: probe uplinks, fail over, expose state.",
    "ha": "keepalived's notify hook: take the VRRP role, hand connections over with conntrackd.",
    "demo": "Run markroute on a throwaway lab router with real traffic (namespaces only).",
    "set": "Add, remove or list the elements of a dynamic set.",
    "exec": "Run a command whose every connection goes through one uplink or group.",
    "manpage": "Print the markroute(8) man page (hidden: the installer writes it).",
}


# At exit the interpreter's last collection walks every object still alive (every
# imported module's functions and classes, and what the command built) only to find next
# to no cycles: ~15 ms of CPU of `apply`'s ~0.4 s at 100,000 prefixes (issue 15). Frozen
# objects are left out of it; the process ends right after, and memory goes with it.
atexit.register(gc.freeze)


class LazyGroup(click.Group):
    """A group that imports `markroute.commands.<name>` only for the command being run."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in COMMANDS:
            return None
        module = importlib.import_module(f"markroute.commands.{cmd_name}")
        command: click.Command = module.command
        return command


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="markroute")
def main() -> None:
    """Declarative, safe and observable policy routing with packet marks."""
