"""Real media for source and preprocessing tests: coloured test images, photos and OpenCV-written videos."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np
from PIL import Image

import agent

SAMPLES = Path(agent.__file__).parent / "samples"
PHOTOS = [SAMPLES / "chelsea.png", SAMPLES / "dog.jpg", SAMPLES / "person.jpg"]

RED = (255, 0, 0)
GREEN = (0, 255, 0)
BLUE = (0, 0, 255)
WHITE = (255, 255, 255)

# Codecs and containers this OpenCV build can both write and read back (avc1/h264 and Theora have no
# encoder in pip's wheel): motion JPEG, MPEG-4 part 2, Xvid, and lossless FFV1 and HuffYUV.
VIDEO_FORMATS = [("MJPG", ".avi"), ("mp4v", ".mp4"), ("XVID", ".avi"), ("MJPG", ".mkv"), ("FFV1", ".mkv"),
                 ("mp4v", ".mov"), ("HFYU", ".avi")]


def quadrants(height: int = 64, width: int = 64) -> np.ndarray:
    """RGB uint8 image: red top-left, green top-right, blue bottom-left, white bottom-right."""
    rgb = np.zeros((height, width, 3), dtype=np.uint8)
    half_h, half_w = height // 2, width // 2
    rgb[:half_h, :half_w] = RED
    rgb[:half_h, half_w:] = GREEN
    rgb[half_h:, :half_w] = BLUE
    rgb[half_h:, half_w:] = WHITE
    return rgb


def quadrant_colours(rgb: np.ndarray) -> dict[str, np.ndarray]:
    """The pixel at the centre of each quadrant of ``rgb``, as int arrays (safe to subtract)."""
    height, width = rgb.shape[:2]
    ys, xs = (height // 4, 3 * height // 4), (width // 4, 3 * width // 4)
    return {
        "top_left": rgb[ys[0], xs[0]].astype(int),
        "top_right": rgb[ys[0], xs[1]].astype(int),
        "bottom_left": rgb[ys[1], xs[0]].astype(int),
        "bottom_right": rgb[ys[1], xs[1]].astype(int),
    }


def save_image(rgb: np.ndarray, path: Path, **options: object) -> Path:
    """Write ``rgb`` with PIL (format from the suffix) and return the path."""
    Image.fromarray(rgb).save(path, **options)
    return path


def write_video(path: Path, frames: Iterable[np.ndarray], fps: float = 30.0, fourcc: str = "MJPG") -> Path:
    """Write RGB frames as a video file with cv2.VideoWriter; fails loudly when the codec is missing."""
    import cv2

    frame_list: list[np.ndarray] = list(frames)
    height, width = frame_list[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), fps, (width, height))
    assert writer.isOpened(), f"OpenCV cannot write {fourcc} to {path.suffix}"
    try:
        for rgb in frame_list:
            writer.write(np.ascontiguousarray(rgb[:, :, ::-1]))  # VideoWriter takes BGR
    finally:
        writer.release()
    return path


def numbered_frames(count: int, size: tuple[int, int] = (48, 64), step: int = 4) -> list[np.ndarray]:
    """``count`` gray frames whose level is ``index * step``, so a decoded frame tells its index."""
    height, width = size
    return [np.full((height, width, 3), index * step, dtype=np.uint8) for index in range(count)]


def frame_index(rgb: np.ndarray, step: int = 4) -> int:
    """The index a frame from numbered_frames() carries, read back through codec noise."""
    return int(round(float(rgb.mean()) / step))
