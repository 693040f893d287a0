"""The fake's world: which cameras exist and how they misbehave (test controls), and what was done to them.

Tests set the controls on ``picamera2._fake`` (this module's ``world``); a child process gets them from the
environment variable FAKE_PICAMERA2, a JSON object with the same names, e.g.
``{"cameras": 1, "hang_after": 5, "hang_for_s": 2, "report": "/tmp/picam.json"}``; ``report`` names a
file the counters are written to (JSON) when that process exits.
"""

from __future__ import annotations

import atexit
import json
import os
import threading
import time
from typing import Any

ENV = "FAKE_PICAMERA2"

IMX708 = {"Model": "imx708", "Location": 2, "Rotation": 180,
          "Id": "/base/axi/pcie@120000/rp1/i2c@88000/imx708@1a"}
CONTROLS = ("cameras", "busy", "hang", "hang_after", "hang_for_s", "swap_channels", "adjusted_size", "report")
COUNTERS = ("created", "closed", "closed_at_exit", "stops", "flushes", "frames", "held", "max_held")


class FakeWorld:
    """Test controls (first group) and counters (second group); one per process, reset by tests."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.open_cameras: dict[int, Any] = {}  # camera number -> the open Picamera2 holding it
        self.reset()

    def reset(self) -> None:
        """Close every open fake camera, then restore the defaults: one healthy imx708, counters at zero."""
        for camera in list(self.open_cameras.values()):
            camera.close()
        self.cameras: int | list[dict] = 1  # how many cameras libcamera lists (or their info dicts)
        self.busy = False  # constructing a Picamera2 fails as when another process holds the camera
        self.hang = False  # the sensor stops delivering frames (a loose ribbon cable); set False to resume
        self.hang_after: int | None = None  # hang once this many frames were delivered in this process
        self.hang_for_s: float | None = None  # ... and resume this long after (None: stay hung)
        self.swap_channels = False  # red and blue come out swapped (picamera2 issue #848, #1325)
        self.adjusted_size: tuple[int, int] | None = None  # libcamera adjusts the main stream to this size
        self.report: str | None = None
        self.created = self.closed = self.closed_at_exit = self.stops = self.flushes = self.frames = 0
        self.held = self.max_held = 0  # completed requests handed out (to callers or stranded jobs), not released
        self.configured: list[dict] = []  # every configuration passed to configure(), as applied
        self.starts: list[dict] = []  # the controls each start() passed to the camera
        self._resume_at: float | None = None

    def load(self, settings: dict) -> None:
        """Apply test controls by name; unknown names fail loudly (a typo would silently test nothing)."""
        unknown = set(settings) - set(CONTROLS)
        if unknown:
            raise ValueError(f"{ENV}: unknown setting(s) {sorted(unknown)}; known: {', '.join(CONTROLS)}")
        for name, value in settings.items():
            setattr(self, name, tuple(value) if name == "adjusted_size" and value else value)

    def camera_list(self) -> list[dict]:
        """What libcamera lists: the info dicts, numbered in order."""
        cameras = self.cameras
        if isinstance(cameras, int):
            cameras = [dict(IMX708, Id=f"{IMX708['Id']}/{n}") if n else dict(IMX708) for n in range(cameras)]
        return [dict(info, Num=number) for number, info in enumerate(cameras)]

    def is_hung(self) -> bool:
        """Whether the sensor delivers no frame now (resuming when hang_for_s has passed)."""
        with self.lock:
            if self.hang and self._resume_at is not None and time.monotonic() >= self._resume_at:
                self.hang, self._resume_at = False, None
            return self.hang

    def frame_delivered(self) -> int:
        """Count one frame; returns its number (1, 2, ... for this process)."""
        with self.lock:
            self.frames += 1
            if self.hang_after is not None and self.frames >= self.hang_after:
                self.hang, self.hang_after = True, None
                self._resume_at = None if self.hang_for_s is None else time.monotonic() + self.hang_for_s
            return self.frames

    def hold(self) -> None:
        with self.lock:
            self.held += 1
            self.max_held = max(self.max_held, self.held)

    def unhold(self) -> None:
        with self.lock:
            self.held -= 1

    def counters(self) -> dict:
        with self.lock:
            return {name: getattr(self, name) for name in COUNTERS} | {
                "configured": len(self.configured), "starts": len(self.starts)}

    def write_report(self) -> None:
        if self.report:
            with open(self.report, "w") as out:
                json.dump(self.counters(), out)


world = FakeWorld()
world.load(json.loads(os.environ.get(ENV) or "{}"))
# Registered before any Picamera2 registers its own close, so it runs after those (atexit is LIFO).
atexit.register(world.write_report)
