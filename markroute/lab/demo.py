"""`markroute demo`: markroute on a throwaway router with real traffic; the host is not touched.

The demo builds the lab the kernel tests use (`markroute.lab`: a router with two ISPs
in network namespaces, IPv4 and IPv6, a LAN client, "the internet" and a private site
behind the router), applies the bundled config (`markroute/lab/demo.yaml`) to the
router, opens a few hundred TCP and UDP connections from the LAN client and reports
which uplink carried each: every ISP NATs to its own address, so the echo server's view
of a connection's source names the ISP. Next to that it shows what `markroute status`
counted per policy and per uplink. Then markroute and the lab are removed again, unless
the caller keeps the lab to explore it.

apply, status and down run as separate `markroute ... --netns ROUTER` processes, the
very commands a user would type, so this process never enters a namespace itself.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from markroute.exitcodes import ENVIRONMENT as EXIT_ENVIRONMENT
from markroute.exitcodes import FAILED as EXIT_FAILED
from markroute.exitcodes import USAGE as EXIT_USAGE
from markroute.kernel import EnvironmentProblem
from markroute.kernel.environment import require_nft, require_root
from markroute.kernel.netns import NETNS_DIR
from markroute.lab import CommandError, Lab, LabError, RouterLab, cleanup, router_lab

DEMO_CONFIG = Path(__file__).resolve().parent / "demo.yaml"
PORT = 7000
PACKETS = 3  # lines per connection: every answer must name the same ISP (stickiness)
#: Label for connections no ISP NATed: they stayed on main's route to the site.
MAIN = "main"
_PREFIX = re.compile(r"^mr-[0-9a-f]{6}$")
_STATUS_DRIFT = 3


@dataclass(frozen=True)
class Traffic:
    """One batch of connections the demo opens from the LAN client."""

    target: str  # the RouterLab attribute holding the destination address
    proto: str
    count: int
    policy: str  # the bundled config's policy that decides these connections


TRAFFIC = (
    Traffic("server", "tcp", 200, "balanced"),
    Traffic("server", "udp", 100, "balanced"),
    Traffic("server6", "tcp", 100, "balanced"),
    Traffic("server_alt", "tcp", 100, "benchmark-net-via-b"),
    Traffic("site_server", "tcp", 50, "site-via-main"),
)


@dataclass
class FlowResult:
    """What one batch of connections did: answered ones per uplink, failures, uplink changes."""

    destination: str
    proto: str
    policy: str
    count: int
    ok: int
    inconsistent: int
    by_uplink: dict[str, int]

    @property
    def failed(self) -> int:
        return self.count - self.ok

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "failed": self.failed}


@dataclass
class DemoReport:
    prefix: str
    namespaces: tuple[str, ...]
    router: str
    lan: str
    config: str
    uplinks: list[str]
    flows: list[FlowResult]
    status: dict[str, Any]
    kept: bool = False
    explore: list[list[str]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["namespaces"] = list(self.namespaces)
        data["flows"] = [flow.to_json() for flow in self.flows]
        return data


class DemoError(Exception):
    """The demo cannot go on; the message says why, `code` is the exit code."""

    def __init__(self, message: str, code: int = EXIT_FAILED) -> None:
        super().__init__(message)
        self.code = code


def check_environment() -> None:
    """Root, nft and ip: without them no namespace can be built (EnvironmentProblem)."""
    require_root()
    require_nft()
    if shutil.which("ip") is None:
        raise EnvironmentProblem("the ip command is missing: install iproute2 (apt install iproute2)")


def program() -> list[str]:
    """How to start markroute again, from anywhere: as this process was started, if by `markroute`.

    Plain `markroute` when that is what PATH finds, else the script's absolute path (e.g.
    `.venv/bin/markroute` run by scripts/demo), else this interpreter with `-m markroute`.
    """
    script = Path(sys.argv[0])
    if script.name != "markroute":
        return [sys.executable, "-m", "markroute"]
    on_path = shutil.which("markroute")
    if on_path is not None and Path(on_path).resolve() == script.resolve():
        return ["markroute"]
    return [str(script.resolve())]


def markroute(*args: str, accept: tuple[int, ...] = (0,)) -> str:
    """Run a markroute subcommand; its stdout, or DemoError with its message."""
    try:
        proc = subprocess.run([*program(), *args], capture_output=True, text=True, timeout=120, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise DemoError(f"markroute {args[0]} could not run: {exc}") from exc
    if proc.returncode not in accept:
        detail = proc.stderr.strip() or proc.stdout.strip()
        raise DemoError(f"markroute {shlex.join(args)} failed (exit {proc.returncode}): {detail}")
    return proc.stdout


def uplink_names(r: RouterLab) -> dict[int, str]:
    """ISP index -> the bundled config's uplink on that ISP's interface; checks TRAFFIC's policies."""
    from markroute.config import load_model

    model, diagnostics = load_model(str(DEMO_CONFIG))
    if model is None:
        problems = "; ".join(d.render() for d in diagnostics)
        raise DemoError(f"the bundled demo config is invalid: {problems}")
    missing = {t.policy for t in TRAFFIC} - {p.name for p in model.policies}
    if missing:
        raise DemoError(f"the bundled demo config lacks the policies {sorted(missing)}")
    interfaces = {u.interface: name for name, u in model.uplinks.items()}
    return {i: interfaces[ifname] for i, ifname in enumerate(r.rtr_wan_ifs) if ifname in interfaces}


def send(r: RouterLab, traffic: Traffic, names: dict[int, str]) -> FlowResult:
    """Open one batch of connections from the LAN client and sort them by uplink."""
    destination = str(getattr(r, traffic.target))
    try:
        result = r.lab.probe(
            r.lan, traffic.proto, destination, PORT, count=traffic.count, packets=PACKETS, timeout=1.0
        )
    except (LabError, CommandError, subprocess.TimeoutExpired) as exc:
        raise DemoError(f"sending traffic to {destination} failed: {exc}") from exc
    by_uplink = {name: 0 for name in names.values()} | {MAIN: 0}
    for isp, flows in r.isp_counts(result["seen"]).items():
        by_uplink[MAIN if isp is None else names.get(isp, f"isp{isp}")] += flows
    return FlowResult(
        destination, traffic.proto, traffic.policy, traffic.count, result["ok"], result["inconsistent"], by_uplink
    )


def explore_commands(r: RouterLab, status: dict[str, Any]) -> list[list[str]]:
    """Commands that look into a kept lab; each one exists and works on it."""
    rtr, me = r.rtr, program()
    commands = [
        [*me, "status", "--netns", rtr],
        [*me, "trace", "--live", "--netns", rtr, "--from", r.client_v4, "--to", r.server,
         "--proto", "tcp", "--dport", str(PORT), "--iif", r.rtr_lan_if, "--flows", "1000"],
        ["ip", "netns", "exec", rtr, "nft", "list", "table", "inet", "markroute"],
        ["ip", "-n", rtr, "rule", "show"],
    ]  # fmt: skip
    commands += [["ip", "-n", rtr, "route", "show", "table", str(u["table"])] for u in status["uplinks"]]
    if shutil.which("conntrack"):
        commands.append(["ip", "netns", "exec", rtr, "conntrack", "-L"])
    commands.append(
        ["ip", "netns", "exec", r.lan, sys.executable, "-m", "markroute.lab.probe",
         "tcp", r.server, str(PORT), "--count", "100", "--packets", str(PACKETS)]
    )  # fmt: skip
    return commands


def run(keep: bool = False, progress: Callable[[str], None] = lambda _: None) -> DemoReport:
    """Build the lab, apply, send traffic, read status; tear down unless *keep*."""
    check_environment()
    lab = Lab()
    applied_in: str | None = None
    report: DemoReport | None = None
    try:
        progress(f"building the lab (namespaces {lab.prefix}-*)")
        try:
            r = router_lab(lab, isps=2, ipv6=True, site=True)
            for ns in (r.net, str(r.site)):
                lab.serve_echo(ns, PORT, stderr=subprocess.DEVNULL)  # may outlive us (--keep)
        except (LabError, CommandError, OSError, subprocess.TimeoutExpired) as exc:
            raise DemoError(f"cannot build the demo lab: {exc}", EXIT_ENVIRONMENT) from exc
        names = uplink_names(r)
        progress(f"markroute apply -c {DEMO_CONFIG} --netns {r.rtr}")
        markroute("apply", "-c", str(DEMO_CONFIG), "--netns", r.rtr)
        applied_in = r.rtr
        progress(f"opening {sum(t.count for t in TRAFFIC)} connections from the LAN client {r.client_v4}")
        flows = [send(r, traffic, names) for traffic in TRAFFIC]
        status = json.loads(markroute("status", "--netns", r.rtr, "--json", accept=(0, _STATUS_DRIFT)))
        report = DemoReport(
            prefix=lab.prefix,
            namespaces=lab.namespaces,
            router=r.rtr,
            lan=r.lan,
            config=str(DEMO_CONFIG),
            uplinks=list(names.values()),
            flows=flows,
            status=status,
        )
        if keep:
            report.explore = explore_commands(r, status) + [[*program(), "demo", "--down", lab.prefix]]
            report.namespaces = lab.release()
            report.kept = True
        return report
    finally:
        if report is None or not report.kept:
            progress("removing markroute and the lab")
            _teardown(lab, applied_in)


def _teardown(lab: Lab, applied_in: str | None) -> None:
    """markroute down (so nothing stays under /run/markroute), then delete the namespaces."""
    try:
        if applied_in is not None:
            markroute("down", "--netns", applied_in)
    except DemoError as exc:
        print(f"markroute: warning: {exc}", file=sys.stderr)
    finally:
        lab.close()


def remove(prefix: str) -> list[str]:
    """Remove a lab kept with `--keep`: markroute down in its router, then its namespaces."""
    check_environment()
    if not _PREFIX.match(prefix):
        raise DemoError(f"'{prefix}' is not a demo lab prefix (mr- and six hex digits, as --keep printed)", EXIT_USAGE)
    names = sorted(p.name for p in NETNS_DIR.glob(f"{prefix}-*")) if NETNS_DIR.is_dir() else []
    router = f"{prefix}-rtr"
    if router not in names:
        raise DemoError(f"no demo lab {prefix} here: there is no namespace {router} (see ip netns list)")
    try:
        markroute("down", "--netns", router)
    finally:
        cleanup(names)
    return names
