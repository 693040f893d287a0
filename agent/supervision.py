"""Watching the loop's health: server outages, repeated errors, and the retained ``state`` topic."""

from __future__ import annotations

import logging
import random
import time
from dataclasses import dataclass

from agent.errors import ServerError
from agent.health import Health
from agent.mqtt import Publisher
from agent.pacing import backoff_s
from agent.sdnotify import Notifier

logger = logging.getLogger(__name__)


@dataclass
class Outage:
    """Server up/down bookkeeping: one log line when it goes down, one when it is back, capped pauses."""

    health: Health
    initial_s: float
    max_s: float = 30.0
    since: float | None = None
    failures: int = 0

    def down(self, exc: ServerError) -> None:
        self.failures += 1
        self.health.record_error(exc.kind, str(exc))
        if self.since is None:
            self.since = time.monotonic()
            self.health.server_ok = False
            self.health.refresh_status()
            logger.error("server unavailable, will keep retrying: %s", exc)

    def up(self) -> None:
        if self.since is not None:
            logger.info("server back after %.1f s failures=%d", time.monotonic() - self.since, self.failures)
        self.since, self.failures = None, 0
        self.health.server_ok = True
        self.health.refresh_status()

    def pause_s(self) -> float:
        """Exponential, capped, jittered down to half: a fleet that lost the server together comes back spread out."""
        return backoff_s(self.failures, self.initial_s, self.max_s) * random.uniform(0.5, 1.0)


class StateReporter:
    """Publishes the retained ``state``: at once when health flips, at most once a second for counter
    changes (a run of errors must not flood dashboards), and at least every ``interval_s``."""

    MIN_GAP_S = 1.0

    def __init__(self, health: Health, publisher: Publisher, interval_s: float):
        self.health, self.publisher, self.interval_s = health, publisher, interval_s
        self.last_sent = 0.0
        self.last_key: tuple = ()
        self.last_errors = 0

    def snapshot(self) -> dict:
        """The state payload as it is now."""
        self.health.refresh_status()
        return self.health.snapshot(queued=self.publisher.pending(), dropped=self.publisher.dropped)

    def publish(self) -> None:
        self.publisher.publish_state(self.snapshot())
        self.last_sent = time.monotonic()
        self.last_key, self.last_errors = self._key(), self._errors()

    def maybe_publish(self) -> None:
        self.health.refresh_status()
        since = time.monotonic() - self.last_sent
        if (self._key() != self.last_key or since >= self.interval_s
                or (self._errors() != self.last_errors and since >= self.MIN_GAP_S)):
            self.publish()

    def _key(self) -> tuple:
        h = self.health
        return (h.status, h.server_ok, h.camera_ok, h.version, str(h.pin), h.paused)

    def _errors(self) -> int:
        return sum(self.health.errors.values())


class Heartbeat:
    """systemd's view of the loop: READY once a frame made it through, WATCHDOG=1 only after progress.

    ``progress()`` is called by the loop after each decision (a result, a skipped frame, a deliberate
    wait); a source or call that hangs calls nothing, so the watchdog fires. If the frame path is not
    working after ``ready_after_s`` (server down at boot), READY is sent anyway with the reason in
    STATUS, so that ``systemctl start`` returns and the watchdog takes over.
    """

    def __init__(self, notifier: Notifier, health: Health, ready_after_s: float = 60.0):
        self.notifier, self.health = notifier, health
        self.interval = notifier.watchdog_interval
        self.started = time.monotonic()
        self.ready_after_s = ready_after_s
        self.is_ready = False
        self.last_ping = self.last_status = 0.0
        self.last_summary = ""

    def ready(self) -> None:
        if not self.is_ready:
            self.is_ready = True
            self.notifier.ready(self.health.summary())
            logger.debug("systemd ready sent")

    def progress(self) -> None:
        now = time.monotonic()
        if not self.is_ready and now - self.started >= self.ready_after_s:
            self.ready()  # degraded, but alive: the summary says why
        # Ping at every progress, at most once a second: the gap systemd sees is then the longest
        # stretch without progress (one request timeout), not that plus half a watchdog period.
        if self.interval is not None and now - self.last_ping >= min(self.interval, 1.0):
            self.notifier.watchdog()
            self.last_ping = now
        key = f"{self.health.status.value} {self.health.server_ok} {self.health.camera_ok}"
        if key != self.last_summary or now - self.last_status >= 10.0:  # counters alone: every 10 s
            self.notifier.status(self.health.summary())
            self.last_summary, self.last_status = key, now

    def slice_s(self) -> float:
        """Longest wait between two progress() calls that keeps the watchdog fed."""
        return self.interval if self.interval is not None else 1.0

    def stopping(self) -> None:
        self.notifier.stopping(self.health.summary())
