"""`markroute set add|del|list NAME ...`: the elements of a dynamic set, by hand or from a script.

Elements of a set declared `dynamic: true` (or `domains:`) belong to whoever adds them:
apply, `markroute run`, SIGHUP and rollbacks keep them, and status does not call them
drift. This is the same as `nft add element inet markroute NAME_v4 {...}`, with the
family picked from each address and the set checked to be a dynamic one.
"""

from __future__ import annotations

import click

from markroute.commands.cliutil import exit_codes, fail, netns_option, print_json
from markroute.values import parse_address, parse_duration

TABLE = "markroute"


def parsed(addresses: tuple[str, ...]) -> list[tuple[int, tuple[int, int]]]:
    found = []
    for text in addresses:
        try:
            found.append(parse_address(text))
        except ValueError as exc:
            fail(f"{text}: {exc}", 2)
    return found


@click.group("set")
def command() -> None:
    """Add, remove or list the elements of a dynamic set (`sets: NAME: {dynamic: true}`)."""


@command.command("add")
@click.argument("name")
@click.argument("addresses", nargs=-1, required=True)
@click.option("--timeout", metavar="DURATION", default=None,
              help="Lifetime of these elements (3600, 90s, 30m, 6h, 1d); default: the set's timeout.")
@netns_option
def add(name: str, addresses: tuple[str, ...], timeout: str | None, netns: str | None) -> None:
    """Add ADDRESSES (addresses, prefixes or ranges) to dynamic set NAME; adding one again renews its lifetime."""
    from markroute.kernel import dynsets
    from markroute.kernel.environment import prepare

    seconds = None
    if timeout is not None:
        try:
            seconds = parse_duration(timeout)
        except ValueError as exc:
            fail(f"--timeout: {exc}", 2)
    elements = parsed(addresses)
    with exit_codes():
        prepare(netns)
        dynsets.change(TABLE, name, elements, seconds, remove=False)


@command.command("del")
@click.argument("name")
@click.argument("addresses", nargs=-1, required=True)
@netns_option
def delete(name: str, addresses: tuple[str, ...], netns: str | None) -> None:
    """Remove ADDRESSES from dynamic set NAME."""
    from markroute.kernel import dynsets
    from markroute.kernel.environment import prepare

    elements = parsed(addresses)
    with exit_codes():
        prepare(netns)
        dynsets.change(TABLE, name, elements, None, remove=True)


@command.command("list")
@click.argument("name")
@netns_option
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document instead of text.")
def listing(name: str, netns: str | None, as_json: bool) -> None:
    """The elements of dynamic set NAME with the seconds each has left."""
    from markroute.kernel import dynsets
    from markroute.kernel.environment import prepare

    with exit_codes():
        prepare(netns)
        names = dynsets.kernel_sets(TABLE, name)
        live = dynsets.live(TABLE)
    rows = [dynsets.described(element) for set_name in names.values() for element in live[set_name].elements]
    if as_json:
        print_json([{"element": element, "expires": expires} for element, expires in rows])
        return
    for element, expires in rows:
        click.echo(element if expires is None else f"{element} expires {expires}s")
