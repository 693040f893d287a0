"""Reading ahead on a file source: the next frame is read and its request made while the server answers.

Unpaced (camera.fps 0) on a folder or a video file, a frame costs the device's work (decode, fit, encode)
plus the server's answer, one after the other. Doing the next frame's work during the wait overlaps them:
the loop then runs at the pace of the slower of the two. Cameras are never read ahead (a frame read early
is a stale frame), nor paced runs (the frame would wait, its latency growing for nothing).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from agent.frames import Frame
from agent.pacing import Job, Worker
from agent.sources.base import FrameSource

logger = logging.getLogger(__name__)

# Frames above this many pixels are not read ahead: two 12 MP photos in memory at once is 72 MB (a Pi Zero 2
# has 512 MB in all), and the overlap is a small share of such a frame's cost anyway.
MAX_AHEAD_PIXELS = 4_000_000
READS_WAIT_S = 1.0  # how long a reload or a shutdown waits for a read in flight before leaving its source open

# What a prepared request was made for (model, encoder, signature): a reload or a command between the
# read and the request changes it, and the request is then made again.
Recipe = tuple[object, ...]


@dataclass(frozen=True)
class Ahead:
    """A frame read ahead (None: the source ended), with its request body when one was made."""

    frame: Frame | None
    body: bytes | None = None
    recipe: Recipe | None = None

    def body_for(self, recipe: Recipe) -> bytes | None:
        """The body made ahead when it was made by this recipe (the very same objects), else None."""
        if self.recipe is None or len(self.recipe) != len(recipe):
            return None
        return self.body if all(made is now for made, now in zip(self.recipe, recipe)) else None


class ReadAhead:
    """At most one read in flight, on its own thread; used from the loop's thread only."""

    def __init__(self, stop: threading.Event):
        self.stop = stop
        self._worker = Worker("read-ahead")
        self._job: Job[Ahead] | None = None
        self._source: FrameSource | None = None

    @staticmethod
    def worth_it(source: FrameSource, frame: Frame) -> bool:
        """Whether to read after ``frame`` ahead: a folder or a video file (not a camera), frames up to 4 MP."""
        return source.ahead_ok and frame.rgb.shape[0] * frame.rgb.shape[1] <= MAX_AHEAD_PIXELS

    def start(self, source: FrameSource, recipe: Recipe | None, make_body: Callable[[Frame], bytes]) -> None:
        """Read the next frame now; with a ``recipe``, also make its request body with ``make_body``."""
        if self._job is None:
            self._source = source
            self._job = self._worker.submit(lambda: _read(source, recipe, make_body), self.stop)

    def take(self, source: FrameSource) -> Ahead | None:
        """The frame read ahead from ``source``, or None when none is (a read error is raised here, in order).

        Raises Stopped when the stop signal comes while the read is still running.
        """
        job = self._job
        if job is None:
            return None
        try:
            ahead = job.result(self.stop)
        finally:
            if job.done.is_set():  # on Stopped it may still run: then kept, for drop() to wait for it
                self._job = None
        return ahead if self._source is source else None  # a reload replaced the source: read afresh

    def drop(self, timeout_s: float) -> bool:
        """Forget the read ahead, once it is over; False if it still runs after ``timeout_s`` (stop or not).

        Its source is about to close (reload, shutdown): closing a video under a read crashes OpenCV.
        """
        job = self._job
        if job is not None and not job.done.wait(timeout_s):
            return False
        self._job = None
        return True

    def close(self) -> None:
        self._worker.close()


def reads_over(reader: ReadAhead, worker: Worker, timeout_s: float) -> bool:
    """No call left running on the source's threads (waited up to ``timeout_s``): only then may it close."""
    until = time.monotonic() + timeout_s
    if reader.drop(timeout_s) and worker.idle(max(0.0, until - time.monotonic())):
        return True
    logger.warning("source left open: a read or request is still running after %g s", timeout_s)
    return False


def _read(source: FrameSource, recipe: Recipe | None, make_body: Callable[[Frame], bytes]) -> Ahead:
    frame = source.read()
    if frame is not None:
        logger.debug("read ahead origin=%s", frame.origin)
    if frame is None or recipe is None:
        return Ahead(frame)
    try:
        return Ahead(frame, make_body(frame), recipe)
    except Exception:  # noqa: BLE001 - made again in the loop, whose error handling reports it
        return Ahead(frame)
