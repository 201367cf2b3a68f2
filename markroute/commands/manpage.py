"""`markroute manpage`: markroute(8) in troff, generated from the click commands themselves.

The installer (scripts/router-install) writes this output to the man directory at
install time, so the man page always lists the commands and options of the markroute
it was installed with: nothing is written by hand that could go stale. The command is
hidden: it serves the installer, not the router's operator.
"""

from __future__ import annotations

import inspect

import click

from markroute import __version__, exitcodes

PROG = "markroute"
SECTION = "8"

# What the click commands cannot say about themselves (paths and variables read
# by cliutil.config_option and kernel/ state).
FILES = [
    ("/etc/markroute/markroute.yaml", "The config, unless -c FILE or $MARKROUTE_CONFIG names another."),
    ("/run/markroute/", "What apply installed (per namespace under netns/NAME/): down and status read it."),
]
ENVIRONMENT = [("MARKROUTE_CONFIG", "The config file when -c is not given.")]
EXIT_STATUS = [
    (exitcodes.OK, "success"),
    (exitcodes.FAILED, "invalid config, or an operation that failed and was rolled back"),
    (exitcodes.USAGE, "wrong usage"),
    (exitcodes.DRIFT, "the kernel no longer matches the applied plan"),
    (exitcodes.ENVIRONMENT, "something missing around markroute: not root, no nft, no such namespace"),
    (exitcodes.NEIGHBOURS, "status: another program's rule drops, rejects or re-routes markroute's traffic"),
]


def escape(text: str) -> str:
    """Text safe inside a troff line: backslashes and hyphens literal, no line read as a request."""
    text = text.replace("\\", "\\e").replace("-", "\\-")
    return "\n".join("\\&" + line if line.startswith((".", "'")) else line for line in text.split("\n"))


def help_paragraphs(text: str) -> list[str]:
    """click help text as troff paragraphs; a paragraph starting with click's \\b marker keeps its lines."""
    out = []
    blocks = [block.strip("\n") for block in inspect.cleandoc(text).split("\n\n") if block.strip()]
    for block in blocks:
        if block.startswith("\b\n"):
            out += [".PP", ".nf", escape(block[2:]), ".fi"]
        else:
            out += [".PP", escape(" ".join(block.split()))]
    return out


def option_entries(command: click.Command, ctx: click.Context) -> list[str]:
    """One tagged paragraph per visible option, worded exactly as `--help` words it."""
    lines = []
    for param in command.get_params(ctx):
        if isinstance(param, click.Argument):  # shown in the synopsis; click gives arguments no help
            continue
        record = param.get_help_record(ctx)
        if record is None:
            continue
        names, help_text = record
        lines += [".TP", f"\\fB{escape(names)}\\fR", escape(help_text) if help_text else "\\&"]
    return lines


def synopsis(command: click.Command, ctx: click.Context, words: str) -> str:
    """`markroute check [OPTIONS]`-style usage, with the command's arguments."""
    pieces = [f"\\fB{escape(words)}\\fR", "[\\fIOPTIONS\\fR]"]
    pieces += [escape(p.make_metavar(ctx)) for p in command.get_params(ctx) if isinstance(p, click.Argument)]
    return " ".join(pieces)


def visible_subcommands(group: click.Group, ctx: click.Context) -> list[tuple[str, click.Command]]:
    found = []
    for name in group.list_commands(ctx):
        sub = group.get_command(ctx, name)
        if sub is not None and not sub.hidden:
            found.append((name, sub))
    return found


def command_section(command: click.Command, ctx: click.Context, words: str) -> list[str]:
    """One `.SS` section per command; a command group (`set`) is followed by one per subcommand
    (`set add`), so nothing reachable from the command line is missing from the page."""
    lines = [f'.SS "{escape(words)}"', synopsis(command, ctx, f"{PROG} {words}")]
    lines += help_paragraphs(command.help or command.get_short_help_str(limit=200))
    lines += option_entries(command, ctx)
    if isinstance(command, click.Group):
        for name, sub in visible_subcommands(command, ctx):
            lines += command_section(sub, click.Context(sub, info_name=name, parent=ctx), f"{words} {name}")
    return lines


def render(group: click.Group) -> str:
    """The whole man page for `group` (markroute's root command) as troff source."""
    ctx = click.Context(group, info_name=PROG)
    summary = group.get_short_help_str(limit=200).rstrip(".")
    lines = [
        f'.TH {PROG.upper()} {SECTION} "" "{PROG} {__version__}" "System Administration"',
        ".ad l",
        ".SH NAME",
        f"{PROG} \\- {escape(summary)}",
        ".SH SYNOPSIS",
        f"\\fB{PROG}\\fR [\\fIOPTIONS\\fR] \\fICOMMAND\\fR [\\fIARGS\\fR]...",
        ".SH DESCRIPTION",
        *help_paragraphs(group.help or ""),
        ".SH OPTIONS",
        *option_entries(group, ctx),
        ".SH COMMANDS",
    ]
    for name, sub in visible_subcommands(group, ctx):
        lines += command_section(sub, click.Context(sub, info_name=name, parent=ctx), name)
    lines.append(".SH EXIT STATUS")
    for code, meaning in EXIT_STATUS:
        lines += [".TP", f"\\fB{code}\\fR", escape(meaning)]
    lines.append(".SH ENVIRONMENT")
    for variable, meaning in ENVIRONMENT:
        lines += [".TP", f"\\fB{variable}\\fR", escape(meaning)]
    lines.append(".SH FILES")
    for path, meaning in FILES:
        lines += [".TP", f"\\fI{escape(path)}\\fR", escape(meaning)]
    lines += [".SH SEE ALSO", "\\fBnft\\fR(8), \\fBip\\-rule\\fR(8), \\fBsystemctl\\fR(1)"]
    return "\n".join(lines) + "\n"


@click.command("manpage", hidden=True)
@click.pass_context
def command(ctx: click.Context) -> None:
    """Print markroute(8) as troff, generated from these commands (the installer writes it)."""
    root = ctx.find_root().command
    assert isinstance(root, click.Group)
    click.echo(render(root), nl=False)
