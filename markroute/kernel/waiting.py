"""Applying a config some of whose uplinks wait (`kernel.gateways`): their traffic fails over as if they were down.

A waiting uplink (no lease yet at boot, interface not created yet) must not fail the
whole apply, nor leave its traffic to fall through to main: `apply_model` compiles the
plan with the waiting uplinks down, so failover lists skip them and balance groups
leave them out (the last resort when nothing is left), exactly as for an uplink the
daemon found dead. The record keeps the digest of the config's plan with every uplink
up (`apply`'s NOMINAL), so `status -c FILE` keeps comparing with the config, not with the
uplinks' state of the moment.

An uplink without a gateway on a link that resolves neighbours (Ethernet, veth) is a
configuration error (`NeedsGateway`): `default dev IF` there sends every destination to
ARP and nothing answers. `check` cannot see interfaces, so this is found where they are
visible: `apply` and `markroute run` refuse such a config before changing anything.
"""

from __future__ import annotations

from collections.abc import Callable

from markroute.compile import UplinkAvailability, compile_plan
from markroute.kernel import KernelError, digest, gateways
from markroute.kernel.apply import ApplyReport, apply
from markroute.kernel.links import link_state, links
from markroute.kernel.rpdb import Rpdb
from markroute.model import Model
from markroute.plan import Plan


class NeedsGateway(KernelError):
    """An uplink without gateway sits on a broadcast link: the config must say `gateway: auto` or an address."""


def current_survey(plan: Plan, following: bool = True) -> gateways.Survey:
    """Every uplink's readiness in the current namespace (FOLLOWING: as the daemon judges it)."""
    with Rpdb() as rpdb:
        return gateways.survey(rpdb, plan.uplinks, link_state(rpdb, links(rpdb)), following)


def refuse_missing_gateways(plan: Plan, survey: gateways.Survey) -> None:
    """Raise `NeedsGateway` naming every uplink that needs a gateway it was not given."""
    uplinks = {u.name: u for u in plan.uplinks}
    wrong = [name for name, reason in survey.waiting.items() if reason == "needs-gateway"]
    if wrong:
        described = "; ".join(
            f"uplink '{name}' has no gateway but {uplinks[name].interface} is a broadcast link (it resolves "
            "neighbours with ARP/NDP), so a default route without gateway would leave nothing answering"
            for name in wrong
        )
        raise NeedsGateway(f"{described} (hint: write gateway: auto to follow DHCP/router advertisements, "
                           "or gateway: ADDRESS)")


def apply_model(model: Model, nominal: Plan, netns: str | None, force: bool = False,
                meanwhile: Callable[[], None] | None = None) -> ApplyReport:
    """Apply MODEL (NOMINAL: its plan with every uplink up) with the uplinks that wait right now compiled as down.

    `NeedsGateway` is raised first if due; FORCE and MEANWHILE as for `apply`. The
    record names NOMINAL's digest as the applied config either way.
    """
    survey = current_survey(nominal, following=False)
    refuse_missing_gateways(nominal, survey)
    waiting = frozenset(survey.waiting)
    if not waiting:
        return apply(nominal, netns, force, meanwhile=meanwhile)
    plan = compile_plan(model, UplinkAvailability(down=waiting))
    return apply(plan, netns, force, nominal=digest.plan_digest(nominal), meanwhile=meanwhile)
