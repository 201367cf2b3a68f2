"""The daemon's pure parts: the health state machine, the chain-rewrite batch, metrics text, records.

No kernel here: health is driven with synthetic probe results and clock values, and the
batch is computed from plans the real compiler made for different `UplinkAvailability` values.
"""

from __future__ import annotations

import logging
import selectors
import socket
import sys
import time
from collections import Counter

import pytest

from markroute.compile import UplinkAvailability, compile_plan
from markroute.config import load_model
from markroute.daemon import uplinkstate as health_module
from markroute.daemon.failover import availability_of, chain_batch, changed_chains
from markroute.daemon.hooks import Hooks
from markroute.daemon.logs import setup
from markroute.daemon.metrics import (
    Exposed,
    Families,
    KernelCounters,
    exposition,
    parse_address,
)
from markroute.daemon.monitor import probe_targets
from markroute.daemon.reactor import Reactor
from markroute.daemon.uplinkstate import Transition, UplinkHealth
from markroute.kernel.links import COUNTER_KEYS
from markroute.kernel.state import DaemonRecord, UplinkRecord
from markroute.model import HealthCheck, Model
from markroute.plan import Plan
from markroute.probes.icmp import checksum
from markroute.probes.sockets import split_target

CHECK = HealthCheck()
CONFIG = """
uplinks:
  isp_a: {interface: wan0, gateway: 10.0.0.1, nat: masquerade}
  isp_b: {interface: wan1, gateway: 10.0.1.1, nat: masquerade}
  ppp: {interface: ppp0, nat: masquerade, check: {method: tcp, targets: ["203.0.113.1:443"]}}
sets:
  big: [198.18.0.0/15, 192.0.2.0/24]
groups:
  both: {balance: {isp_a: 3, isp_b: 1}}
  primary: {failover: [isp_a, both]}
settings: {last_resort: unreachable}
policies:
  - {name: big, to: "@big", via: isp_a}
  - {name: web, dport: 443, via: primary}
  - {name: rest, via: both}
"""


def model(tmp_path: object) -> Model:
    path = tmp_path / "markroute.yaml"  # type: ignore[operator]
    path.write_text(CONFIG)
    loaded, diagnostics = load_model(str(path))
    assert loaded is not None, diagnostics
    return loaded


def rounds(health: UplinkHealth, results: str, start: float, step: float = CHECK.interval) -> tuple[list[str], float]:
    """Feed probe rounds ('+' answered in 10 ms, '-' unanswered); the states each changed to."""
    changes = []
    now = start
    for result in results:
        transition = health.probe(result == "+", 0.01 if result == "+" else None, now)
        if transition:
            changes.append(transition.new)
        now += step
    return changes, now


# -- hysteresis ------------------------------------------------------------------------


def test_down_needs_consecutive_failures_and_up_needs_consecutive_answers() -> None:
    health = UplinkHealth("isp_a", CHECK)
    changes, now = rounds(health, "+--+---+", 0.0)
    assert changes == [] and health.state == "up", "failures not in a row do not count"
    changes, now = rounds(health, "-" * CHECK.down, now)
    assert changes == ["down"]
    changes, now = rounds(health, "+" * (CHECK.up - 1) + "-" + "+" * (CHECK.up - 1), now)
    assert changes == [] and health.state == "down"
    changes, _ = rounds(health, "+", now)
    assert changes == ["up"] and health.transitions == 2


def test_link_loss_is_down_at_once_and_probes_bring_it_back() -> None:
    health = UplinkHealth("isp_a", CHECK)
    lost = health.link(False, 0.0)
    assert lost is not None and (lost.old, lost.new, lost.reason) == ("up", "down", "link lost")
    assert health.link(True, 0.5) is None, "a link that returns must answer probes first"
    changes, _ = rounds(health, "+" * CHECK.up, 0.5)
    assert changes == ["up"]


def test_an_uplink_without_probes_follows_its_link() -> None:
    health = UplinkHealth("ppp", None)
    assert health.link(False, 0.0).new == "down"  # type: ignore[union-attr]
    back = health.link(True, 0.1)
    assert back is not None and back.new == "up"


def test_answers_while_the_link_is_down_do_not_bring_it_up() -> None:
    health = UplinkHealth("isp_a", CHECK)
    health.link(False, 0.0)
    changes, _ = rounds(health, "+" * 3 * CHECK.up, 0.0)
    assert changes == [] and health.state == "down"


# -- flap damping ----------------------------------------------------------------------


def test_flapping_is_held_down_and_released_when_the_penalty_decays() -> None:
    health = UplinkHealth("isp_a", CHECK)
    changes: list[str] = []
    now = 0.0
    for _ in range(10):  # down for 0.5 s, up for 1 s, ten times
        transition = health.link(False, now)
        changes += [transition.new] if transition else []
        health.link(True, now + 0.5)
        more, now = rounds(health, "+" * 10, now + 0.5)
        changes += more
    assert health.suppressed and health.state == "down"
    assert len(changes) <= 5, f"rules changed {len(changes)} times for 10 flaps"
    wait = health.reuse_in(now)
    assert wait is not None and 0 < wait <= health_module.HALF_LIFE * 2 + 0.01
    assert health.review(now + wait / 2) is None
    back = health.review(now + wait + 0.01)
    assert back is not None and back.new == "up" and not health.suppressed


def test_two_bounces_a_minute_apart_are_not_damped() -> None:
    health = UplinkHealth("isp_a", CHECK)
    for start in (0.0, 60.0):
        rounds(health, "-" * CHECK.down, start)
        changes, _ = rounds(health, "+" * CHECK.up, start + 1)
        assert changes == ["up"]
    assert not health.suppressed


# -- degraded --------------------------------------------------------------------------


def test_loss_over_the_limit_degrades_and_recovery_needs_the_margin() -> None:
    check = HealthCheck(max_loss=0.2)
    health = UplinkHealth("isp_a", check)
    changes, now = rounds(health, "++-" * 10, 0.0)  # a third lost, never 4 in a row
    assert changes == ["degraded"] and health.state == "degraded"
    assert "loss" in health.quality_text()
    changes, now = rounds(health, "++++-" * 4, now)  # 20 % loss: at the limit, not under 80 % of it
    assert changes == []
    changes, _ = rounds(health, "+" * 20, now)
    assert changes == ["up"]


def test_rtt_over_the_limit_degrades() -> None:
    health = UplinkHealth("isp_a", HealthCheck(max_rtt=0.05))
    now = 0.0
    changes = []
    for _ in range(20):
        transition = health.probe(True, 0.08, now)
        changes += [transition.new] if transition else []
        now += 0.1
    assert changes == ["degraded"]
    assert health.snapshot().rtt == pytest.approx(0.08)


def test_degraded_members_get_a_smaller_weight() -> None:
    computed = availability_of({"isp_a": "degraded", "isp_b": "up", "ppp": "down"})
    assert computed == UplinkAvailability(down=frozenset({"ppp"}), weight_factor={"isp_a": health_module.DEGRADED_WEIGHT})


# -- the failover batch ----------------------------------------------------------------


def rules_of(plan: Plan, chain: str) -> list[object]:
    return [obj["rule"]["expr"] for obj in plan.nft if "rule" in obj and obj["rule"]["chain"] == chain]


def test_a_dead_uplink_rewrites_only_its_via_and_group_chains(tmp_path: object) -> None:
    loaded = model(tmp_path)
    healthy = compile_plan(loaded)
    dead = compile_plan(loaded, UplinkAvailability(down=frozenset({"isp_a"})))
    batch = chain_batch(healthy, dead)
    assert set(changed_chains(batch)) == {"via_isp_a", "group_both", "group_primary"}
    verbs = [next(iter(command)) for command in batch]
    assert set(verbs) == {"flush", "add"}
    added = [command["add"]["rule"] for command in batch if "add" in command]
    assert all(rule["chain"] in ("via_isp_a", "group_both", "group_primary") for rule in added)
    assert [rule["expr"] for rule in added if rule["chain"] == "via_isp_a"] == rules_of(dead, "via_isp_a")
    assert chain_batch(dead, dead) == []
    back = chain_batch(dead, healthy)
    assert set(changed_chains(back)) == set(changed_chains(batch))


def test_a_degraded_member_changes_only_the_balance_weights(tmp_path: object) -> None:
    loaded = model(tmp_path)
    batch = chain_batch(compile_plan(loaded), compile_plan(loaded, availability_of({"isp_a": "degraded"})))
    assert changed_chains(batch) == ["group_both"]


def test_a_chain_only_the_new_health_needs_is_added_and_removed_again(tmp_path: object) -> None:
    path = tmp_path / "one.yaml"  # type: ignore[operator]
    path.write_text(
        "uplinks:\n  isp_a: {interface: wan0, gateway: 10.0.0.1}\n"
        "settings: {last_resort: blackhole}\npolicies:\n  - {name: all, via: isp_a}\n"
    )
    loaded, _ = load_model(str(path))
    assert loaded is not None
    healthy, dead = compile_plan(loaded), compile_plan(loaded, UplinkAvailability(down=frozenset({"isp_a"})))
    batch = chain_batch(healthy, dead)
    assert batch[0] == {"add": next(obj for obj in dead.nft if obj.get("chain", {}).get("name") == "mark_blackhole")}
    undo = chain_batch(dead, healthy)
    assert undo[-1] == {"delete": {"chain": {"family": "inet", "table": "markroute", "name": "mark_blackhole"}}}


def test_a_config_change_is_not_a_failover(tmp_path: object) -> None:
    loaded = model(tmp_path)
    other = tmp_path / "other.yaml"  # type: ignore[operator]
    other.write_text(CONFIG.replace("192.0.2.0/24", "192.0.2.0/25"))
    changed, _ = load_model(str(other))
    assert changed is not None
    with pytest.raises(ValueError, match="differ in more than chain rules"):
        chain_batch(compile_plan(loaded), compile_plan(changed))


# -- what is probed --------------------------------------------------------------------


def test_probe_targets_default_to_the_gateways_and_link_state(tmp_path: object) -> None:
    loaded = model(tmp_path)
    assert probe_targets(loaded.uplinks["isp_a"]) == (CHECK, ("10.0.0.1",))
    check, targets = probe_targets(loaded.uplinks["ppp"])
    assert check.method == "tcp" and targets == ("203.0.113.1:443",)
    no_gateway = loaded.uplinks["ppp"].__class__(**{**loaded.uplinks["ppp"].__dict__, "check": None})
    assert probe_targets(no_gateway)[1] == ()
    assert split_target("[2001:db8::1]:443") == ("2001:db8::1", 443)


def test_icmp_checksum_of_a_known_packet() -> None:
    # An echo request with identifier 1, sequence 1 and no payload has checksum 0xf7fd.
    assert checksum(bytes([8, 0, 0, 0, 0, 1, 0, 1])) == 0xF7FD


# -- metrics and records ---------------------------------------------------------------


def test_metrics_text_has_one_series_per_state_and_escapes_labels(tmp_path: object) -> None:
    loaded = model(tmp_path)
    record = DaemonRecord(1, 0.0, 3, {
        "isp_a": UplinkRecord("down", 1700000000.0, None, 1.0, 2),
        "isp_b": UplinkRecord("up", 1700000000.0, 0.0123, 0.0, 0),
    })
    kernel = KernelCounters(Counter({0x200: 7}), {"wan0": dict.fromkeys(COUNTER_KEYS, 5)}, [("policy web", 4, 240)])
    text = exposition(Exposed(record, compile_plan(loaded)), kernel)
    assert 'markroute_uplink_state{uplink="isp_a",state="down"} 1' in text
    assert 'markroute_uplink_state{uplink="isp_a",state="up"} 0' in text
    assert 'markroute_uplink_rtt_seconds{uplink="isp_b"} 0.0123' in text
    assert 'markroute_uplink_transitions_total{uplink="isp_a"} 2' in text
    assert "markroute_rule_changes_total 3" in text
    assert text.count("# TYPE markroute_uplink_state gauge") == 1
    assert 'markroute_uplink_connections{uplink="isp_b"} 0' in text
    assert 'markroute_uplink_connections{uplink="isp_a"} 7' in text  # isp_a has the first mark
    assert 'markroute_uplink_receive_bytes_total{uplink="isp_a",interface="wan0"} 5' in text
    assert "markroute_uplink_receive_bytes_total{uplink=\"isp_b\"" not in text, "no counters for a missing interface"
    assert 'markroute_policy_packets_total{policy="web"} 4' in text
    assert 'markroute_policy_bytes_total{policy="rest"} 0' in text
    families = Families()
    families.add("x", "gauge", "h", {"l": 'a"b\\c'}, 1.5)
    assert 'x{l="a\\"b\\\\c"} 1.5' in families.text()


def test_metrics_count_the_elements_of_sets_others_fill(tmp_path: object) -> None:
    loaded = model(tmp_path)
    record = DaemonRecord(1, 0.0, 0, {"isp_a": UplinkRecord("up", 1700000000.0, 0.01, 0.0, 0)})
    kernel = KernelCounters(Counter(), {}, [], [], {"streaming_v4": 12, "streaming_v6": 0})
    text = exposition(Exposed(record, compile_plan(loaded)), kernel)
    assert 'markroute_dynamic_set_elements{set="streaming_v4"} 12' in text
    assert 'markroute_dynamic_set_elements{set="streaming_v6"} 0' in text
    assert text.count("# TYPE markroute_dynamic_set_elements gauge") == 1
    unfilled = exposition(Exposed(record, compile_plan(loaded)), KernelCounters(Counter(), {}, []))
    assert "markroute_dynamic_set_elements" not in unfilled


def test_metrics_address_parsing() -> None:
    assert parse_address("127.0.0.1:9586") == ("127.0.0.1", 9586)
    assert parse_address("[::1]:9586") == ("::1", 9586)
    assert parse_address(":9586") == ("0.0.0.0", 9586)
    for bad in ("9586", "host:", "host:99999", "host:http"):
        with pytest.raises(ValueError, match="is not HOST:PORT"):
            parse_address(bad)


def test_log_lines_carry_syslog_priorities_under_journald(monkeypatch: pytest.MonkeyPatch,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("JOURNAL_STREAM", "8:1234")
    log = setup()
    log.warning("uplink isp_a: up -> down (link lost)")
    log.info("uplink isp_a: down -> up")
    log.debug("not shown without --verbose")
    lines = capsys.readouterr().err.splitlines()
    assert lines == ["<4>uplink isp_a: up -> down (link lost)", "<6>uplink isp_a: down -> up"]
    monkeypatch.delenv("JOURNAL_STREAM")
    setup().error("no journal")
    line = capsys.readouterr().err.strip()
    assert line.endswith(" error no journal") and line[2] == ":" and line[8] == "."


def test_on_change_failures_are_logged_not_raised(caplog: pytest.LogCaptureFixture) -> None:
    log = logging.getLogger("test-hooks")
    change = Transition("isp_a", "up", "down", "link lost")
    Hooks(("/nonexistent/notify",), None, log).run(change)
    failing = Hooks((sys.executable, "-c", "import os, sys; sys.exit(os.environ['MARKROUTE_NEW_STATE'] == 'down')"),
                    None, log)
    failing.run(change)
    failing.running[0][0].wait()
    failing.reap()
    assert "could not start /nonexistent/notify" in caplog.text
    assert "on_change for isp_a (up -> down) exited with status 1" in caplog.text
    assert failing.running == []


def test_reactor_reads_sockets_before_due_timers_and_survives_a_failing_callback() -> None:
    errors: list[Exception] = []
    reactor = Reactor(errors.append)
    order: list[str] = []
    reader, writer = socket.socketpair()
    with reader, writer:
        reactor.watch(reader, selectors.EVENT_READ, lambda: order.append(f"read {reader.recv(10).decode()}"))
        now = reactor.now()
        reactor.call_at(now, lambda: order.append("timer"))
        reactor.call_at(now, lambda: 1 / 0)
        cancelled = reactor.call_at(now, lambda: order.append("cancelled"))
        cancelled.cancel()
        writer.send(b"x")
        time.sleep(0.01)
        reactor.turn()
        reactor.unwatch(reader)
    assert order == ["read x", "timer"]
    assert len(errors) == 1 and isinstance(errors[0], ZeroDivisionError)
