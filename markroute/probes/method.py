"""What a probe method is made of (`Method`), and what its probers need and offer.

A method is declared once, in its own module of this package, and listed in the
registry (`markroute.probes.METHODS`). Config validates `check:` against the entry,
the daemon's monitor picks default targets and opens probers through it; neither
names a method anywhere else.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from markroute.model import HealthCheck

Answer = Callable[[str, int, float], None]  # on_answer(target, token, rtt)


class Loop(Protocol):
    """What probers need from the daemon's event loop (`daemon.reactor.Reactor` is one)."""

    def watch(self, fileobj: Any, events: int, callback: Callable[[], None]) -> None: ...

    def unwatch(self, fileobj: Any) -> None: ...


@dataclass(frozen=True)
class Egress:
    """Where an uplink's probes leave: its interface (name and index), mark, MAC and addresses."""

    interface: str
    index: int
    mark: int
    mac: str = ""
    sources: Mapping[int, str] = field(default_factory=dict)  # IP version -> address


class Prober(Protocol):
    def send(self, target: str, token: int) -> None:
        """Send one probe; OSError when it cannot even leave (no address, interface gone)."""

    def forget(self, target: str, token: int) -> None:
        """The caller gave up waiting for this probe."""

    def close(self) -> None: ...


@dataclass(frozen=True)
class Method:
    """One probe method: everything config and the daemon need to know about it.

    * `name`: the value of `check.method`;
    * `parse_target`: one target from the config, as text (ValueError says what is
      wrong; config reports it at the target's line);
    * `invalid_targets`: why the parsed targets, together, cannot be probed this way,
      or None; config reports it at the `targets:` line;
    * `default_gateways`: with no `targets`, the uplink's gateways of these IP versions
      are probed; () means the method needs explicit targets, and an uplink without
      gateway (or with an empty tuple here) and no targets is followed by link state only;
    * `canonical`: a target as the kernel reports the source of its answer, so answers
      match targets by plain equality;
    * `prober_key`: targets with the same key share one prober (one socket);
    * `parse_expect`: one entry of `check.expect` (what an answer must say to count:
      addresses for dns, status codes for http), as text; methods without answers to
      judge raise ValueError;
    * `probe_bytes`: IP bytes one probe to a target costs, both ways (for `status`: probe
      traffic per day on metered links);
    * `open_prober`: a prober for a key, pinned to an uplink's egress, given the uplink's
      check (for `expect`).
    """

    name: str
    parse_target: Callable[[object], str]
    invalid_targets: Callable[[tuple[str, ...]], str | None]
    default_gateways: tuple[int, ...]
    canonical: Callable[[str], str]
    prober_key: Callable[[str], str]
    parse_expect: Callable[[object], str]
    probe_bytes: Callable[[str], int]
    open_prober: Callable[[Loop, Egress, str, Answer, HealthCheck], Prober]


def no_expect(value: object) -> str:
    """`Method.parse_expect` of methods whose answers carry nothing to compare."""
    raise ValueError("this method takes no expect: (only dns and http answers carry something to compare)")


def any_targets(targets: tuple[str, ...]) -> str | None:
    """`Method.invalid_targets` of methods that take whatever their `parse_target` accepts."""
    return None
