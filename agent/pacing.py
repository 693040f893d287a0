"""Keeping time in the loop: pacing to camera.fps, and calls that a stop signal can cut short."""

from __future__ import annotations

import threading
import time
from typing import Callable, TypeVar

T = TypeVar("T")


class Stopped(Exception):
    """The stop event was set while waiting."""


class Pacer:
    """Holds the loop to at most ``fps`` iterations per second without bursting to catch up."""

    def __init__(self, fps: float):
        self.interval = 1.0 / fps if fps > 0 else 0.0
        self.next_due = time.monotonic()

    def next_delay(self) -> float:
        """Seconds to wait before the next iteration (0 when unpaced or already late)."""
        if not self.interval:
            return 0.0
        self.next_due = max(self.next_due + self.interval, time.monotonic())
        return max(0.0, self.next_due - time.monotonic())


def call_unless_stopped(call: Callable[[], T], stop: threading.Event) -> T:
    """Run ``call`` in a helper thread; raise Stopped as soon as ``stop`` is set (the call is abandoned)."""
    outcome: dict = {}
    done = threading.Event()

    def target() -> None:
        try:
            outcome["value"] = call()
        except BaseException as exc:  # handed to the caller's thread
            outcome["error"] = exc
        finally:
            done.set()

    threading.Thread(target=target, name="predict", daemon=True).start()
    while not done.wait(0.05):
        if stop.is_set():
            raise Stopped()
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]
