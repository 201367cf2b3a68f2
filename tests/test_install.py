"""scripts/router-install: markroute as a system service, installed into a throw-away root.

Nothing here changes this machine's own files: most tests install into a temporary
directory through `--root`, seeded with what a clean Debian root has that the unit refers
to (systemd's own units, /bin/kill); there they check the exact set of files an install
adds, that systemd accepts the unit (`systemd-analyze verify`, its security review,
`systemctl --root is-enabled`), that the man page lists every command and option of the
click CLI, that the installed completion scripts complete, that a failed upgrade changes
nothing, that an upgrade keeps the config byte for byte and that uninstall removes all
but the config. The router-mode test runs the installer without --root, as on a router,
in a private mount namespace whose /opt, /usr/local, /etc and /run are overlays (writes
land in the test's directory) and a private network namespace: the installed command
applies a config there, and `--uninstall --purge` must run `markroute down` and leave
nothing behind.

Needs root (the installer refuses without it), Debian's systemd (systemd-analyze,
systemctl), man-db and groff; in CI they must be there, so nothing is skipped there.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import click
import pytest
from kernelhelp import REPO

from markroute import exitcodes
from markroute.cli import main as cli

INSTALLER = REPO / "scripts/router-install"
UNIT = "markroute.service"
# What an install adds outside /opt/markroute, besides the directories leading to them.
INSTALLED = {
    "usr/local/sbin/markroute",
    "usr/local/lib/systemd/system/markroute.service",
    "etc/systemd/system/multi-user.target.wants/markroute.service",
    "usr/local/share/man/man8/markroute.8",
    "usr/local/share/bash-completion/completions/markroute",
    "usr/local/share/zsh/site-functions/_markroute",
    "usr/local/share/fish/vendor_completions.d/markroute.fish",
    "etc/markroute/markroute.yaml",
}
VENV = "opt/markroute"

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 and os.environ.get("CI") != "true", reason="the installer needs root (always runs in CI)"
)

Snapshot = dict[str, str]


def snapshot(root: Path) -> Snapshot:
    """Every path under root -> what it is: 'dir', 'link:TARGET' or 'file:MODE:SHA256'."""
    found = {}
    for path in root.rglob("*"):
        relative = str(path.relative_to(root))
        if path.is_symlink():
            found[relative] = f"link:{os.readlink(path)}"
        elif path.is_dir():
            found[relative] = "dir"
        else:
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
            found[relative] = f"file:{path.stat().st_mode & 0o7777:o}:{digest}"
    return found


def differences(got: Snapshot, expected: Snapshot) -> dict[str, tuple[str | None, str | None]]:
    """Only the paths that differ (got, expected): readable failures instead of two 300-path dicts."""
    return {path: (got.get(path), expected.get(path)) for path in set(got) | set(expected)
            if got.get(path) != expected.get(path)}


def with_parents(paths: set[str]) -> set[str]:
    return paths | {str(parent) for path in paths for parent in Path(path).parents if str(parent) != "."}


def clean_root(root: Path) -> None:
    """What a clean Debian root has that the unit needs: systemd's units (targets), /etc/systemd and /bin/kill."""
    (root / "etc/systemd/system").mkdir(parents=True)
    shutil.copytree("/usr/lib/systemd/system", root / "usr/lib/systemd/system", symlinks=True)
    (root / "usr/bin").mkdir(parents=True, exist_ok=True)
    shutil.copy2("/usr/bin/kill", root / "usr/bin/kill")
    (root / "bin").symlink_to("usr/bin")


def router_install(root: Path, *args: str, expect: int = 0) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([str(INSTALLER), "--root", str(root), *args], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == expect, result.stdout + result.stderr
    return result


def installed_markroute(root: Path, *args: str, env: dict[str, str] | None = None) -> str:
    """Run the installed markroute (its python directly: the shebang names /opt, not the temp root)."""
    venv = root / VENV
    result = subprocess.run([str(venv / "bin/python"), str(venv / "bin/markroute"), *args], capture_output=True,
                            text=True, env={**os.environ, **(env or {})}, timeout=60, check=True)
    return result.stdout


@dataclass
class Installation:
    root: Path
    before: Snapshot  # the root before the install


@pytest.fixture(scope="module")
def installation(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Installation]:
    """A throw-away clean root, snapshotted, then one install into it (shared: installing takes seconds)."""
    directory = tmp_path_factory.mktemp("router-root")
    clean_root(directory)
    before = snapshot(directory)
    router_install(directory)
    yield Installation(directory, before)
    shutil.rmtree(directory)


@pytest.fixture(scope="module")
def root(installation: Installation) -> Path:
    return installation.root


@pytest.fixture(scope="module")
def before(installation: Installation) -> Snapshot:
    return installation.before


def test_install_adds_exactly_the_expected_files(root: Path, before: Snapshot) -> None:
    after = snapshot(root)
    assert {path: after.get(path) for path in before} == before, "the install changed something it does not own"
    added = set(after) - set(before)
    outside_venv = {path for path in added if path != VENV and not path.startswith(VENV + "/")}
    assert outside_venv == with_parents(INSTALLED | {VENV}) - set(before) - {VENV}
    assert after["usr/local/sbin/markroute"] == "link:/opt/markroute/bin/markroute"
    assert after[f"etc/systemd/system/multi-user.target.wants/{UNIT}"] == f"link:/usr/local/lib/systemd/system/{UNIT}"
    assert (root / "etc/markroute/markroute.yaml").read_bytes() == (REPO / "contrib/markroute.yaml").read_bytes()
    assert (root / f"usr/local/lib/systemd/system/{UNIT}").read_bytes() == (REPO / "contrib" / UNIT).read_bytes()
    manifest = json.loads((root / VENV / "install-manifest.json").read_text())
    assert {path.lstrip("/") for path in manifest["files"]} == INSTALLED - {"etc/markroute/markroute.yaml"}
    assert manifest["config_created"] is True
    assert not (root / "opt/markroute.new").exists() and not (root / "opt/markroute.old").exists()


def test_environment_is_relocated_to_opt(root: Path) -> None:
    """Nothing installed names the temporary root: shebangs, pyvenv.cfg and .pyc paths say /opt/markroute."""
    mentions = [str(path) for path in root.rglob("*")
                if path.is_file() and not path.is_symlink() and str(root).encode() in path.read_bytes()]
    assert mentions == []
    assert (root / VENV / "bin/markroute").read_text().splitlines()[0] in {"#!/opt/markroute/bin/python", "#!/opt/markroute/bin/python3"}
    assert os.readlink(root / VENV / "bin/python3") == "/usr/bin/python3"  # Debian's python, not a developer's
    out = installed_markroute(root, "check", "-c", str(REPO / "examples/000-destination-via-isp-a.yaml"))
    assert "ok: 2 uplinks" in out


def test_systemd_verifies_the_installed_unit(root: Path) -> None:
    """systemd-analyze loads the unit as systemd would in that root: directives, ExecStart paths, man page."""
    verify = subprocess.run(["systemd-analyze", "verify", f"--root={root}", UNIT], capture_output=True, text=True,
                            env={**os.environ, "MANPATH": str(root / "usr/local/share/man")}, timeout=60)
    assert (verify.returncode, verify.stdout + verify.stderr) == (0, "")
    enabled = subprocess.run(["systemctl", f"--root={root}", "is-enabled", UNIT], capture_output=True, text=True)
    assert enabled.stdout.strip() == "enabled"


def test_unit_keeps_its_promises(root: Path) -> None:
    """Ordering, check before start, reload by SIGHUP, a start limit, and hardening systemd rates."""
    show = subprocess.run(["systemd-analyze", "security", "--offline=yes", "--threshold=60", f"--root={root}", UNIT],
                          capture_output=True, text=True, timeout=60)
    assert show.returncode == 0, show.stdout[-400:] + show.stderr  # exposure above 6.0: hardening was lost
    unit = (root / f"usr/local/lib/systemd/system/{UNIT}").read_text()
    for line in ["Wants=network-online.target", "After=network-online.target nftables.service",
                 "ExecStartPre=/opt/markroute/bin/markroute check -c /etc/markroute/markroute.yaml",
                 "ExecStart=/opt/markroute/bin/markroute run -c /etc/markroute/markroute.yaml",
                 "ExecReload=/bin/kill -HUP $MAINPID", "Restart=on-failure", "StartLimitBurst=5",
                 "StartLimitIntervalSec=60s", "CapabilityBoundingSet=CAP_NET_ADMIN CAP_NET_RAW"]:
        assert line in unit.splitlines(), line


def rendered_man_page(root: Path) -> str:
    """The installed page as a reader sees it (no hyphenation, very long lines, no formatting)."""
    groff = subprocess.run(["groff", "-man", "-Tutf8", "-rHY=0", "-rLL=2000n", "-P-cbou", "-ww",
                            str(root / "usr/local/share/man/man8/markroute.8")], capture_output=True, text=True,
                           check=True, timeout=60)
    assert groff.stderr == ""  # no troff warnings: escaping is right
    return groff.stdout


def visible_commands(group: click.Group = cli, words: str = "") -> list[tuple[str, click.Command]]:
    """Every command a user can type, depth first: `set`, then `set add`, `set del`, ..."""
    ctx = click.Context(group, info_name="markroute")
    found: list[tuple[str, click.Command]] = []
    for name in group.list_commands(ctx):
        command = group.get_command(ctx, name)
        if command is None or command.hidden:
            continue
        found.append((words + name, command))
        if isinstance(command, click.Group):
            found += visible_commands(command, f"{words}{name} ")
    return found


def test_man_page_lists_every_command_and_option(root: Path) -> None:
    page = rendered_man_page(root)
    sections = re.split(r"\n {3}(?=\S)", page.split("\nCOMMANDS\n", 1)[1].split("\nEXIT STATUS\n", 1)[0])
    by_command = {section.split("\n", 1)[0].strip(): section for section in sections if section.strip()}
    assert list(by_command) == [name for name, _ in visible_commands()]
    assert "set add" in by_command  # a command group's subcommands have sections of their own
    assert "manpage" not in by_command
    for name, command in visible_commands():
        assert f"markroute {name} [OPTIONS]" in by_command[name]
        for param in command.params:
            # an argument appears in the synopsis as click shows it in usage (`TARGET`, `{a|b}`), an option by its flags
            names = ([param.make_metavar(click.Context(command)).rstrip(".")] if isinstance(param, click.Argument)
                     else param.opts + param.secondary_opts)
            for option in names:
                assert re.search(rf"(?<![\w-]){re.escape(option)}(?![\w-])", by_command[name]), (name, option)
        if command.help:
            assert " ".join(command.help.split("\n\n")[0].split()) in " ".join(by_command[name].split())
    assert "--version" in page.split("\nCOMMANDS\n", 1)[0]
    exit_status = page.split("\nEXIT STATUS\n", 1)[1].split("\nENVIRONMENT\n", 1)[0]
    codes = {int(value) for name, value in vars(exitcodes).items() if name.isupper()}
    assert codes == {int(line.split()[0]) for line in exit_status.splitlines() if line.strip()[:1].isdigit()}
    assert installed_markroute(root, "manpage") == (root / "usr/local/share/man/man8/markroute.8").read_text()


def shim(root: Path, directory: Path) -> str:
    """A PATH with `markroute` running the installed copy (whose shebang names /opt, not the temp root)."""
    directory.mkdir(exist_ok=True)
    script = directory / "markroute"
    script.write_text(f'#!/bin/sh\nexec "{root / VENV}/bin/python" "{root / VENV}/bin/markroute" "$@"\n')
    script.chmod(0o755)
    return f"{directory}:{os.environ['PATH']}"


def test_bash_completion_completes_subcommands_and_options(root: Path, tmp_path: Path) -> None:
    script = root / "usr/local/share/bash-completion/completions/markroute"
    path = shim(root, tmp_path / "bin")

    def complete(*words: str) -> list[str]:
        program = (f'source "{script}"; complete -p markroute >&2; COMP_WORDS=({" ".join(words)}); '
                   f'COMP_CWORD={len(words) - 1}; _markroute_completion markroute "{words[-1]}"; '
                   'printf "%s\\n" "${COMPREPLY[@]}"')
        result = subprocess.run(["bash", "--norc", "--noprofile", "-c", program], capture_output=True, text=True,
                                env={**os.environ, "PATH": path}, timeout=60, check=True)
        assert "-F _markroute_completion markroute" in result.stderr
        return result.stdout.split()

    assert complete("markroute", "ch") == ["check"]
    assert complete("markroute", "trace", "--fr") == ["--from"]
    assert "manpage" not in complete("markroute", "")


def test_zsh_and_fish_scripts_use_the_protocol_that_completes(root: Path) -> None:
    """zsh and fish are not installed here: check each script is where that shell looks, calls
    markroute with its own completion mode, and that the mode completes a subcommand."""
    zsh = (root / "usr/local/share/zsh/site-functions/_markroute").read_text()
    fish = (root / "usr/local/share/fish/vendor_completions.d/markroute.fish").read_text()
    assert zsh.startswith("#compdef markroute\n") and "_MARKROUTE_COMPLETE=zsh_complete markroute" in zsh
    assert "_MARKROUTE_COMPLETE=fish_complete" in fish and "complete --no-files --command markroute" in fish
    zsh_answer = installed_markroute(root, env={"_MARKROUTE_COMPLETE": "zsh_complete", "COMP_WORDS": "markroute ch",
                                                "COMP_CWORD": "1"})
    assert zsh_answer.splitlines()[:2] == ["plain", "check"]
    fish_answer = installed_markroute(root, env={"_MARKROUTE_COMPLETE": "fish_complete",
                                                 "COMP_WORDS": "markroute trace --fr", "COMP_CWORD": "--fr"})
    assert fish_answer.split("\t")[0] == "plain,--from"


def test_example_config_is_refused_until_uncommented(root: Path, tmp_path: Path) -> None:
    """Installing changes nothing on the router: the example fails `check` (so the enabled unit does not
    start) until uncommented, and then it is a valid config."""
    example = root / "etc/markroute/markroute.yaml"
    refused = subprocess.run([str(root / VENV / "bin/python"), str(root / VENV / "bin/markroute"), "check", "-c",
                              str(example)], capture_output=True, text=True, timeout=60)
    assert refused.returncode == 1 and "the config is empty" in refused.stderr
    lines = example.read_text().splitlines()
    start = lines.index("# uplinks:                       # every way out: an interface plus (usually) a gateway")
    uncommented = tmp_path / "uncommented.yaml"
    uncommented.write_text("\n".join(line.removeprefix("# ") for line in lines[start:]) + "\n")
    assert "ok: 2 uplinks, 2 groups, 3 policies" in installed_markroute(root, "check", "-c", str(uncommented))


def test_install_refuses_to_overwrite_what_it_did_not_install(tmp_path: Path) -> None:
    (tmp_path / "usr/local/sbin").mkdir(parents=True)
    (tmp_path / "usr/local/sbin/markroute").write_text("#!/bin/sh\n# someone else's\n")
    before = snapshot(tmp_path)
    result = router_install(tmp_path, expect=1)
    assert "was not installed by router-install" in result.stderr
    assert differences(snapshot(tmp_path), before) == {}


def test_failed_upgrade_leaves_the_installed_markroute_untouched(root: Path) -> None:
    """The new environment is built beside the old one: when building fails, nothing changes."""
    installed = snapshot(root)
    failed = subprocess.run([str(INSTALLER), "--root", str(root)], capture_output=True, text=True, timeout=300,
                            env={**os.environ, "PIP_NO_INDEX": "1", "PIP_FIND_LINKS": str(root / "no-wheels")})
    assert failed.returncode == 1 and "pip install" in failed.stderr
    assert differences(snapshot(root), installed) == {}


def test_upgrade_keeps_config_and_uninstall_removes_everything(root: Path, before: Snapshot) -> None:
    """Runs last with this root: it upgrades and uninstalls (--purge: the router-mode test)."""
    config = root / "etc/markroute/markroute.yaml"
    mine = b"# my router\nuplinks: {wan: {interface: eth9, gateway: 192.0.2.1}}\n"
    config.write_bytes(mine)
    installed = snapshot(root)
    python_inode = (root / VENV / "bin/markroute").stat().st_ino

    upgrade = router_install(root)
    assert "upgraded to markroute" in upgrade.stdout
    assert config.read_bytes() == mine
    upgraded = snapshot(root)
    outside = {path: kind for path, kind in upgraded.items() if not path.startswith(VENV + "/")}
    assert outside == {path: kind for path, kind in installed.items() if not path.startswith(VENV + "/")}
    assert (root / VENV / "bin/markroute").stat().st_ino != python_inode  # a new environment, swapped in
    assert not (root / "opt/markroute.new").exists() and not (root / "opt/markroute.old").exists()

    removed = router_install(root, "--uninstall")
    assert "not running `markroute down`" in removed.stdout
    assert "kept your config" in removed.stdout
    kept = {path: "dir" for path in with_parents({"etc/markroute"})}
    kept["etc/markroute/markroute.yaml"] = installed["etc/markroute/markroute.yaml"]
    assert differences(snapshot(root), before | kept) == {}
    router_install(root, "--uninstall", expect=1)  # nothing left to uninstall: says so


# Runs the installer without --root, as on a router, in a private mount namespace where
# /opt, /usr/local, /etc and /run are overlays whose writes land in the test's directory
# (this machine's own files never change), and with /run/systemd hidden so the installer
# takes the "systemd not running" path instead of talking to this machine's systemd.
OVERLAY = """
set -eu
base=$1; shift
mount --make-rprivate /
for dir in opt usr/local etc run; do
    name=$(echo "$dir" | tr / _)
    mkdir -p "$base/$name/upper" "$base/$name/work"
    mount -t overlay overlay -o "lowerdir=/$dir,upperdir=$base/$name/upper,workdir=$base/$name/work" "/$dir"
    [ "$(findmnt -n -o FSTYPE "/$dir")" = overlay ] || { echo "/$dir is not an overlay" >&2; exit 99; }
done
if [ -d /run/systemd ]; then mount -t tmpfs tmpfs /run/systemd; fi
exec "$@"
"""

# Inside a fresh network namespace as well: apply a config with the installed command,
# then uninstall, which must run `markroute down` and so remove what apply installed.
APPLY_THEN_UNINSTALL = """
set -eux
ip link set lo up
ip link add mr0 type veth peer name mr1
ip addr add 192.0.2.2/24 dev mr0
ip link set mr0 up
ip link set mr1 up
printf 'uplinks:\\n  wan: {interface: mr0, gateway: 192.0.2.1}\\npolicies:\\n  - {name: all, via: wan}\\n' \
    > /etc/markroute/markroute.yaml
markroute apply
nft list table inet markroute > /dev/null
systemd-analyze verify markroute.service
man -w markroute
"$1" --uninstall --purge
if nft list table inet markroute > /dev/null 2>&1; then echo "down did not run" >&2; exit 98; fi
ip rule list
"""


def in_private_root(base: Path, argv: list[str], *, net: bool) -> subprocess.CompletedProcess[str]:
    unshare = ["unshare", "--mount", *(["--net"] if net else []), "sh", "-c", OVERLAY, "overlay", str(base)]
    return subprocess.run([*unshare, *argv], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PATH": f"/usr/local/sbin:{os.environ['PATH']}"})


def overlay_files(base: Path) -> set[str]:
    """What the installs left in the overlays' upper layers, as paths of the real system.

    A directory there that this machine has too is only overlayfs's copy of it (made when a
    file inside was written); one this machine does not have was created by the install."""
    left = set()
    for layer in base.iterdir():
        upper = layer / "upper"
        mount_point = "/" + layer.name.replace("_", "/")
        for path in upper.rglob("*"):
            real = f"{mount_point}/{path.relative_to(upper)}"
            if path.is_symlink() or not path.is_dir() or not Path(real).exists():
                left.add(real)
    return left


@pytest.mark.kernel
def test_router_mode_install_runs_down_on_uninstall(tmp_path: Path) -> None:
    """Without --root: the PATH command works, the unit verifies against the real paths, and
    uninstall runs `markroute down` (the applied table is gone) and leaves no file behind."""
    installed = in_private_root(tmp_path, [str(INSTALLER)], net=False)
    assert installed.returncode == 0, installed.stdout + installed.stderr
    added = overlay_files(tmp_path)
    assert {"/usr/local/sbin/markroute", "/etc/systemd/system/multi-user.target.wants/markroute.service",
            "/etc/markroute", "/opt/markroute/bin/markroute"} <= added

    removed = in_private_root(tmp_path, ["sh", "-c", APPLY_THEN_UNINSTALL, "uninstall", str(INSTALLER)], net=True)
    assert removed.returncode == 0, removed.stdout + removed.stderr
    assert "/man8/markroute.8\n" in removed.stdout  # `man -w markroute` found the page
    assert "removed markroute" in removed.stdout
    assert "priority 10000" not in removed.stdout.split("ip rule list")[-1]
    # Only markroute's lock remains (kept by design, on tmpfs): down removed the state record,
    # and --purge the config and /etc/markroute.
    assert overlay_files(tmp_path) - {"/run/markroute"} == {"/run/markroute/lock"}
