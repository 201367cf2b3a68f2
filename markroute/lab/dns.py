"""DNS in a lab: dnsmasq as a zone's server or as a router's forwarding resolver, and a client.

Both dnsmasq roles run inside a lab namespace, in the foreground, registered with the
Lab (killed at teardown), and read no host file: an explicit `--conf-file` (so no
/etc/dnsmasq.conf), `--no-resolv`, `--no-hosts`, pid and logs in the caller's directory.

Run as a script, `python -m markroute.lab.dns SERVER NAME [--version 4|6]` asks SERVER
for NAME and prints the answers as JSON: `[[address, ttl], ...]`.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from markroute.kernel.dnswire import DnsError, resolve
from markroute.lab.netns import Lab, LabError, _python_env


def _dnsmasq(lab: Lab, ns: str, workdir: Path, role: str, listen: str, options: Sequence[str]) -> subprocess.Popen[bytes]:
    log = open(workdir / f"dnsmasq-{role}.log", "wb")  # noqa: SIM115 (the process keeps it open)
    argv = ["dnsmasq", "--keep-in-foreground", "--user=root", "--group=root", "--no-resolv", "--no-hosts",
            f"--pid-file={workdir / f'dnsmasq-{role}.pid'}", "--log-facility=-", "--log-queries",
            f"--listen-address={listen}", "--bind-interfaces", *options]
    proc = lab.spawn(ns, argv, stdout=log, stderr=log)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise LabError(f"dnsmasq ({role}) in {ns} exited: {(workdir / f'dnsmasq-{role}.log').read_text()}")
        if "started, version" in (workdir / f"dnsmasq-{role}.log").read_text(errors="replace"):
            return proc
        time.sleep(0.05)
    raise LabError(f"dnsmasq ({role}) in {ns} did not start")


def serve_zone(lab: Lab, ns: str, workdir: Path, listen: str, records: Mapping[str, str], ttl: int) -> subprocess.Popen[bytes]:
    """A dnsmasq in NS answering RECORDS (name -> address, names below it too) with TTL, on LISTEN:53."""
    conf = workdir / "zone.conf"
    conf.write_text("".join(f"address=/{name}/{address}\n" for name, address in records.items()))
    return _dnsmasq(lab, ns, workdir, "zone", listen, [f"--conf-file={conf}", f"--local-ttl={ttl}"])


def forwarder(lab: Lab, ns: str, workdir: Path, listen: str, upstream: str, conf: Path) -> subprocess.Popen[bytes]:
    """A router's resolver in NS on LISTEN:53, forwarding everything to UPSTREAM, with markroute's CONF."""
    return _dnsmasq(lab, ns, workdir, "router", listen, [f"--conf-file={conf}", f"--server={upstream}"])


def ask(lab: Lab, ns: str, server: str, name: str, version: int = 4) -> list[tuple[str, int]]:
    """NAME's addresses as a client in NS gets them from SERVER: [(address, ttl), ...]."""
    argv = [sys.executable, "-m", "markroute.lab.dns", server, name, "--version", str(version)]
    answers: list[list[object]] = json.loads(lab.run(ns, argv, env=_python_env()).stdout)
    return [(str(address), int(str(ttl))) for address, ttl in answers]


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m markroute.lab.dns", description=__doc__)
    parser.add_argument("server")
    parser.add_argument("name")
    parser.add_argument("--version", type=int, choices=(4, 6), default=4)
    args = parser.parse_args(argv)
    try:
        answers = resolve(args.server, args.name, args.version)
    except DnsError as exc:
        sys.exit(f"dns: {exc}")
    json.dump([[a.address, a.ttl] for a in answers], sys.stdout)


if __name__ == "__main__":
    main()
