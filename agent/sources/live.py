"""Live cameras: one capture thread per camera that keeps only the newest frame and reconnects by itself.

A camera buffers frames (V4L2 keeps 4, GStreamer and FFmpeg more); a classifier that reads at its own
pace would work on ever older pictures. The capture thread therefore takes every frame off the device
as it comes (``grab``) and converts one to RGB (``retrieve``) only when the loop asks for a frame, so
the frame handed out is never older than one capture interval, however slow the server is. What a
frame nobody asked for saves depends on the device: V4L2 skips the MJPEG decoding, picamera2 the copy,
GStreamer the conversion; FFmpeg streams decode every frame in ``grab`` (inter-frame codecs need
them all) and only skip the colour conversion.

When the device fails (unplugged, stream cut, read timeout) the thread closes it, waits with a capped
back-off and opens it again, in the same thread: no thread, descriptor or buffer is left behind.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from agent.errors import SourceError
from agent.frames import Frame
from agent.pacing import backoff_s
from agent.sources.base import FrameCounter

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class CameraInfo:
    """What an opened camera reports about itself, for ``check`` and the log."""

    width: int
    height: int
    fps: float  # 0 when the device does not say
    colour: str  # how its pixels become RGB, e.g. "BGR from OpenCV, converted to RGB"

    def describe(self) -> str:
        fps = f"{self.fps:g} fps" if self.fps > 0 else "fps unknown"
        return f"{self.width}x{self.height}, {fps}; colour: {self.colour}"


class Camera(Protocol):
    """One capture device at the outermost edge (an OpenCV capture, picamera2); used by one thread only.

    Optional ``release()``: when present, the capture thread calls it instead of ``close()`` when the source
    is done; ``close()`` then only has to stop the device so that ``open()`` can restart it on a reconnect.
    """

    description: str  # safe for logs (no credentials)

    def open(self) -> CameraInfo:
        """Open the device; raises SourceUnavailable when it is not there, SourceError when it fails."""

    def grab(self) -> None:
        """Wait for the next frame and take it off the device (as little work as it allows); SourceError on failure."""

    def retrieve(self) -> np.ndarray:
        """The last grabbed frame as RGB uint8 HxWx3 (colour order and swap_rb applied); SourceError on failure."""

    def close(self) -> None:
        """Release the device; safe to call more than once and after a failed open."""


@dataclass(frozen=True)
class Reconnect:
    """Back-off between attempts to reopen a failed camera: initial_s, doubling, capped at max_s."""

    initial_s: float = 0.5
    max_s: float = 30.0


class LiveSource:
    """A FrameSource over a Camera: freshest frame on demand, reconnects on its own, never blocks forever.

    ``read()`` waits at most ``timeout_s`` for a frame; without one it raises SourceError with the
    reason (the camera's last error), so the loop can report ``camera_ok: false`` while this thread
    keeps trying to reopen the device.
    """

    live = True
    CLOSE_WAIT_S = 2.0

    def __init__(self, camera: Camera, *, timeout_s: float = 5.0, reconnect: Reconnect | None = None):
        self.camera = camera
        self.description = camera.description
        self.timeout_s = timeout_s
        self.reconnect = reconnect or Reconnect()
        self.info: CameraInfo | None = None
        self.reopened = 0  # successful reopenings after a failure, for tests and the log
        self._counter = FrameCounter()
        self._cond = threading.Condition()
        # read() asks (asked += 1); the thread answers with the next frame it grabs. A frame decoded
        # for an earlier request that timed out is never handed out later: it may be old by then.
        self._asked = 0
        self._answered = 0
        self._latest: Frame | None = None
        self._error: str | None = None  # why the camera is down; None while frames flow
        self._closing = False
        self._thread: threading.Thread | None = None

    def open(self) -> None:
        """Open the camera now (SourceUnavailable at start means exit 69), then start the capture thread."""
        try:
            self.info = self.camera.open()
        except BaseException:
            self.camera.close()  # whatever the failed open acquired
            raise
        logger.info("source opened kind=camera source=%s %s", self.description, self.info.describe())
        self._closing = False
        self._thread = threading.Thread(target=self._capture, name="capture", daemon=True)
        self._thread.start()

    def read(self) -> Frame:
        """The newest frame, captured after the previous one handed out; SourceError after ``timeout_s``."""
        deadline = time.monotonic() + self.timeout_s
        with self._cond:
            self._asked += 1
            self._cond.notify_all()
            while self._answered != self._asked:
                left = deadline - time.monotonic()
                if left <= 0 or self._closing:
                    raise SourceError(self._no_frame_reason())
                self._cond.wait(left)
            assert self._latest is not None
            return self._latest

    def close(self) -> None:
        """Stop the capture thread and release the camera (the thread does, between two frames)."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        thread, self._thread = self._thread, None
        if thread is not None and thread is not threading.current_thread():
            # A grab normally returns within one frame interval and the thread then releases the
            # camera. One stuck in a read timeout is left to the (daemon) thread rather than released
            # under its feet: shutdown must stay within its 5 s.
            thread.join(self.CLOSE_WAIT_S)
            if thread.is_alive():
                logger.warning("capture thread did not stop source=%s", self.description)

    @property
    def camera_error(self) -> str | None:
        """Why the camera is down right now, or None while frames flow."""
        return self._error

    def _no_frame_reason(self) -> str:
        if self._closing:
            return f"{self.description}: closed"
        reason = self._error or "the camera delivers no frames"
        return f"{self.description}: no frame for {self.timeout_s:g} s: {reason}"

    # --- the capture thread -----------------------------------------------------------------------

    def _capture(self) -> None:
        failures = 0
        opened = True  # open() opened it
        down_since: float | None = None
        try:
            while not self._closing:
                if not opened:
                    try:
                        self.info = self.camera.open()
                    except SourceError as exc:
                        failures += 1
                        self._failed(exc, failures)
                        continue
                    opened, failures = True, 0
                    self.reopened += 1
                    logger.info("camera reopened source=%s after_s=%.1f %s", self.description,
                                time.monotonic() - (down_since or time.monotonic()), self.info.describe())
                try:
                    self._take_frame()
                except SourceError as exc:
                    self.camera.close()
                    opened = False
                    failures += 1
                    if down_since is None:
                        down_since = time.monotonic()
                    self._failed(exc, failures)
                    continue
                if self._error is not None:
                    self._error, down_since = None, None
        except Exception as exc:  # a library bug must not kill capture silently
            logger.exception("capture thread failed source=%s: %s", self.description, exc)
            self._error = f"capture thread failed: {type(exc).__name__}: {exc}"
        finally:
            # close() only stops a camera that reopens by restarting one device object (picamera2, where
            # re-creating it leaks memory); such a camera has release() to let go of it for good.
            getattr(self.camera, "release", self.camera.close)()

    def _take_frame(self) -> None:
        self.camera.grab()
        captured_at = time.time()  # the grab is the capture; decoding later does not make it newer
        with self._cond:
            request = self._asked
        if request == self._answered:
            return  # nobody waits: the frame is dropped undecoded
        rgb = self.camera.retrieve()
        with self._cond:
            self._latest = self._counter.stamp_at(rgb, self.description, captured_at)
            self._answered = request
            self._cond.notify_all()

    def _failed(self, exc: SourceError, failures: int) -> None:
        """Record why the camera is down and wait before the next attempt (ends early on close)."""
        if self._error is None:
            logger.warning("camera lost source=%s, reconnecting: %s", self.description, exc)
        else:
            logger.debug("camera still down source=%s attempt=%d: %s", self.description, failures, exc)
        self._error = str(exc)
        pause = backoff_s(failures, self.reconnect.initial_s, self.reconnect.max_s)
        with self._cond:
            self._cond.notify_all()  # a waiting read() can report the reason at its deadline
            deadline = time.monotonic() + pause
            while not self._closing and time.monotonic() < deadline:
                self._cond.wait(deadline - time.monotonic())
