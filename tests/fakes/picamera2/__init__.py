"""A fake picamera2 (raspberrypi/picamera2 0.3.x API) for machines without a Pi camera.

Used only at the import edge: put tests/fakes first on sys.path (in-process: monkeypatch.syspath_prepend
and drop any cached ``picamera2``/``libcamera`` from sys.modules; a child process: PYTHONPATH) and
``import picamera2`` finds this package, with ``libcamera`` next to it. See ``_camera`` for what behaves as
on a Pi, ``_scene`` for the pixels and ``_world`` for the test controls (``picamera2._fake``) and the
FAKE_PICAMERA2 environment variable.
"""

from __future__ import annotations

from concurrent.futures import CancelledError, TimeoutError

from ._camera import CompletedRequest, Job, Picamera2
from ._scene import frame_number, scene
from ._world import world as _fake

__all__ = ["CancelledError", "CompletedRequest", "Job", "Picamera2", "TimeoutError", "_fake", "frame_number",
           "scene"]
