"""The daemon's log: one line per decision, readable by a person and by journald.

Every decision the daemon makes (an uplink's state change, a failover rewrite, a reload,
a repair of what others removed) is one record with structured fields, given with
`event(log, level, message, event=..., uplink=..., reason=...)`. They appear twice:

* in the line itself, as ` key=value` pairs after the message (values with spaces are
  quoted), so `grep event=state uplink=isp_a` works on any copy of the log;
* under systemd, as journal fields (`MARKROUTE_EVENT=state`, `MARKROUTE_UPLINK=isp_a`,
  ...) sent over journald's native protocol socket, so `journalctl MARKROUTE_UPLINK=isp_a`
  selects them. No library: the protocol is `KEY=value` lines in one datagram, with a
  length-prefixed form for values holding a newline. When the socket is missing or a
  send fails, the line goes to stderr as before.

On stderr under systemd (JOURNAL_STREAM set, no journal socket) each line starts with its
syslog priority, `<4>` for a warning, and carries no timestamp: journald adds both.
Anywhere else (a terminal, a test) a line is `HH:MM:SS.mmm LEVEL message key=value ...`.
"""

from __future__ import annotations

import logging
import os
import socket
import struct
import sys
import time
from collections.abc import Mapping
from typing import Any

SYSLOG_PRIORITIES = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3, logging.CRITICAL: 2}
JOURNAL_SOCKET = "/run/systemd/journal/socket"
IDENTIFIER = "markroute"


def event(log: logging.Logger, level: int, message: str, **fields: Any) -> None:
    """Log MESSAGE with FIELDS (None values left out) as structured fields of one decision."""
    log.log(level, message, extra={"fields": {k: v for k, v in fields.items() if v is not None}})


def fields_of(record: logging.LogRecord) -> Mapping[str, Any]:
    found: Mapping[str, Any] = getattr(record, "fields", {})
    return found


def key_values(fields: Mapping[str, Any]) -> str:
    """` key=value` pairs; a value with a space, a quote or an equals sign is quoted."""
    parts = []
    for key, value in fields.items():
        text = str(value)
        if not text or any(c in text for c in ' "=\n'):
            text = '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
        parts.append(f" {key}={text}")
    return "".join(parts)


class JournalFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return f"<{SYSLOG_PRIORITIES.get(record.levelno, 6)}>{record.getMessage()}{key_values(fields_of(record))}"


class TerminalFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        clock = time.strftime("%H:%M:%S", time.localtime(record.created)) + f".{int(record.msecs):03d}"
        return f"{clock} {record.levelname.lower()} {record.getMessage()}{key_values(fields_of(record))}"


def journal_datagram(record: logging.LogRecord) -> bytes:
    """One record in journald's native protocol: MESSAGE, PRIORITY, identifier, MARKROUTE_* fields."""
    fields = {
        "MESSAGE": record.getMessage() + key_values(fields_of(record)),
        "PRIORITY": str(SYSLOG_PRIORITIES.get(record.levelno, 6)),
        "SYSLOG_IDENTIFIER": IDENTIFIER,
    }
    fields.update({f"MARKROUTE_{key.upper()}": str(value) for key, value in fields_of(record).items()})
    out = bytearray()
    for key, value in fields.items():
        data = value.encode()
        if b"\n" in data:
            out += key.encode() + b"\n" + struct.pack("<Q", len(data)) + data + b"\n"
        else:
            out += key.encode() + b"=" + data + b"\n"
    return bytes(out)


class JournalHandler(logging.Handler):
    """Sends each record to journald's socket; a record it cannot send goes to FALLBACK.

    Never blocks: a journald that lags (its queue full) must not stall the failover loop,
    so the record goes to stderr instead, which journald also reads under systemd.
    """

    def __init__(self, path: str, fallback: logging.Handler) -> None:
        super().__init__()
        self.path = path
        self.fallback = fallback
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.setblocking(False)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.sock.sendto(journal_datagram(record), self.path)
        except OSError:
            self.fallback.handle(record)

    def close(self) -> None:
        self.sock.close()
        super().close()


def setup(verbose: bool = False) -> logging.Logger:
    """The `markroute` logger: journald's socket under systemd, else stderr in the form that suits it.

    MARKROUTE_JOURNAL_SOCKET names another socket (tests read the records from their own).
    """
    stream = logging.StreamHandler(sys.stderr)
    under_systemd = bool(os.environ.get("JOURNAL_STREAM"))
    stream.setFormatter(JournalFormatter() if under_systemd else TerminalFormatter())
    path = os.environ.get("MARKROUTE_JOURNAL_SOCKET", JOURNAL_SOCKET)
    handler: logging.Handler = stream
    if under_systemd and os.path.exists(path):
        handler = JournalHandler(path, stream)
    log = logging.getLogger("markroute")
    log.handlers[:] = [handler]
    log.setLevel(logging.DEBUG if verbose else logging.INFO)
    log.propagate = False
    return log
