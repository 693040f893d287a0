"""Frames of a video file through OpenCV, sampled at camera.fps in video time."""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

from agent.errors import FrameDecodeError, SourceError, SourceUnavailable
from agent.frames import Frame
from agent.sources.base import FrameCounter
from agent.sources.color import to_rgb

logger = logging.getLogger(__name__)

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mkv", ".mov", ".webm", ".m4v", ".mjpeg", ".mjpg", ".h264", ".ts",
                    ".mpg", ".mpeg")

NO_OPENCV = ("OpenCV is not installed, and video files need it: install python3-opencv (apt) "
             "or `pip install catdog-agent[opencv]`")


def import_cv2() -> Any:
    """The cv2 module, imported on first use so the agent runs without OpenCV for folders and images."""
    try:
        import cv2
    except ImportError as exc:
        raise SourceUnavailable(NO_OPENCV) from exc
    return cv2


class FrameSampler:
    """Decides which frame indices to emit so that ``fps`` frames come out per second of video time.

    Frame i lies in time slot floor(i * fps / video_fps); the first frame of each slot is emitted.
    With fps 0 or an unknown video_fps every frame is emitted.
    """

    def __init__(self, fps: float, video_fps: float):
        usable = fps > 0 and video_fps > 0 and math.isfinite(video_fps)
        self.ratio = fps / video_fps if usable else 0.0
        self._last_slot = -1

    def wants(self, index: int) -> bool:
        """True when frame ``index`` (0-based within one pass) should be emitted."""
        if self.ratio == 0.0:
            return True
        slot = math.floor(index * self.ratio + 1e-9)  # 1e-9 absorbs float error at exact slot starts
        if slot == self._last_slot:
            return False
        self._last_slot = slot
        return True


class VideoFileSource:
    """A video file read with OpenCV; skipped frames are only grabbed, never decoded."""

    live = False
    ahead_ok = True

    def __init__(self, path: str | Path, *, fps: float = 0.0, loop: bool = False, swap_rb: bool = False):
        self.path = Path(path)
        self.fps = fps
        self.loop = loop
        self.swap_rb = swap_rb
        self.description = f"video {self.path}"
        self._capture: Any = None
        self._sampler = FrameSampler(0.0, 0.0)
        self._index = -1
        self._counter = FrameCounter()

    def open(self) -> None:
        """Open the file with OpenCV; raises SourceUnavailable when it is missing or unreadable."""
        if not self.path.is_file():
            raise SourceUnavailable(f"{self.path}: video file not found; check camera.source")
        cv2 = import_cv2()
        self.close()
        self._start_pass(cv2)
        logger.info("source opened kind=video path=%s video_fps=%.3g fps=%s loop=%s",
                    self.path, self._capture.get(cv2.CAP_PROP_FPS), self.fps, self.loop)

    def read(self) -> Frame | None:
        """Next sampled frame as a Frame; None at the end unless looping."""
        if self._capture is None:
            return None
        while True:
            if not self._capture.grab():
                if not self._restart_at_end():
                    return None
                continue
            self._index += 1
            if self._sampler.wants(self._index):
                return self._retrieve()

    def close(self) -> None:
        if self._capture is not None:
            self._capture.release()
            self._capture = None

    def _start_pass(self, cv2: Any) -> None:
        # Reopening is the reliable way back to frame 0: seeking is approximate for many codecs.
        capture = cv2.VideoCapture(str(self.path))
        if not capture.isOpened():
            capture.release()
            raise SourceUnavailable(f"{self.path}: OpenCV cannot open this video (unknown format or codec)")
        self._capture = capture
        self._sampler = FrameSampler(self.fps, capture.get(cv2.CAP_PROP_FPS))
        self._index = -1

    def _restart_at_end(self) -> bool:
        """At the end of the file: start over when looping (True), else release and report the end."""
        if not self.loop:
            self.close()
            return False
        if self._index < 0:
            raise SourceError(f"{self.path}: video has no frames, cannot loop over it")
        self.close()
        self._start_pass(import_cv2())
        return True

    def _retrieve(self) -> Frame:
        ok, bgr = self._capture.retrieve()
        if not ok or bgr is None:
            raise FrameDecodeError(f"{self.path}: cannot decode video frame {self._index}")
        return self._counter.stamp(to_rgb(bgr, "BGR", self.swap_rb), f"{self.path.name}#{self._index}")
