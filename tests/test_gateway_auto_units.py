"""`gateway: auto` without a kernel: config, plan, offline trace, readiness rules, the daemon's news."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from markroute.cli import main
from markroute.compile import compile_plan
from markroute.config import load_model
from markroute.daemon.follow import Follower
from markroute.kernel.gateways import (
    Interface,
    Readiness,
    Survey,
    foreign_defaults,
    judge,
)
from markroute.plan import LinkState, UplinkPlan, resolve

CONFIG = """
uplinks:
  dhcp: {interface: wan0, gateway: auto, gateway6: auto, nat: masquerade}
  fixed: {interface: wan1, gateway: 10.0.1.1, nat: masquerade}
groups:
  both: {balance: {dhcp: 1, fixed: 1}}
policies:
  - name: rest
    via: both
"""
FLOW = ["--from", "192.168.1.10", "--to", "198.51.100.10", "--iif", "lan0", "--proto", "tcp", "--dport", "443"]
ADDRESSES = ["--addr", "lan0=192.168.1.1/24", "--addr", "wan0=10.0.0.108/24", "--addr", "wan1=10.0.1.2/24",
             "--route", "default via 10.0.1.1 dev wan1"]


@pytest.fixture
def config(tmp_path: Path) -> str:
    path = tmp_path / "markroute.yaml"
    path.write_text(CONFIG)
    return str(path)


def trace(*args: str) -> dict[str, Any]:
    result = CliRunner().invoke(main, ["trace", *args, "--json"])
    assert result.exit_code == 0, result.output
    data: dict[str, Any] = json.loads(result.output)
    return data


# -- config and plan -----------------------------------------------------------------


def test_auto_is_a_valid_gateway_and_leaves_the_default_route_to_apply(config: str) -> None:
    model, diagnostics = load_model(config)
    assert model is not None, [d.render() for d in diagnostics]
    assert (model.uplinks["dhcp"].gateway, model.uplinks["dhcp"].gateway6) == ("auto", "auto")
    assert model.uplinks["dhcp"].versions == {4, 6}
    plan = compile_plan(model)
    dhcp = next(u for u in plan.uplinks if u.name == "dhcp")
    assert [r for r in plan.routes if r.table == dhcp.table] == []  # learned at apply, never guessed
    text = CliRunner().invoke(main, ["plan", "-c", config]).output
    assert f"inet6  default via <next hop learned from the kernel, at apply> dev wan0 table {dhcp.table}" in text


@pytest.mark.parametrize("value, message", [
    ("gateway: Auto", "'Auto' is not an IP address; write 'auto'"),
    ("gateway: dhcp", "'dhcp' is not an IP address; write 'auto' to learn the gateway from the kernel"),
    ("gateway6: 10.0.0.1", "write it as 'gateway:'"),
])
def test_other_words_are_still_refused(tmp_path: Path, value: str, message: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(f"uplinks:\n  a: {{interface: wan0, {value}}}\npolicies:\n  - {{name: all, via: a}}\n")
    result = CliRunner().invoke(main, ["check", "-c", str(path)])
    assert result.exit_code == 1 and message in result.output, result.output


def test_resolve_adds_the_learned_default_routes_only() -> None:
    uplink = UplinkPlan("dhcp", "wan0", 0x100, 100, (4, 6), "auto", "auto", True)
    links = LinkState({"wan0": ((4, "10.0.0.108"),)}, (), gateways={"wan0": {4: "10.0.0.1"}})
    _, routes = resolve(compile_plan_stub(uplink), links)
    assert [(r.version, r.dst, r.gateway) for r in routes] == [(4, "default", "10.0.0.1")]


def compile_plan_stub(uplink: UplinkPlan) -> Any:
    from markroute.plan import Plan

    return Plan(mask=0xFF00, rule_priority=10000, nft=(), rules=(), routes=(), sysctls=(), uplinks=(uplink,), policies=())


# -- offline trace -------------------------------------------------------------------


def test_offline_trace_without_a_learned_gateway_is_indeterminate(config: str) -> None:
    data = trace("-c", config, *FLOW, *ADDRESSES)
    by_oif = {p["oif"]: p for p in data["paths"]}
    assert set(by_oif) == {None, "wan1"}
    unknown = by_oif[None]
    assert unknown["verdict"] == "indeterminate" and "gateway: auto" in unknown["reason"]
    assert "--route 'default via GW dev wan0'" in unknown["reason"]
    assert by_oif["wan1"]["verdict"] == "forward"


def test_offline_trace_learns_the_gateway_from_a_described_default_route(config: str) -> None:
    data = trace("-c", config, *FLOW, *ADDRESSES, "--route", "default via 10.0.0.1 dev wan0 metric 100",
                 "--route", "default via 10.0.0.254 dev wan0 metric 200")
    assert sorted((p["verdict"], p["oif"], p["next_hop"]) for p in data["paths"]) == [
        ("forward", "wan0", "10.0.0.1"), ("forward", "wan1", "10.0.1.1"),
    ]


# -- readiness -----------------------------------------------------------------------


class Message(dict[str, Any]):
    """Enough of a pyroute2 route message: header fields by key, attributes by get_attr."""

    def __init__(self, attrs: dict[str, Any], **header: Any) -> None:
        super().__init__(header)
        self.attrs = attrs

    def get_attr(self, name: str) -> Any:
        return self.attrs.get(name)


def default_route(oif: int, gateway: str | None, family: int = 2, metric: int = 0, proto: int = 3,
                  table: int = 254, expires: int | None = None) -> Message:
    attrs: dict[str, Any] = {"RTA_OIF": oif, "RTA_GATEWAY": gateway, "RTA_PRIORITY": metric, "RTA_TABLE": table}
    if expires is not None:
        attrs["RTA_CACHEINFO"] = {"rta_expires": expires}
    return Message(attrs, family=family, dst_len=0, type=1, proto=proto, table=table)


def test_foreign_defaults_prefer_low_metric_and_skip_own_and_expired_routes() -> None:
    routes = [
        default_route(2, "10.0.0.9", metric=200),
        default_route(2, "10.0.0.1", metric=100, table=7),
        default_route(2, "10.0.0.77", proto=77),  # markroute's own: never learned from
        default_route(3, "fe80::1", family=10, expires=-5),  # an RA route whose lifetime ran out
        default_route(3, "fe80::2", family=10, proto=9, metric=1024, expires=12),
    ]
    assert foreign_defaults(routes, {2: "wan0", 3: "wan1"}) == {("wan0", 4): "10.0.0.1", ("wan1", 6): "fe80::2"}
    # a foreign route in markroute's own uplink table is kernel.foreign's to refuse, never a learned gateway
    assert foreign_defaults(routes, {2: "wan0", 3: "wan1"}, {7})[("wan0", 4)] == "10.0.0.9"


WAN0 = Interface("wan0", 2, True, True, ((4, "10.0.0.108", 24, None),))
TUN = Interface("tun0", 4, True, False, ((4, "10.8.0.2", 32, "10.8.0.1"),))


@pytest.mark.parametrize("interface, gateway, learned, ready, missing", [
    (None, "auto", {}, (), ((4, "interface-missing"),)),
    (Interface("wan0", 2, False, True, ()), "auto", {}, (), ((4, "interface-down"),)),
    (Interface("wan0", 2, True, True, ()), "auto", {("wan0", 4): "10.0.0.1"}, (), ((4, "no-address"),)),
    (WAN0, "auto", {}, (), ((4, "no-gateway"),)),
    (WAN0, "auto", {("wan0", 4): "10.0.0.1"}, ((4, "10.0.0.1"),), ()),
    (TUN, "auto", {}, ((4, "10.8.0.1"),), ()),  # point-to-point: the peer
    (WAN0, None, {}, (), ((4, "needs-gateway"), (6, "needs-gateway"))),
    (TUN, None, {}, ((4, None), (6, None)), ()),
    (WAN0, "10.9.9.1", {}, (), ((4, "gateway-unreachable"),)),
])
def test_judge_says_why_an_uplink_waits(interface: Interface | None, gateway: str | None,
                                        learned: dict[tuple[str, int], str], ready: Any, missing: Any) -> None:
    uplink = UplinkPlan("u", interface.name if interface else "wan0", 0x100, 100, (4,) if gateway else (4, 6),
                        gateway, None, True)
    found = judge(uplink, interface, learned, [])
    assert (found.ready, found.missing) == (ready, missing)
    assert found.reason == (missing[0][1] if missing and not ready else None)


def test_fixed_gateway_on_a_connected_route_is_ready() -> None:
    connected = Message({"RTA_OIF": 2, "RTA_DST": "10.0.0.0"}, family=2, dst_len=24, type=1, proto=2)
    uplink = UplinkPlan("u", "wan0", 0x100, 100, (4,), "10.0.0.1", None, True)
    assert judge(uplink, WAN0, {}, [connected]).ready == ((4, "10.0.0.1"),)


# -- the daemon's news ---------------------------------------------------------------


def survey(**uplinks: Readiness) -> Survey:
    return Survey(dict(uplinks), {}, LinkState({}, ()))


def ready(hop: str) -> Readiness:
    return Readiness("dhcp", "wan0", ((4, hop),), ())


WAITING = Readiness("dhcp", "wan0", (), ((4, "no-address"),))


def test_follower_reports_only_real_changes_and_gateway_moves_across_a_wait() -> None:
    follower = Follower()
    assert follower.observe(survey(dhcp=ready("10.0.0.1"))) is not None  # the first look
    assert follower.observe(survey(dhcp=ready("10.0.0.1"))) is None  # a renewal: nothing changed
    news = follower.observe(survey(dhcp=WAITING))
    assert news is not None and news.waiting == {"dhcp": "no-address"} and follower.waiting == {"dhcp": "no-address"}
    news = follower.observe(survey(dhcp=ready("10.1.0.1")))
    assert news is not None and news.ready == ("dhcp",)
    assert news.moved == {"dhcp": ({4: "10.0.0.1"}, {4: "10.1.0.1"})}
    assert follower.waiting == {} and follower.next_hops("dhcp") == {4: "10.1.0.1"}
    follower.forget()
    again = follower.observe(survey(dhcp=ready("10.1.0.1")))
    assert again is not None and again.moved == {} and again.waiting == {}



def test_a_lost_link_is_left_to_the_health_machine() -> None:
    """A missing or down interface takes the uplink down (flap damping), it does not make it wait."""
    follower = Follower()
    follower.observe(survey(dhcp=WAITING))
    missing = Readiness("dhcp", "wan0", (), ((4, "interface-missing"),))
    news = follower.observe(survey(dhcp=missing))
    assert news is not None and news.ready == ("dhcp",) and news.waiting == {} and follower.waiting == {}
    assert follower.reason("dhcp") == "interface-missing"
    news = follower.observe(survey(dhcp=WAITING))
    assert news is not None and news.waiting == {"dhcp": "no-address"}


# -- what status, metrics and the daemon's record show -------------------------------


def test_default_targets_follow_the_learned_next_hop(config: str) -> None:
    from markroute.daemon.monitor import probe_targets

    model, _ = load_model(config)
    assert model is not None
    uplink = model.uplinks["dhcp"]
    assert probe_targets(uplink)[1] == ()  # nothing learned yet: nothing to probe
    assert probe_targets(uplink, {4: "10.0.0.1", 6: "fe80::1"})[1] == ("10.0.0.1", "fe80::1")
    assert probe_targets(uplink, {4: "10.1.0.1"})[1] == ("10.1.0.1",)
    assert probe_targets(model.uplinks["fixed"], {4: "10.9.9.9"})[1] == ("10.0.1.1",)  # a fixed gateway stays


def test_status_and_metrics_carry_waiting_and_next_hops(config: str) -> None:
    from markroute.daemon.metrics import Exposed, exposition
    from markroute.kernel.state import DaemonRecord, UplinkRecord
    from markroute.kernel.status import StatusReport, uplink_statuses

    model, _ = load_model(config)
    assert model is not None
    plan = compile_plan(model)
    readiness = {"dhcp": WAITING, "fixed": Readiness("fixed", "wan1", ((4, "10.0.1.1"),), ())}
    record = DaemonRecord(1, 0.0, 0, {"dhcp": UplinkRecord("waiting", 1.0), "fixed": UplinkRecord("up", 1.0)})
    uplinks = uplink_statuses(list(plan.uplinks), record, readiness=readiness)
    shown = StatusReport(None, True, None, uplinks).to_json()["uplinks"]
    assert [(u["name"], u["waiting"], u["next_hops"]) for u in shown] == [
        ("dhcp", "no-address", {}), ("fixed", None, {"inet": "10.0.1.1"})]
    text = exposition(Exposed(record, plan, readiness), None)
    assert 'markroute_uplink_state{uplink="dhcp",state="waiting"} 1' in text
    assert 'markroute_uplink_waiting{uplink="dhcp",reason="no-address"} 1' in text
    assert 'markroute_uplink_waiting{uplink="fixed"' not in text
    assert 'markroute_uplink_next_hop_info{uplink="fixed",family="inet",next_hop="10.0.1.1"} 1' in text


def test_a_waiting_uplink_survives_the_daemon_record(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """daemon.json is type-checked on read (`records.typed`): `waiting` must be a state it accepts."""
    from markroute.kernel import rundir, state

    monkeypatch.setattr(rundir, "RUN_DIR", tmp_path / "run")
    record = state.DaemonRecord(1, 0.0, 0, {"dhcp": state.UplinkRecord("waiting", 1.0, probed=False)})
    state.save_daemon_record(None, record)
    assert state.load_daemon_record(None) == record
