"""How long a LAN flow stalls when the active router of an HA pair dies (issue #17).

Lab: markroute.lab.ha (two routers, keepalived + conntrackd, the README's examples/ha
configs, `markroute run` on both). A TCP connection (via isp0) and a UDP stream (via
isp1) send a line every 20 ms from the LAN to the echo server; 4 s in, every link of the
master goes down. Per run: the takeover time (kill until r2's `markroute ha master`
recorded its role, i.e. the conntrackd commit is done and the hold lifted) and each
flow's gap (its longest silence across the kill). The flows must keep their NAT binding
(one source address and port at the server) and TCP must not be reset, else the run
fails.

VRRP bounds the takeover: the backup declares the master dead after 3 adverts plus a
skew of (256 - priority) / 256 adverts, 3.6 adverts for r2's priority 100. TCP's gap is
longer than UDP's because the client's retransmissions back off exponentially: the one
after the takeover is what resumes the connection.

Run as root: python3 benchmarks/bench_ha.py [--runs N] [--adverts 0.1,0.2,1] [--write]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from common import publish  # noqa: E402
from daemon_helpers import DaemonLab  # noqa: E402
from test_lab_ha import fail_over, start_pair, write_example_config  # noqa: E402

from markroute.lab import Lab  # noqa: E402
from markroute.lab.ha import ha_lab, vrrp_role  # noqa: E402


def one_run(advert: float) -> tuple[float, float, float]:
    """(takeover, tcp gap, udp gap) in seconds, for one death of the master."""
    with tempfile.TemporaryDirectory(prefix="mrha-") as folder, Lab() as lab:
        workdir = Path(folder)
        ha = ha_lab(lab, workdir)
        daemons: list[DaemonLab] = []
        try:
            for router in ha.routers:
                daemon = DaemonLab(SimpleNamespace(rtr=router.ns), workdir / f"{router.name}-markroute")
                daemon.workdir.mkdir()
                daemons.append(daemon)
                daemon.start(write_example_config(router))
            start_pair(ha, markroute=True, advert_interval=advert)
            result = fail_over(ha)
            result.assert_kept(ha, {"tcp": 0, "udp": 1})
            assert vrrp_role(ha.routers[1]) == "master"
            return (result.takeover, result.flows["tcp"].gap(after=result.killed),
                    result.flows["udp"].gap(after=result.killed))
        finally:
            for daemon in daemons:
                daemon.close()


def row(advert: float, samples: list[tuple[float, float, float]]) -> str:
    cells = []
    for index in range(3):
        values = [sample[index] for sample in samples]
        cells.append(f"{statistics.median(values):.2f} s ({min(values):.2f}-{max(values):.2f})")
    return f"| {advert:g} s | {' | '.join(cells)} | {len(samples)} |\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3, help="master deaths per advert interval (default 3)")
    parser.add_argument("--adverts", default="0.1,0.2,1", help="keepalived advert intervals, seconds")
    parser.add_argument("--write", action="store_true", help="store the result in BENCHMARKS.md")
    args = parser.parse_args()
    body = (
        "The master loses every link while a TCP connection (isp0) and a UDP stream (isp1) run from the LAN, "
        "a line every 20 ms each. Takeover: until the new master's hook (`markroute ha master`) is done. Gaps: "
        "each flow's longest silence across the kill; every run kept both flows on one source address and "
        "port, TCP without a reset. Median (min-max).\n\n"
        "| advert_int | takeover | TCP gap | UDP gap | runs |\n|---|---|---|---|---|\n"
    )
    for advert in (float(word) for word in args.adverts.split(",")):
        body += row(advert, [one_run(advert) for _ in range(args.runs)])
    publish("HA pair: takeover gap (keepalived + conntrackd + markroute run)", body)


if __name__ == "__main__":
    main()
