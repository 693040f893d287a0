"""Frame sources: classify ``camera.source`` and build the matching FrameSource from a registry.

Adding a kind is one line in SOURCES: its name and a function CameraConfig -> FrameSource.
"""

from __future__ import annotations

import os
from typing import Callable

from agent.config import CameraConfig
from agent.errors import SourceUnavailable
from agent.sources.base import FrameSource, redact
from agent.sources.files import FolderSource, ImageSource, is_image_name
from agent.sources.video import VIDEO_EXTENSIONS, VideoFileSource

__all__ = ["CAMERA_KINDS", "FILE_KINDS", "SOURCES", "FrameSource", "open_source", "source_kind"]

CAMERA_KINDS = ("picamera2", "csi", "v4l2", "stream")
FILE_KINDS = ("folder", "video", "image")

_STREAM_SCHEMES = ("rtsp://", "rtsps://", "http://", "https://")
_V4L2_PREFIXES = ("/dev/video", "v4l2://", "/dev/v4l/")

SourceFactory = Callable[[CameraConfig], FrameSource]

SOURCES: dict[str, SourceFactory] = {
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

    Raises SourceUnavailable for a kind this version cannot read or a file path that does not exist.
    """
    kind = source_kind(camera.source)
    factory = SOURCES.get(kind)
    if factory is None:
        raise SourceUnavailable(
            f"camera.source {redact(camera.source)!r}: {kind} cameras are not supported by this version "
            f"of catdog-agent yet (supported here: {', '.join(sorted(SOURCES))})")
    if kind in FILE_KINDS and not os.path.exists(camera.source):
        raise SourceUnavailable(f"camera.source {camera.source!r}: no such file or directory")
    return factory(camera)
