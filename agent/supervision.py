"""Watching the loop's health: server outages, repeated errors, and the retained ``state`` topic."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from agent.errors import ServerError
from agent.health import Health
from agent.mqtt import Publisher

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
        return min(self.max_s, self.initial_s * 2 ** min(self.failures - 1, 16))


class RepeatFilter:
    """Lets an error message through once per ``window_s``; repeats are only counted (in ``state``)."""

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


class StateReporter:
    """Publishes the retained ``state``: at once when health flips, at most once a second for counter
    changes (a run of errors must not flood dashboards), and at least every ``interval_s``."""

    MIN_GAP_S = 1.0

    def __init__(self, health: Health, publisher: Publisher, interval_s: float):
        self.health, self.publisher, self.interval_s = health, publisher, interval_s
        self.last_sent = 0.0
        self.last_key: tuple = ()
        self.last_errors = 0

    def publish(self) -> None:
        self.health.refresh_status()
        self.publisher.publish_state(self.health.snapshot(queued=self.publisher.pending(),
                                                          dropped=self.publisher.dropped))
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
        return (h.status, h.server_ok, h.camera_ok, h.version)

    def _errors(self) -> int:
        return sum(self.health.errors.values())
