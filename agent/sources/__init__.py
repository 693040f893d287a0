"""Frame sources: classify ``camera.source`` and build the matching FrameSource from a registry.

Adding a kind is one line in SOURCES: its name and a function CameraConfig -> FrameSource.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from typing import Callable

from agent.config import CameraConfig
from agent.errors import SourceError, SourceUnavailable
from agent.frames import Frame
from agent.pacing import call_unless_stopped
from agent.sources.base import FrameSource
from agent.sources.files import FolderSource, ImageSource, is_image_name
from agent.sources.live import Camera, LiveSource, Reconnect
from agent.sources.opencv_cam import csi_camera, stream_camera, v4l2_camera
from agent.sources.video import VIDEO_EXTENSIONS, VideoFileSource

__all__ = ["CAMERA_KINDS", "FILE_KINDS", "SOURCES", "FrameSource", "OneFrame", "open_source", "opened_source",
           "read_one_frame", "source_kind"]

CAMERA_KINDS = ("picamera2", "csi", "v4l2", "stream")
FILE_KINDS = ("folder", "video", "image")

_STREAM_SCHEMES = ("rtsp://", "rtsps://", "http://", "https://")
_V4L2_PREFIXES = ("/dev/video", "v4l2://", "/dev/v4l/")

SourceFactory = Callable[[CameraConfig], FrameSource]


def live(make_camera: Callable[[CameraConfig], Camera]) -> SourceFactory:
    """A factory for a live camera kind: its Camera behind the freshest-frame capture thread."""

    def factory(camera: CameraConfig) -> FrameSource:
        return LiveSource(make_camera(camera), timeout_s=camera.timeout_s,
                          reconnect=Reconnect(camera.reconnect.initial_s, camera.reconnect.max_s))

    return factory


def picamera2_camera(camera: CameraConfig) -> Camera:
    from agent.sources.picam import picamera2_camera as make  # picamera2 exists only on a Pi

    return make(camera)


SOURCES: dict[str, SourceFactory] = {
    "picamera2": live(picamera2_camera),
    "csi": live(csi_camera),
    "v4l2": live(v4l2_camera),
    "stream": live(stream_camera),
    "folder": lambda camera: FolderSource(camera.source, loop=camera.loop, swap_rb=camera.swap_rb),
    "image": lambda camera: ImageSource(camera.source, loop=camera.loop, swap_rb=camera.swap_rb),
    "video": lambda camera: VideoFileSource(camera.source, fps=camera.fps, loop=camera.loop,
                                            swap_rb=camera.swap_rb),
}


def source_kind(value: str) -> str:
    """Classify a ``camera.source`` value: picamera2, csi, v4l2, stream, folder, video or image.

    A path that does not exist is classified by its extension (folder when it has none).
    """
    text = value.strip()
    if not text:
        raise ValueError("camera.source is empty: give a folder, an image or video file, or a camera")
    lowered = text.lower()
    if lowered == "picamera2" or lowered.startswith("picamera2:"):
        return "picamera2"
    if lowered.startswith("csi://"):
        return "csi"
    if lowered.startswith(_V4L2_PREFIXES):
        return "v4l2"
    if lowered.startswith(_STREAM_SCHEMES):
        return "stream"
    return _path_kind(text)


def _path_kind(path: str) -> str:
    if os.path.isdir(path):
        return "folder"
    if is_image_name(path):
        return "image"
    if path.lower().endswith(VIDEO_EXTENSIONS) or os.path.isfile(path):
        return "video"
    return "folder"


def open_source(camera: CameraConfig) -> FrameSource:
    """Build the FrameSource for ``camera.source``; call its open() before reading.

    Raises SourceUnavailable for a file path that does not exist.
    """
    kind = source_kind(camera.source)
    factory = SOURCES[kind]
    if kind in FILE_KINDS and not os.path.exists(camera.source):
        raise SourceUnavailable(f"camera.source {camera.source!r}: no such file or directory")
    return factory(camera)


def opened_source(camera: CameraConfig, stop: threading.Event) -> FrameSource:
    """``open_source`` and its open(), which ``stop`` cuts short (a stream's open can take camera.timeout_s).

    A source whose open failed or was cut short is closed again; raises Stopped when ``stop`` came first.
    """
    source = open_source(camera)
    try:
        call_unless_stopped(source.open, stop)
    except BaseException:
        source.close()
        raise
    return source


@dataclass(frozen=True)
class OneFrame:
    """A single frame read for ``check`` and ``snapshot``, with what the source said about itself."""

    frame: Frame
    source: str  # the source's description
    details: str  # a camera's size, fps and colour order; empty for files


def read_one_frame(camera: CameraConfig) -> OneFrame:
    """Open ``camera.source``, read one frame (from a camera: a fresh one), close it again."""
    source = open_source(camera)
    source.open()
    try:
        frame = source.read()
    finally:
        source.close()
    if frame is None:
        raise SourceError(f"{source.description}: no frame")
    info = getattr(source, "info", None)
    return OneFrame(frame, source.description, info.describe() if info is not None else "")
