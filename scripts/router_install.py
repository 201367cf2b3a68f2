"""Install markroute on a router as a system service, upgrade it, or remove it again.

Run through scripts/router-install (which installs the Debian packages first). What goes
where (all under --root DIR when given, so an image or a test can be filled without
touching this machine):

  /opt/markroute/                      a virtual environment of Debian's /usr/bin/python3
                                       with markroute and its pinned dependencies
  /opt/markroute/install-manifest.json what this installer added (uninstall reads it)
  /usr/local/sbin/markroute            -> /opt/markroute/bin/markroute (root's PATH)
  /usr/local/lib/systemd/system/markroute.service   contrib/markroute.service
  /etc/systemd/system/multi-user.target.wants/markroute.service   (enabled)
  /usr/local/share/man/man8/markroute.8               `markroute manpage`, generated now
  /usr/local/share/{bash-completion,zsh,fish}/...     click's completion scripts
  /etc/markroute/markroute.yaml        contrib/markroute.yaml, only when there is none

The environment is built in a staging directory and renamed into place, so an upgrade
never leaves a half-installed markroute, and the paths baked into it (script shebangs,
pyvenv.cfg, .pyc file names) are rewritten to the final /opt/markroute.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BASE_PYTHON = "/usr/bin/python3"
VENV = "/opt/markroute"
MANIFEST = f"{VENV}/install-manifest.json"
COMMAND_LINK = "/usr/local/sbin/markroute"
UNIT_NAME = "markroute.service"
UNIT = f"/usr/local/lib/systemd/system/{UNIT_NAME}"
WANTS = f"/etc/systemd/system/multi-user.target.wants/{UNIT_NAME}"
MAN_PAGE = "/usr/local/share/man/man8/markroute.8"
# click's completion script per shell, where that shell's completion loader looks.
COMPLETIONS = {
    "bash_source": "/usr/local/share/bash-completion/completions/markroute",
    "zsh_source": "/usr/local/share/zsh/site-functions/_markroute",
    "fish_source": "/usr/local/share/fish/vendor_completions.d/markroute.fish",
}
CONFIG = "/etc/markroute/markroute.yaml"
SOURCES = ["pyproject.toml", "README.md", "markroute"]


class InstallError(Exception):
    """A reason to stop, told to the user as one line (exit code attached)."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


@dataclass
class Manifest:
    """What an install added, in target paths (without --root): exactly what uninstall removes."""

    version: str
    files: list[str] = field(default_factory=list)  # files and symlinks
    dirs: list[str] = field(default_factory=list)  # directories that did not exist before
    config_created: bool = False  # /etc/markroute/markroute.yaml came from the example


@dataclass
class Target:
    """The system being installed into: a root directory and whether its systemd is running."""

    root: Path

    def at(self, path: str) -> Path:
        return self.root / path.lstrip("/")

    @property
    def systemd_running(self) -> bool:
        """Only the real root of a booted systemd machine gets systemctl; an image gets symlinks."""
        return self.root == Path("/") and Path("/run/systemd/system").is_dir()

    def read_manifest(self) -> Manifest | None:
        path = self.at(MANIFEST)
        if not path.exists():
            return None
        return Manifest(**json.loads(path.read_text()))

    def make_dirs(self, path: str, created: list[str]) -> None:
        """mkdir -p, remembering every directory that had to be created (uninstall removes those)."""
        missing = []
        current = Path(path)
        while not self.at(str(current)).exists():
            missing.append(str(current))
            current = current.parent
        for directory in reversed(missing):
            self.at(directory).mkdir(mode=0o755)
            if directory not in created:
                created.append(directory)

    def write(self, path: str, content: bytes, created: list[str]) -> None:
        self.make_dirs(str(Path(path).parent), created)
        self.at(path).write_bytes(content)
        self.at(path).chmod(0o644)

    def symlink(self, path: str, points_to: str, created: list[str]) -> None:
        self.make_dirs(str(Path(path).parent), created)
        link = self.at(path)
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(points_to)


def run(argv: list[str | Path], **kwargs: object) -> subprocess.CompletedProcess[str]:
    """A command as an argument list (never a shell line), failing loudly."""
    try:
        return subprocess.run([str(a) for a in argv], check=True, text=True, **kwargs)  # type: ignore[call-overload, no-any-return]
    except subprocess.CalledProcessError as exc:
        raise InstallError(f"{' '.join(str(a) for a in argv)} failed (exit {exc.returncode})") from exc


def systemctl(*args: str) -> None:
    run(["systemctl", *args])


def installed_paths(enable: bool) -> list[str]:
    """The files and links an install owns outside /opt/markroute."""
    return [COMMAND_LINK, UNIT, *([WANTS] if enable else []), MAN_PAGE, *COMPLETIONS.values()]


def refuse_foreign_files(target: Target, paths: list[str], old: Manifest | None) -> None:
    """Stop before changing anything if a path to be installed holds a file this installer did not put there."""
    ours = set(old.files) if old else set()
    for path in [*paths, VENV]:
        at = target.at(path)
        if (at.exists() or at.is_symlink()) and path not in ours and not (path == VENV and old):
            raise InstallError(f"{at} exists and was not installed by router-install: move it away first")


def build_environment(target: Target, created: list[str]) -> Path:
    """A fresh venv with markroute from this checkout, built beside /opt/markroute and renamed into place."""
    staging = target.at(VENV + ".new")
    shutil.rmtree(staging, ignore_errors=True)
    target.make_dirs(str(Path(VENV).parent), created)
    try:
        populate(staging)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)  # the installed markroute, if any, is untouched
        raise
    final = target.at(VENV)
    if final.exists():
        previous = target.at(VENV + ".old")
        shutil.rmtree(previous, ignore_errors=True)
        final.rename(previous)
        staging.rename(final)
        shutil.rmtree(previous)
    else:
        staging.rename(final)
    return final


def populate(staging: Path) -> None:
    """venv, markroute with its pinned dependencies, paths made final, everything byte-compiled."""
    run([BASE_PYTHON, "-m", "venv", staging])
    with tempfile.TemporaryDirectory(prefix="markroute-src-") as source:
        # A copy, so building the wheel leaves no build/ or egg-info in the checkout.
        for name in SOURCES:
            origin = REPO / name
            if origin.is_dir():
                shutil.copytree(origin, Path(source) / name, ignore=shutil.ignore_patterns("__pycache__"))
            else:
                shutil.copy2(origin, Path(source) / name)
        run([staging / "bin/python", "-m", "pip", "install", "-q", "--no-compile",
             "--disable-pip-version-check", source])
    # The service needs neither at run time; an upgrade builds a fresh environment anyway.
    run([staging / "bin/python", "-m", "pip", "uninstall", "-q", "-y", "pip", "setuptools"])
    relocate(staging, VENV)
    run([staging / "bin/python", "-m", "compileall", "-q", "-f", "-j", "0", "-s", staging, "-p", VENV, staging / "lib"],
        stdout=subprocess.DEVNULL)


def relocate(staging: Path, final: str) -> None:
    """Point the scripts' shebangs, activate scripts and pyvenv.cfg at the final path instead of staging."""
    old, new = str(staging).encode(), final.encode()
    for path in [*sorted((staging / "bin").iterdir()), staging / "pyvenv.cfg"]:
        if path.is_symlink() or not path.is_file():
            continue
        content = path.read_bytes()
        if old in content:
            path.write_bytes(content.replace(old, new))


def generated(venv: Path, argv: list[str], env: dict[str, str] | None = None) -> bytes:
    """Output of the installed markroute (run by the venv's python, so it works under --root too)."""
    result = run([venv / "bin/python", venv / "bin/markroute", *argv], stdout=subprocess.PIPE,
                 env={**os.environ, **(env or {})})
    return result.stdout.encode()


def install(target: Target) -> None:
    old = target.read_manifest()
    # An upgrade keeps the unit disabled if the admin disabled it.
    enable = old is None or WANTS in old.files and target.at(WANTS).is_symlink()
    paths = installed_paths(enable)
    refuse_foreign_files(target, paths, old)
    created = list(old.dirs) if old else []
    venv = build_environment(target, created)
    version = generated(venv, ["--version"]).decode().split()[-1]

    target.symlink(COMMAND_LINK, f"{VENV}/bin/markroute", created)
    target.write(UNIT, (REPO / "contrib/markroute.service").read_bytes(), created)
    target.write(MAN_PAGE, generated(venv, ["manpage"]), created)
    for shell, path in COMPLETIONS.items():
        target.write(path, generated(venv, [], {"_MARKROUTE_COMPLETE": shell}), created)
    config_created = old.config_created if old else False
    if not target.at(CONFIG).exists():
        target.write(CONFIG, (REPO / "contrib/markroute.yaml").read_bytes(), created)
        config_created = True
    if enable:
        if target.systemd_running:
            systemctl("daemon-reload")
            systemctl("enable", UNIT_NAME)
        else:
            target.symlink(WANTS, UNIT, created)
    for stale in set(old.files if old else []) - set(paths):
        target.at(stale).unlink(missing_ok=True)
    manifest = Manifest(version=version, files=paths, dirs=created, config_created=config_created)
    target.at(MANIFEST).write_text(json.dumps(asdict(manifest), indent=2) + "\n")

    if target.systemd_running:
        systemctl("daemon-reload")
        if old:
            systemctl("try-restart", UNIT_NAME)  # stopping leaves the rules: no traffic is interrupted
    verb = "upgraded to" if old else "installed"
    print(f"router-install: {verb} markroute {version} in {target.at(VENV)}")
    if not old:
        print(f"next: describe your router in {target.at(CONFIG)}, `markroute check`, then "
              f"`systemctl start markroute` (enabled: it starts at boot once the config is valid)")


def uninstall(target: Target, purge: bool) -> None:
    manifest = target.read_manifest()
    if manifest is None:
        raise InstallError(f"markroute is not installed here (no {target.at(MANIFEST)})")
    if target.systemd_running:
        systemctl("stop", UNIT_NAME)  # first, or the daemon would apply its config again after down
    if target.root == Path("/"):
        # Exit 0 also when nothing is applied; anything else leaves routing in place, so
        # keep the markroute that can remove it and let the admin look.
        down = subprocess.run([f"{VENV}/bin/markroute", "down"], check=False)
        if down.returncode != 0:
            raise InstallError(f"markroute down failed (exit {down.returncode}); nothing uninstalled")
    else:
        print(f"router-install: not running `markroute down`: {target.root} is not this machine's root")
    if target.systemd_running and WANTS in manifest.files:
        systemctl("disable", UNIT_NAME)
    for path in manifest.files:
        target.at(path).unlink(missing_ok=True)
    directories = list(manifest.dirs)
    if purge:
        target.at(CONFIG).unlink(missing_ok=True)
        directories.append(str(Path(CONFIG).parent))  # markroute's own, once empty
    shutil.rmtree(target.at(VENV))
    kept = []
    for directory in sorted(set(directories), key=lambda d: d.count("/"), reverse=True):
        if not target.at(directory).exists():
            continue
        try:
            target.at(directory).rmdir()
        except OSError:  # not empty: the kept config, or something else put there since
            kept.append(directory)
    if target.systemd_running:
        systemctl("daemon-reload")
    print(f"router-install: removed markroute {manifest.version}"
          + (f"; kept {', '.join(str(target.at(d)) for d in kept)}" if kept else ""))
    if not purge and target.at(CONFIG).exists():
        print(f"router-install: kept your config {target.at(CONFIG)} (--uninstall --purge removes it)")


def main() -> int:
    parser = argparse.ArgumentParser(
        prog="scripts/router-install",
        description="Install (or upgrade) markroute as a systemd service, or remove it.")
    parser.add_argument("--root", default="/", metavar="DIR",
                        help="install into this directory as if it were / (an image, a test)")
    parser.add_argument("--uninstall", action="store_true",
                        help="run `markroute down`, disable the unit and remove every file the install added")
    parser.add_argument("--purge", action="store_true", help="with --uninstall: remove the config too")
    args = parser.parse_args()
    root = Path(args.root)
    if args.purge and not args.uninstall:
        parser.error("--purge goes with --uninstall")
    if not root.is_absolute() or not root.is_dir():
        parser.error(f"--root {args.root}: not an absolute path of an existing directory")
    if os.geteuid() != 0:
        print("router-install: run as root", file=sys.stderr)
        return 4
    target = Target(root)
    try:
        if args.uninstall:
            uninstall(target, args.purge)
        else:
            install(target)
    except InstallError as exc:
        print(f"router-install: {exc}", file=sys.stderr)
        return exc.code
    return 0


if __name__ == "__main__":
    sys.exit(main())
