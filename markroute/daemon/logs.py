"""The daemon's log: one line per event on stderr, in the form journald reads best.

Under systemd (JOURNAL_STREAM is set) each line starts with its syslog priority, `<4>`
for a warning, and carries no timestamp: journald adds both to its own record and
`journalctl -p warning` filters on them. Anywhere else (a terminal, a test) a line is
`HH:MM:SS.mmm LEVEL message`, since nothing else records when it happened.
"""

from __future__ import annotations

import logging
import os
import sys
import time

SYSLOG_PRIORITIES = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3, logging.CRITICAL: 2}


class JournalFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return f"<{SYSLOG_PRIORITIES.get(record.levelno, 6)}>{record.getMessage()}"


class TerminalFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        clock = time.strftime("%H:%M:%S", time.localtime(record.created)) + f".{int(record.msecs):03d}"
        return f"{clock} {record.levelname.lower()} {record.getMessage()}"


def setup(verbose: bool = False) -> logging.Logger:
    """The `markroute` logger, writing to stderr in the form that suits where stderr goes."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JournalFormatter() if os.environ.get("JOURNAL_STREAM") else TerminalFormatter())
    log = logging.getLogger("markroute")
    log.handlers[:] = [handler]
    log.setLevel(logging.DEBUG if verbose else logging.INFO)
    log.propagate = False
    return log
