"""Logging for a daemon: one line per event; under systemd no timestamps of our own, levels as <N> prefixes."""

from __future__ import annotations

import logging
import os
import sys
import time
from typing import TextIO

# syslog priorities understood by journald's stream reader (SyslogLevelPrefix=yes is the default).
_SYSLOG_PRIORITY = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3, logging.CRITICAL: 2}


class JournalFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        priority = _SYSLOG_PRIORITY.get(record.levelno, 6)
        return f"<{priority}>{super().format(record)}"


class RepeatFilter:
    """Lets a message through once per ``window_s``: a loop that keeps failing the same way logs it once."""

    def __init__(self, window_s: float = 300.0):
        self.window_s = window_s
        self.last_seen: dict[str, float] = {}

    def first(self, message: str) -> bool:
        now = time.monotonic()
        seen = self.last_seen.get(message)
        if seen is not None and now - seen < self.window_s:
            return False
        if len(self.last_seen) > 100:  # bounded: distinct messages (file names) must not grow memory
            self.last_seen.clear()
        self.last_seen[message] = now
        return True


class OncePerWindow(logging.Filter):
    """A logging filter built on RepeatFilter, for loggers of libraries that repeat themselves (paho)."""

    def __init__(self, window_s: float = 300.0):
        super().__init__()
        self.repeats = RepeatFilter(window_s)

    def filter(self, record: logging.LogRecord) -> bool:
        return self.repeats.first(record.getMessage())


def under_journal(stream: TextIO | None = None) -> bool:
    """True when our stderr is connected to the journal (systemd sets JOURNAL_STREAM=dev:inode)."""
    stream = stream or sys.stderr
    value = os.environ.get("JOURNAL_STREAM", "")
    try:
        device, inode = (int(part) for part in value.split(":"))
        stat = os.fstat(stream.fileno())
    except (ValueError, OSError, AttributeError):
        return False
    return (stat.st_dev, stat.st_ino) == (device, inode)


def configure_logging(level: str = "info") -> None:
    handler = logging.StreamHandler(sys.stderr)
    if under_journal():
        handler.setFormatter(JournalFormatter("%(name)s: %(message)s"))
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # urllib3 logs every new connection at DEBUG and retries at WARNING; ours are the ones that count.
    logging.getLogger("urllib3").setLevel(logging.ERROR)
