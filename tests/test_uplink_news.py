"""`UplinkHealth.news`: what `on_change` hears, once per real change of the known state,
starting from `unknown`; and `unknown` carrying no traffic (availability)."""

from __future__ import annotations

from markroute.daemon.failover import availability_of
from markroute.daemon.uplinkstate import Transition, UplinkHealth
from markroute.model import HealthCheck

CHECK = HealthCheck(interval=0.1, timeout=0.2, down=3, up=4)


def feed(health: UplinkHealth, answered: bool, rounds: int, now: float) -> tuple[list[Transition], float]:
    """RULES transitions and news of ROUNDS rounds, news collected like the monitor does."""
    heard: list[Transition] = []
    for _ in range(rounds):
        health.probe(answered, 0.01 if answered else None, now)
        news = health.news()
        heard += [news] if news else []
        now += 0.1
    return heard, now


def pairs(heard: list[Transition]) -> list[tuple[str, str]]:
    return [(t.old, t.new) for t in heard]


def test_a_new_uplink_is_unknown_carries_nothing_and_is_announced_once_judged() -> None:
    health = UplinkHealth("vpn", CHECK, state="unknown")
    assert availability_of({"vpn": health.state}).down == {"vpn"}
    heard, now = feed(health, True, CHECK.up - 1, 0.0)
    assert heard == [] and health.state == "unknown"
    heard, now = feed(health, True, 1, now)
    assert pairs(heard) == [("unknown", "up")] and health.state == "up"
    assert health.news() is None  # exactly once


def test_an_uplink_dead_at_start_is_announced_down_from_unknown() -> None:
    health = UplinkHealth("vpn", CHECK, state="unknown")
    heard, _ = feed(health, False, CHECK.down, 0.0)
    assert pairs(heard) == [("unknown", "down")] and health.state == "down"


def test_a_state_taken_from_the_record_is_announced_when_probes_confirm_it_then_every_change() -> None:
    health = UplinkHealth("isp", CHECK, state="up")  # a restart: the rules keep "up" meanwhile
    heard, now = feed(health, True, CHECK.up, 0.0)
    assert pairs(heard) == [("unknown", "up")]
    more, now = feed(health, False, CHECK.down, now)
    back, now = feed(health, True, CHECK.up, now)
    assert pairs(more + back) == [("up", "down"), ("down", "up")]


def test_a_recorded_down_that_turns_out_up_is_announced_from_unknown_to_up() -> None:
    health = UplinkHealth("isp", CHECK, state="down")
    heard, _ = feed(health, True, CHECK.up, 0.0)
    assert pairs(heard) == [("unknown", "up")] and health.state == "up"


def test_link_state_decides_at_once_for_a_link_only_uplink_and_for_a_missing_link() -> None:
    tunnel = UplinkHealth("vpn", None, state="unknown")
    rules = tunnel.link(True, 0.0)
    assert rules is not None and (rules.old, rules.new) == ("unknown", "up")
    news = tunnel.news()
    assert news is not None and (news.old, news.new, news.reason) == ("unknown", "up", "link up")
    probed = UplinkHealth("isp", CHECK, state="unknown")
    assert probed.link(True, 0.0) is None and probed.news() is None  # probes decide
    gone = UplinkHealth("isp2", CHECK, state="unknown")
    gone.link(False, 0.0)
    news = gone.news()
    assert news is not None and (news.old, news.new) == ("unknown", "down")


def test_probe_traffic_per_day_follows_targets_method_and_rate(tmp_path: object) -> None:
    from markroute.daemon.monitor import UplinkMonitor
    from markroute.daemon.reactor import Reactor
    from markroute.diagnostics import Where
    from markroute.model import Uplink

    def monitor(check: HealthCheck | None, gateway: str | None = "192.0.2.1") -> UplinkMonitor:
        uplink = Uplink("isp", "eth0", Where("x", 1, 1), 0x100, 100, gateway=gateway, check=check)
        return UplinkMonitor(Reactor(lambda exc: None), uplink, UplinkHealth("isp", check), print, print)

    one = monitor(None).bytes_per_day  # icmp to the gateway ten times a second
    assert one == 2 * (20 + 8 + 16) * 10 * 86400
    two = monitor(HealthCheck(targets=("192.0.2.7", "192.0.2.8"), interval=0.2)).bytes_per_day
    assert two == one  # twice the targets at half the rate
    web = monitor(HealthCheck(method="http", targets=("http://192.0.2.80/",))).bytes_per_day
    assert web is not None and one is not None and web > one
    assert monitor(None, gateway=None).bytes_per_day is None  # link state only: no probes
