"""Counters and status that feed the retained ``state`` topic (and, later, systemd STATUS=)."""

from __future__ import annotations

import enum
import time
from collections import Counter
from dataclasses import dataclass, field

from agent import __version__

# This many frames in a row without a result (bad files, 4xx, bad replies) make the status "degraded".
FAILED_FRAMES_DEGRADED = 3


class Status(str, enum.Enum):
    STARTING = "starting"  # resolving the model, opening the source
    RUNNING = "running"  # frames flow and results are published
    DEGRADED = "degraded"  # running, but the server or camera is failing, or frames keep failing
    PAUSED = "paused"  # a pause command holds classification
    STOPPING = "stopping"  # signal received or finite source done; flushing
    STOPPED = "stopped"  # clean exit


@dataclass
class Health:
    """Mutable run-time health, owned by the main loop; ``snapshot()`` is what ``state`` publishes."""

    device: str
    model: str
    label: str | None
    version: str | None = None
    status: Status = Status.STARTING
    server_ok: bool = True
    camera_ok: bool = True
    last_error: str | None = None
    frames: int = 0
    results: int = 0
    skipped: int = 0  # frames not sent because the scene had not changed (camera.skip_unchanged)
    failed_in_a_row: int = 0  # frames that gave no result (bad file, 4xx, bad reply) since the last result
    errors: Counter = field(default_factory=Counter)
    started: float = field(default_factory=time.monotonic)
    _rate_window: list = field(default_factory=list)
    # Fleet control (agent/control.py): the device's groups, its pin (configured / assigned), a rollback.
    groups: tuple[str, ...] = ()
    pin: dict | None = None
    paused: bool = False
    rollback: dict | None = None

    def record_result(self) -> None:
        self.results += 1
        self.failed_in_a_row = 0
        now = time.monotonic()
        self._rate_window.append(now)
        while self._rate_window and now - self._rate_window[0] > 10.0:
            self._rate_window.pop(0)

    def record_failed_frame(self) -> None:
        self.failed_in_a_row += 1

    def record_error(self, kind: str, message: str) -> None:
        self.errors[kind] += 1
        self.last_error = message

    @property
    def fps(self) -> float:
        """Results per second over the last 10 seconds."""
        window = self._rate_window
        if len(window) < 2:
            return 0.0
        span = max(time.monotonic() - window[0], window[-1] - window[0], 1e-6)
        return round(len(window) / max(span, 1.0), 2)

    def refresh_status(self) -> None:
        if self.status in (Status.STARTING, Status.STOPPING, Status.STOPPED):
            return
        if self.paused:
            self.status = Status.PAUSED
            return
        healthy = self.server_ok and self.camera_ok and self.failed_in_a_row < FAILED_FRAMES_DEGRADED
        self.status = Status.RUNNING if healthy else Status.DEGRADED

    def snapshot(self, queued: int, dropped: int = 0) -> dict:
        return {
            "device": self.device,
            "status": self.status.value,
            "model": self.model,
            "version": self.version,
            "label": self.label,
            "fps": self.fps,
            "frames": self.frames,
            "results": self.results,
            "skipped": self.skipped,
            "errors": dict(self.errors),
            "server_ok": self.server_ok,
            "camera_ok": self.camera_ok,
            "queued": queued,
            "dropped": dropped,
            "last_error": self.last_error,
            "uptime_s": round(time.monotonic() - self.started, 1),
            "groups": list(self.groups),
            "paused": self.paused,
            "rollback": self.rollback,
            **({"pin": self.pin} if self.pin is not None else {}),  # set once the run knows its assignment
            "agent_version": __version__,
        }

    def summary(self) -> str:
        """One line for logs and systemd STATUS=."""
        return (f"{self.status.value}: {self.results} results, {sum(self.errors.values())} errors, "
                f"server {'ok' if self.server_ok else 'DOWN'}, camera {'ok' if self.camera_ok else 'DOWN'}")
