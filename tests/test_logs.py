"""The daemon's decisions as structured log records: key=value in the line, journal fields
over journald's native protocol (read here from a socket of the test's own, never the host's)."""

from __future__ import annotations

import logging
import os
import socket
import struct
import threading
import time
from pathlib import Path

import pytest
from daemon_helpers import (  # noqa: F401 (dlab: a fixture)
    DaemonLab,
    dlab,
)
from kernelhelp import KERNEL

from markroute.daemon import logs

CONFIG = """
uplinks:
  isp_a: {interface: wan0, gateway: 10.0.0.1, nat: masquerade}
  isp_b: {interface: wan1, gateway: 10.0.1.1, nat: masquerade}
groups:
  primary: {failover: [isp_a, isp_b]}
policies:
  - {name: rest, to: 203.0.113.0/24, via: primary}
"""


def parse_datagram(data: bytes) -> dict[str, str]:
    """journald's native protocol read back: KEY=value lines, or KEY\\n<u64 length><value>\\n."""
    fields: dict[str, str] = {}
    while data:
        line, _, rest = data.partition(b"\n")
        if b"=" in line:
            key, _, value = line.partition(b"=")
            fields[key.decode()] = value.decode()
            data = rest
        else:
            (length,) = struct.unpack("<Q", rest[:8])
            fields[line.decode()] = rest[8:8 + length].decode()
            data = rest[8 + length + 1:]
    return fields


def record(message: str, **fields: object) -> logging.LogRecord:
    rec = logging.LogRecord("markroute", logging.WARNING, __file__, 1, message, None, None)
    rec.fields = fields
    return rec


def test_fields_follow_the_message_and_values_with_spaces_are_quoted() -> None:
    line = logs.TerminalFormatter().format(record("uplink isp_a: up -> down", event="state", reason="probes failed"))
    assert line.endswith('uplink isp_a: up -> down event=state reason="probes failed"')
    assert logs.JournalFormatter().format(record("x", uplink="isp_a")) == "<4>x uplink=isp_a"


def test_the_journal_datagram_carries_priority_identifier_and_one_field_per_key() -> None:
    fields = parse_datagram(logs.journal_datagram(record("line one\nline two", event="repair", by="networkd")))
    assert fields["PRIORITY"] == "4" and fields["SYSLOG_IDENTIFIER"] == "markroute"
    assert fields["MESSAGE"].startswith("line one\nline two") and fields["MARKROUTE_BY"] == "networkd"
    assert fields["MARKROUTE_EVENT"] == "repair"


@KERNEL
def test_a_failover_is_logged_with_uplink_and_reason_to_the_journal_socket(
    dlab: DaemonLab, tmp_path: Path, monkeypatch: pytest.MonkeyPatch  # noqa: F811
) -> None:
    d, r = dlab, dlab.router
    path = str(tmp_path / "journal.sock")
    journal = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    journal.bind(path)
    journal.settimeout(0.2)
    monkeypatch.setenv("JOURNAL_STREAM", "0:0")
    monkeypatch.setenv("MARKROUTE_JOURNAL_SOCKET", path)
    received: list[dict[str, str]] = []
    done = threading.Event()

    def drain() -> None:
        while not done.is_set():
            try:
                received.append(parse_datagram(journal.recv(65536)))
            except TimeoutError:
                continue

    reader = threading.Thread(target=drain)
    reader.start()
    try:
        d.start(d.write(CONFIG))
        d.wait_states({"isp_a": "up", "isp_b": "up"})
        d.set_link(r.isps[0], "down0", up=False)
        d.wait_states({"isp_a": "down"}, timeout=10)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not any(
                f.get("MARKROUTE_EVENT") == "failover" and f.get("MARKROUTE_DOWN") == "isp_a" for f in received):
            time.sleep(0.05)
    finally:
        done.set()
        reader.join()
        journal.close()
        os.unlink(path)
    states = [f for f in received if f.get("MARKROUTE_EVENT") == "state" and f.get("MARKROUTE_NEW") == "down"]
    assert states and states[0]["MARKROUTE_UPLINK"] == "isp_a" and states[0]["MARKROUTE_REASON"] == "link lost"
    assert states[0]["PRIORITY"] == "4" and "event=state uplink=isp_a" in states[0]["MESSAGE"]
    # the first rewrite may be the start's (uplinks unknown -> up, nothing down): the failover is the one naming isp_a
    failover = [f for f in received if f.get("MARKROUTE_EVENT") == "failover" and f.get("MARKROUTE_DOWN") == "isp_a"]
    assert failover and "group_primary" in failover[0]["MARKROUTE_CHAINS"]
    assert "uplink isp_a" not in d.log(), "with the journal socket there, records go there, not to stderr"
