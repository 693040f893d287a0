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
from typing import Callable, Protocol, TypeVar

import numpy as np

from agent.errors import CameraStalled, SourceError
from agent.frames import Frame
from agent.pacing import backoff_s
from agent.sources.base import FrameCounter

logger = logging.getLogger(__name__)

T = TypeVar("T")


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
    """One capture device at the outermost edge (an OpenCV capture, picamera2); used by one thread only."""

    description: str  # safe for logs (no credentials)

    def open(self) -> CameraInfo:
        """Open the device; raises SourceUnavailable when it is not there, SourceError when it fails."""

    def grab(self) -> None:
        """Wait for the next frame and take it off the device (as little work as it allows); SourceError on failure."""

    def retrieve(self) -> np.ndarray:
        """The last grabbed frame as RGB uint8 HxWx3 (colour order and swap_rb applied); SourceError on failure."""

    def close(self) -> None:
        """Let go of the device after a failure, ready to open() again; safe to call more than once."""

    def release(self) -> None:
        """Let go of the device for good (for picamera2 more than close(): re-creating it leaks memory)."""


@dataclass(frozen=True)
class Reconnect:
    """Back-off between attempts to reopen a failed camera: initial_s, doubling, capped at max_s."""

    initial_s: float = 0.5
    max_s: float = 30.0


class LiveSource:
    """A FrameSource over a Camera: freshest frame on demand, reconnects on its own, never blocks forever.

    ``read()`` waits at most ``timeout_s`` for a frame; without one it raises SourceError with the
    reason (the camera's last error), so the loop can report ``camera_ok: false`` while this thread
    keeps trying to reopen the device. A device call that never returns (a wedged driver) cannot be
    recovered in-process: after ``stall_after_s`` reads raise CameraStalled, and the agent exits for
    systemd to restart it. A LiveSource is opened once and closed once.
    """

    live = True
    ahead_ok = False  # a frame read early is a stale frame
    CLOSE_WAIT_S = 2.0
    STALL_MIN_S = 20.0  # V4L2 waits 10 s in select(), older GStreamer builds 30 s or more

    def __init__(self, camera: Camera, *, timeout_s: float = 5.0, reconnect: Reconnect | None = None):
        self.camera = camera
        self.description = camera.description
        self.timeout_s = timeout_s
        self.stall_after_s = max(3 * timeout_s, self.STALL_MIN_S)
        self.reconnect = reconnect or Reconnect()
        self.info: CameraInfo | None = None
        self.reopened = 0  # recoveries after a failure (frames flow again), for tests and the log
        self._counter = FrameCounter()
        self._cond = threading.Condition()
        # read() asks (asked += 1); the thread answers with the next frame it grabs. A frame decoded
        # for an earlier request that timed out is never handed out later: it may be old by then.
        self._asked = 0
        self._answered = 0
        self._latest: Frame | None = None
        self._error: str | None = None  # why the camera is down; None while frames flow
        self._busy_since: float | None = None  # monotonic start of the device call in progress
        self._closing = False
        self._thread: threading.Thread | None = None

    def open(self) -> None:
        """Open the camera now (SourceUnavailable at start means exit 69), then start the capture thread."""
        with self._cond:
            if self._closing or self._thread is not None:
                raise SourceError(f"{self.description}: a camera source is opened only once")
        try:
            info = self.camera.open()
        except BaseException:
            self._release()  # whatever the failed open acquired
            raise
        with self._cond:
            closed_meanwhile = self._closing  # a stop during start-up abandoned this open
            if not closed_meanwhile:
                self.info = info
                self._thread = threading.Thread(target=self._capture, name="capture", daemon=True)
                self._thread.start()
        if closed_meanwhile:
            self._release()
            raise SourceError(f"{self.description}: closed while opening")
        logger.info("source opened kind=camera source=%s %s", self.description, info.describe())

    def read(self) -> Frame:
        """The newest frame, captured after the previous one handed out; SourceError after ``timeout_s``.

        Raises CameraStalled when the capture thread is stuck in one device call or has ended.
        """
        deadline = time.monotonic() + self.timeout_s
        with self._cond:
            self._asked += 1
            self._cond.notify_all()
            while self._answered != self._asked:
                left = deadline - time.monotonic()
                if left <= 0 or self._closing:
                    raise self._no_frame_error()
                self._cond.wait(left)
            assert self._latest is not None
            return self._latest

    def close(self) -> None:
        """Stop the capture thread and release the camera (the thread does, between two frames)."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
            thread = self._thread
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

    def stall(self) -> str | None:
        """Why capture cannot recover in this process (a call that never returns, a dead thread), or None."""
        busy_since, thread = self._busy_since, self._thread
        if busy_since is not None and time.monotonic() - busy_since > self.stall_after_s:
            return f"a call into the camera has not returned for {time.monotonic() - busy_since:.0f} s"
        if thread is not None and not thread.is_alive() and not self._closing:
            return f"the capture thread has ended ({self._error or 'no reason recorded'})"
        return None

    def _no_frame_error(self) -> SourceError:
        if self._closing:
            return SourceError(f"{self.description}: closed")
        stall = self.stall()
        if stall is not None:
            return CameraStalled(f"{self.description}: {stall}; the agent must restart to recover it")
        reason = self._error or "the camera delivers no frames"
        return SourceError(f"{self.description}: no frame for {self.timeout_s:g} s: {reason}")

    def _release(self) -> None:
        try:
            self.camera.release()
        except Exception as exc:  # a driver failing to let go must not hide why we let go
            logger.warning("camera release failed source=%s: %s", self.description, exc)

    # --- the capture thread -----------------------------------------------------------------------

    def _capture(self) -> None:
        failures = 0
        opened = True  # open() opened it
        down_since: float | None = None
        try:
            while not self._closing:
                try:
                    if not opened:
                        self.info = self._device_call(self.camera.open)
                        opened = True
                    self._take_frame()
                except SourceError as exc:
                    if opened:
                        self._device_call(self.camera.close, quiet=True)
                    opened = False
                    failures += 1
                    down_since = down_since or time.monotonic()
                    self._failed(exc, failures)
                    continue
                if self._error is not None:  # the first frame after an outage: only now is it back
                    self._recovered(down_since or time.monotonic(), failures)
                    failures, down_since = 0, None
        except Exception as exc:  # our own bug: logged, and read() reports the thread as ended
            logger.exception("capture thread failed source=%s: %s", self.description, exc)
            self._error = f"{type(exc).__name__}: {exc}"
        finally:
            self._release()

    def _device_call(self, call: Callable[[], T], quiet: bool = False) -> T | None:
        """``call()`` into the camera, timed for stall detection; any library exception becomes a SourceError."""
        self._busy_since = time.monotonic()
        try:
            return call()
        except Exception as exc:  # cv2.error, a driver's RuntimeError…: a camera failure like any other
            if quiet:
                logger.debug("camera call failed source=%s: %s", self.description, exc)
                return None
            if isinstance(exc, SourceError):
                raise
            raise SourceError(f"{self.description}: {type(exc).__name__}: {exc}") from exc
        finally:
            self._busy_since = None

    def _take_frame(self) -> None:
        self._device_call(self.camera.grab)
        captured_at = time.time()  # the grab is the capture; decoding later does not make it newer
        with self._cond:
            request = self._asked
        if request == self._answered:
            return  # nobody waits: the frame is dropped undecoded
        rgb = self._device_call(self.camera.retrieve)
        assert rgb is not None
        with self._cond:
            self._latest = self._counter.stamp_at(rgb, self.description, captured_at)
            self._answered = request
            self._cond.notify_all()

    def _recovered(self, down_since: float, attempts: int) -> None:
        self.reopened += 1
        self._error = None
        info = self.info.describe() if self.info else ""
        logger.info("camera reopened source=%s after_s=%.1f attempts=%d %s", self.description,
                    time.monotonic() - down_since, attempts, info)

    def _failed(self, exc: SourceError, failures: int) -> None:
        """Record why the camera is down and wait before the next attempt (ends early on close).

        The back-off grows until a frame arrives, not merely until an open succeeds: a camera that
        accepts and then drops at once (an RTSP camera at its session limit) must not be hammered.
        """
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
