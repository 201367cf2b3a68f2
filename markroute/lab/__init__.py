"""Network-namespace lab for markroute's kernel tests and ``markroute demo``.

Builds throwaway topologies out of network namespaces, sends real packets
between them and always tears everything down again.  See
:mod:`markroute.lab.netns` for the primitives and
:mod:`markroute.lab.topologies` for ready-made scenarios.  Typical use::

    with Lab() as lab:
        r = router_lab(lab, isps=2)
        lab.serve_echo(r.net, 7000)
        ...  # load markroute's rules into r.rtr here
        result = lab.probe(r.lan, "tcp", r.server, 7000, count=100, packets=3)
        assert {r.which_isp(src) for src in result["seen"]} == {0, 1}
"""

from markroute.lab.addresses import AddressGuardError, check_lab_address
from markroute.lab.netns import CommandError, Lab, LabError, cleanup
from markroute.lab.topologies import (
    DynamicRouterLab,
    LanClient,
    MultiHomedLab,
    RouterLab,
    TwoRoutersLab,
    dynamic_router_lab,
    lab_portforward,
    multihomed_lab,
    router_lab,
    two_routers_lab,
)

__all__ = [
    "AddressGuardError",
    "CommandError",
    "DynamicRouterLab",
    "Lab",
    "LabError",
    "LanClient",
    "MultiHomedLab",
    "RouterLab",
    "TwoRoutersLab",
    "check_lab_address",
    "cleanup",
    "dynamic_router_lab",
    "lab_portforward",
    "multihomed_lab",
    "router_lab",
    "two_routers_lab",
]
