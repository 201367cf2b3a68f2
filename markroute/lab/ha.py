"""An HA router pair in namespaces: keepalived moves the addresses, conntrackd the connections.

Topology (issue #17)::

    lan (client) --- sw (bridge br0) ---+--- r1 ---+--- isp0 (bridge br0) --- net (servers)
                                        |    |sync0|                          /
                                        +--- r2 ---+--- isp1 (bridge br0) ---+

Each router has a LAN leg (``lan0``), one leg on each ISP segment (``wan0``,
``wan1``) and a dedicated sync link to its peer (``sync0``).  The ISP
segments are bridges inside the ISP namespaces, whose own address sits on
the bridge; the ISPs route (no NAT), so the server in ``net`` sees the
router's WAN virtual address and the source port its NAT chose, and a test
can tell whether a takeover kept a connection's NAT binding.

The LAN virtual address (the client's gateway) and one WAN virtual address
per segment belong to VRRP instances of one keepalived sync group, so they
move together.  conntrackd (FTFW over UDP on the sync link) replicates the
master's connection table, ct marks and NAT bindings included, into the
backup's external cache; keepalived's notify script
(:mod:`markroute.lab.ha_notify`) commits it on takeover.

Two sets of configs: the lab's own (:func:`keepalived_conf`,
:func:`conntrackd_conf`, notify script :mod:`markroute.lab.ha_notify`), for tests
with a hand-written ruleset, and the README's examples/ha files with only paths and
the advert interval substituted (``example_*``), whose hook is ``markroute ha``.

Everything a daemon writes (configs, pid files, the conntrackd control
socket and lock, logs, the notify state) lives in a per-router folder of the
caller's working directory, so two daemons of each kind run side by side on
one host without touching /run, /var/lock or /etc.  The daemons are spawned
through the :class:`~markroute.lab.netns.Lab` and are stopped at teardown
even if a test fails.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from markroute.kernel import ha as markroute_ha
from markroute.kernel import state as markroute_state
from markroute.lab.ha_notify import HOLD_ON
from markroute.lab.netns import Lab, LabError
from markroute.lab.topologies import SERVER_NETS_V4, SERVER_V4, _anyip, _link, _uplink

LAN_NET_V4 = "192.168.1.0/24"
LAN_VIP = "192.168.1.1"
CLIENT_V4 = "192.168.1.10"
#: Each router's sync link address, by router index.
SYNC_V4 = ("10.254.0.1", "10.254.0.2")
SYNC_PORT = 3780
#: VRRP ids: the LAN instance, then one per WAN segment.
_LAN_VRID = 51
_SUN_PATH_MAX = 107
#: keepalived needs VRRPv3 for adverts faster than once a second.
_VRRP_VERSION = 3
#: The pair's configs the README documents; the lab runs them with only its own paths substituted.
EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "ha"


@dataclass(frozen=True)
class HaRouter:
    """One router of the pair: its namespace, own addresses and daemon files."""

    index: int
    ns: str
    lan_v4: str
    wan_v4: tuple[str, ...]
    sync_v4: str
    peer_sync_v4: str
    #: VRRP priority: r1 is preferred, so it is master once both run.
    priority: int
    workdir: Path
    lan_if: str = "lan0"
    sync_if: str = "sync0"

    @property
    def name(self) -> str:
        return f"r{self.index + 1}"

    @property
    def wan_ifs(self) -> tuple[str, ...]:
        return tuple(f"wan{i}" for i in range(len(self.wan_v4)))

    @property
    def links(self) -> tuple[str, ...]:
        return (self.lan_if, *self.wan_ifs, self.sync_if)

    def path(self, name: str) -> Path:
        """A file of this router's daemons, in its own folder."""
        return self.workdir / self.name / name


@dataclass(frozen=True)
class HaLab:
    """The namespaces and address plan built by :func:`ha_lab`."""

    lab: Lab
    client: str
    client_v4: str
    sw: str
    isps: tuple[str, ...]
    net: str
    routers: tuple[HaRouter, HaRouter]
    lan_vip: str
    lan_net: str
    #: The WAN virtual address on segment i: the source the server sees via ISP i.
    wan_vips: tuple[str, ...]
    isp_gw_v4: tuple[str, ...]
    server: str


@dataclass
class HaDaemons:
    """The keepalived and conntrackd processes of one router."""

    router: HaRouter
    conntrackd: subprocess.Popen[bytes]
    keepalived: subprocess.Popen[bytes]


def _build_isp_segment(lab: Lab, i: int, net: str, routers: tuple[str, str]) -> str:
    """ISP i: bridge br0 (10.0.i.1/24) with both routers' wan{i}; up0 to net; no NAT."""
    isp = lab.add_ns(f"isp{i}")
    for k, router in enumerate(routers):
        lab.veth(router, f"wan{i}", isp, f"r{k + 1}")
    lab.bridge(isp, "br0", [f"r{k + 1}" for k in range(len(routers))])
    lab.addr(isp, "br0", f"10.0.{i}.1/24")
    _uplink(lab, isp, net, f"ispl{i}", i)
    lab.forwarding(isp)
    lab.route(net, f"10.0.{i}.0/24", "via", f"198.51.100.{4 * i + 2}")
    return isp


def ha_lab(lab: Lab, workdir: Path, isps: int = 2) -> HaLab:
    """Build the pair's topology (see the module docstring); no daemons, no rules yet.

    Addresses: LAN 192.168.1.0/24 (VIP .1, r1 .2, r2 .3, client .10); ISP
    segment i 10.0.i.0/24 (ISP .1, VIP .2, r1 .3, r2 .4); sync link
    10.254.0.0/30.  Both routers forward and route by default via ISP 0.
    """
    client = lab.add_ns("lan")
    sw = lab.add_ns("sw")
    names = (lab.add_ns("r1"), lab.add_ns("r2"))
    net = lab.add_ns("net")
    lab.veth(client, "eth0", sw, "p0")
    lab.addr(client, "eth0", f"{CLIENT_V4}/24")
    lab.route(client, "default", "via", LAN_VIP)
    for k, ns in enumerate(names):
        _link(lab, (ns, "lan0"), (f"192.168.1.{k + 2}/24",), (sw, f"p{k + 1}"), ())
    lab.bridge(sw, "br0", [f"p{k}" for k in range(len(names) + 1)])
    _link(lab, (names[0], "sync0"), (f"{SYNC_V4[0]}/30",), (names[1], "sync0"), (f"{SYNC_V4[1]}/30",))
    isp_names = tuple(_build_isp_segment(lab, i, net, names) for i in range(isps))
    routers = []
    for k, ns in enumerate(names):
        wan_v4 = tuple(f"10.0.{i}.{k + 3}" for i in range(isps))
        for i, address in enumerate(wan_v4):
            lab.addr(ns, f"wan{i}", f"{address}/24")
        lab.forwarding(ns)
        lab.route(ns, "default", "via", "10.0.0.1")
        routers.append(
            HaRouter(
                index=k,
                ns=ns,
                lan_v4=f"192.168.1.{k + 2}",
                wan_v4=wan_v4,
                sync_v4=SYNC_V4[k],
                peer_sync_v4=SYNC_V4[1 - k],
                priority=200 - 100 * k,
                workdir=workdir,
            )
        )
    _anyip(lab, net, SERVER_NETS_V4)
    return HaLab(
        lab=lab,
        client=client,
        client_v4=CLIENT_V4,
        sw=sw,
        isps=isp_names,
        net=net,
        routers=(routers[0], routers[1]),
        lan_vip=LAN_VIP,
        lan_net=LAN_NET_V4,
        wan_vips=tuple(f"10.0.{i}.2" for i in range(isps)),
        isp_gw_v4=tuple(f"10.0.{i}.1" for i in range(isps)),
        server=SERVER_V4,
    )


# -- daemon configuration ----------------------------------------------------


def notify_argv(router: HaRouter, state: str) -> list[str]:
    """The command keepalived runs when *router*'s sync group enters *state*."""
    return [
        sys.executable, "-m", "markroute.lab.ha_notify", state,
        "--conntrackd-conf", str(router.path("conntrackd.conf")),
        "--state-file", str(router.path("state")),
        "--log", str(router.path("notify.log")),
    ]  # fmt: skip


def _keepalived_words(argv: list[str]) -> str:
    """*argv* as one keepalived script string, which keepalived splits at blanks."""
    for word in argv:
        if not word or any(c.isspace() or c in "\"'\\" for c in word):
            raise LabError(f"{word!r} cannot be passed to keepalived's script parser")
    return " ".join(argv)


def keepalived_conf(ha: HaLab, router: HaRouter, advert_interval: float) -> str:
    """keepalived.conf: one sync group holding the LAN and every WAN instance.

    All instances start as BACKUP; the priorities make r1 master when both
    run (and take the role back when it returns, the default preemption).
    """
    instances = [("lan", router.lan_if, _LAN_VRID, f"{ha.lan_vip}/24")]
    for i, ifname in enumerate(router.wan_ifs):
        instances.append((ifname, ifname, _LAN_VRID + 1 + i, f"{ha.wan_vips[i]}/24"))
    notify = "".join(
        f'    notify_{state} "{_keepalived_words(notify_argv(router, state))}"\n'
        for state in ("master", "backup", "fault")
    )
    members = " ".join(name for name, *_ in instances)
    text = (
        "global_defs {\n"
        f"    router_id {router.name}\n"
        "    script_user root\n"
        "    enable_script_security\n"
        f"    vrrp_version {_VRRP_VERSION}\n"
        "}\n"
        "vrrp_sync_group ha {\n"
        f"    group {{ {members} }}\n"
        f"{notify}"
        "}\n"
    )
    for name, ifname, vrid, vip in instances:
        text += (
            f"vrrp_instance {name} {{\n"
            "    state BACKUP\n"
            f"    interface {ifname}\n"
            f"    virtual_router_id {vrid}\n"
            f"    priority {router.priority}\n"
            f"    advert_int {advert_interval:g}\n"
            f"    virtual_ipaddress {{ {vip} dev {ifname} }}\n"
            "}\n"
        )
    return text


def conntrackd_conf(ha: HaLab, router: HaRouter) -> str:
    """conntrackd.conf: FTFW over UDP on the sync link, TCP, UDP and ICMP.

    The router's own addresses (of both routers, not the virtual ones: NATed
    connections carry those) and the sync link are ignored, so only
    forwarded connections are replicated.  Control socket and lock file live
    in the router's folder instead of /run and /var/lock; the log goes to the
    console, which :func:`start_router` writes to the folder.
    """
    socket_path = router.path("conntrackd.ctl")
    if len(str(socket_path)) > _SUN_PATH_MAX:
        raise LabError(f"{socket_path} is too long for a unix socket; use a shorter workdir")
    own = ["127.0.0.1", *SYNC_V4]
    for peer in ha.routers:
        own += [peer.lan_v4, *peer.wan_v4]
    ignored = "".join(f"                IPv4_address {address}\n" for address in own)
    return (
        "Sync {\n"
        "    Mode FTFW {\n"
        "    }\n"
        "    UDP {\n"
        f"        IPv4_address {router.sync_v4}\n"
        f"        IPv4_Destination_Address {router.peer_sync_v4}\n"
        f"        Port {SYNC_PORT}\n"
        f"        Interface {router.sync_if}\n"
        "        Checksum on\n"
        "    }\n"
        "}\n"
        "General {\n"
        "    Systemd no\n"
        "    HashSize 8192\n"
        "    HashLimit 65536\n"
        "    LogFile no\n"
        "    Syslog no\n"
        f"    LockFile {router.path('conntrackd.lock')}\n"
        f"    UNIX {{\n        Path {socket_path}\n    }}\n"
        "    NetlinkBufferSize 2097152\n"
        "    NetlinkBufferSizeMaxGrowth 8388608\n"
        "    Filter From Userspace {\n"
        "        Protocol Accept {\n"
        "            TCP\n            UDP\n            ICMP\n"
        "        }\n"
        "        Address Ignore {\n"
        f"{ignored}"
        "        }\n"
        "    }\n"
        "}\n"
    )


# -- the README's example configs -------------------------------------------


def example_markroute_yaml(router: HaRouter) -> str:
    """examples/ha/markroute.yaml with the lab's conntrackd config path of *router*."""
    return _substitute(
        (EXAMPLES / "markroute.yaml").read_text(),
        {"conntrackd: /etc/conntrackd/conntrackd.conf": f"conntrackd: {router.path('conntrackd.conf')}"},
    )


def example_keepalived_conf(router: HaRouter, advert_interval: float, markroute_config: Path) -> str:
    """examples/ha/keepalived.conf: the hook runs this checkout's markroute with the lab's config.

    Through env: keepalived's script security runs a script by its real path, and the
    real path of a virtualenv's python is the system's, which does not see the
    virtualenv's packages; env executes the path it is given.
    """
    text = (EXAMPLES / "keepalived.conf").read_text()
    hooks = {
        f"/usr/local/bin/markroute ha {state}": _keepalived_words(
            ["/usr/bin/env", sys.executable, "-m", "markroute", "ha", state, "-c", str(markroute_config)])
        for state in ("master", "backup", "fault")
    }  # fmt: skip
    return _substitute(text, {**hooks, "advert_int 1\n": f"advert_int {advert_interval:g}\n"})


def example_conntrackd_conf(router: HaRouter) -> str:
    """examples/ha/conntrackd.conf (r1's): r2 swaps the sync addresses; files in the router's folder."""
    text = (EXAMPLES / "conntrackd.conf").read_text()
    if router.index == 1:
        text = _substitute(text, {
            f"IPv4_address {SYNC_V4[0]}\n        IPv4_Destination_Address {SYNC_V4[1]}\n":
                f"IPv4_address {SYNC_V4[1]}\n        IPv4_Destination_Address {SYNC_V4[0]}\n",
        })  # fmt: skip
    socket_path = router.path("conntrackd.ctl")
    if len(str(socket_path)) > _SUN_PATH_MAX:
        raise LabError(f"{socket_path} is too long for a unix socket; use a shorter workdir")
    return _substitute(text, {
        "LockFile /var/lock/conntrack.lock": f"LockFile {router.path('conntrackd.lock')}",
        "Path /var/run/conntrackd.ctl": f"Path {socket_path}",
        "LogFile on": "LogFile no",  # the log goes to the console, which start_router writes to the folder
    })  # fmt: skip


def _substitute(text: str, replacements: dict[str, str]) -> str:
    """Replace each key of *replacements* that must be in *text*: a changed example fails loudly."""
    for old, new in replacements.items():
        if old not in text:
            raise LabError(f"the example config no longer contains {old!r}")
        text = text.replace(old, new)
    return text


# -- daemons -----------------------------------------------------------------


def _spawn_logged(lab: Lab, ns: str, argv: list[str], log: Path) -> subprocess.Popen[bytes]:
    """Spawn *argv* in *ns* with stdout and stderr appended to *log*."""
    with log.open("ab") as out:
        return lab.spawn(ns, argv, stdout=out, stderr=subprocess.STDOUT)


def start_router(
    ha: HaLab, router: HaRouter, advert_interval: float = 0.2, markroute_config: Path | None = None
) -> HaDaemons:
    """Write *router*'s configs and start conntrackd, then keepalived, in its namespace.

    Without *markroute_config* the lab's own configs and notify script run, and the
    lab's hold on new forwarded connections is set first: a router is not master until
    keepalived's notify script says so. With it, the README's example configs run and
    keepalived's hook is `markroute ha` for that config (markroute's own hold, set by
    apply until the hook says master).
    """
    folder = router.path("")
    folder.mkdir(parents=True, exist_ok=True)
    if markroute_config is None:
        router.path("conntrackd.conf").write_text(conntrackd_conf(ha, router))
        router.path("keepalived.conf").write_text(keepalived_conf(ha, router, advert_interval))
        ha.lab.nft(router.ns, HOLD_ON)
    else:
        router.path("conntrackd.conf").write_text(example_conntrackd_conf(router))
        router.path("keepalived.conf").write_text(example_keepalived_conf(router, advert_interval, markroute_config))
    conntrackd = _spawn_logged(
        ha.lab,
        router.ns,
        ["conntrackd", "-C", str(router.path("conntrackd.conf"))],
        router.path("conntrackd.out"),
    )
    _wait_for(lambda: router.path("conntrackd.ctl").exists(), 10.0, f"conntrackd of {router.name}")
    keepalived = _spawn_logged(
        ha.lab,
        router.ns,
        [
            "keepalived", "--dont-fork", "--log-console", "--log-detail", "--no-syslog",
            "--vrrp", "--use-file", str(router.path("keepalived.conf")),
            "--pid", str(router.path("keepalived.pid")),
            "--vrrp_pid", str(router.path("vrrp.pid")),
            "--checkers_pid", str(router.path("checkers.pid")),
            "--bfd_pid", str(router.path("bfd.pid")),
            "--config-id", router.name,
        ],  # fmt: skip
        router.path("keepalived.out"),
    )
    return HaDaemons(router, conntrackd, keepalived)


def stop_router(ha: HaLab, daemons: HaDaemons) -> None:
    """Stop keepalived (it removes its addresses), then conntrackd."""
    ha.lab.stop(daemons.keepalived)
    ha.lab.stop(daemons.conntrackd)


def vrrp_role(router: HaRouter) -> str:
    """The state keepalived last announced for *router* ("master", "backup", "fault").

    Read from the notify script's state file, which is written once the
    script's steps are done: "master" means the commit has completed; for a
    router whose hook is `markroute ha`, from the role it records (likewise).
    "init" until keepalived has run the script once.
    """
    if (markroute_state.directory(router.ns) / markroute_ha.HA_RECORD).exists():
        record = markroute_ha.load(router.ns)
        return record.role if record else "init"
    try:
        return router.path("state").read_text().strip()
    except FileNotFoundError:
        return "init"


def notify_steps(router: HaRouter) -> str:
    """What *router*'s last hand-over did: the lab script's log, or the steps `markroute ha` recorded."""
    log = router.path("notify.log")
    if log.exists():
        return log.read_text()
    record = markroute_ha.load(router.ns)
    if record is None:
        return "(no hand-over yet)\n"
    return "".join(f"{record.role}: {' '.join(step.argv[3:])} rc={step.code} {step.seconds:.3f}s {step.output}\n"
                   for step in record.steps)


def wait_role(router: HaRouter, role: str, timeout: float = 15.0) -> float:
    """Wait until *router* reports *role*; return the seconds it took."""
    return _wait_for(lambda: vrrp_role(router) == role, timeout, f"{router.name} to become {role}")


def committed_entries(router: HaRouter) -> list[int]:
    """How many entries each commit of *router*'s conntrackd put into the kernel, in order.

    Read from conntrackd's log ("Committed N new entries"): the one place
    that tells a takeover which rode on replicated state from one that did not.
    """
    log = router.path("conntrackd.out").read_text(errors="replace")
    return [int(found) for found in re.findall(r"Committed (\d+) new entries", log)]


def kill_router(ha: HaLab, router: HaRouter, sync: bool = True) -> None:
    """Take all of *router*'s links down, so the network sees it die as in a power cut.

    With ``sync=False`` the sync link stays up: the router loses LAN and WAN
    but its conntrackd still talks to the peer (issue #17's partial failure).
    """
    links = router.links if sync else tuple(x for x in router.links if x != router.sync_if)
    for ifname in links:
        ha.lab.ip(router.ns, "link", "set", ifname, "down")


def revive_router(ha: HaLab, router: HaRouter) -> None:
    """Bring *router* back after :func:`kill_router`: links up, main's default route again.

    Taking a link down deletes every route through it, so like a rebooted
    router it needs its routes put back; routes a test added to other tables
    are the test's to restore.
    """
    for ifname in router.links:
        ha.lab.ip(router.ns, "link", "set", ifname, "up")
    ha.lab.route(router.ns, "default", "via", ha.isp_gw_v4[0])


def _wait_for(ready: Callable[[], bool], timeout: float, what: str) -> float:
    began = time.monotonic()
    while not ready():
        if time.monotonic() - began > timeout:
            raise LabError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.02)
    return time.monotonic() - began
