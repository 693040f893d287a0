"""Still images from disk: a folder of them (name order) or a single file, decoded with PIL.

PIL is what the Keras cat/dog tutorial decodes with, so frames match what the model was trained on.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Union

import numpy as np
from PIL import Image, ImageOps

from agent.errors import FrameDecodeError, SourceUnavailable
from agent.frames import Frame
from agent.sources.base import FrameCounter
from agent.sources.color import to_rgb

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
# 40 Mpx decodes to 120 MB of RGB: already a lot on a Pi Zero 2 W (512 MB), and no camera sends more.
MAX_PIXELS = 40_000_000

PathLike = Union[str, Path]


def is_image_name(name: str) -> bool:
    """True when ``name`` ends in one of IMAGE_EXTENSIONS (any case)."""
    return name.lower().endswith(IMAGE_EXTENSIONS)


def decode_image(path: PathLike, swap_rb: bool = False) -> np.ndarray:
    """Read one image file as RGB uint8 HxWx3, EXIF orientation applied.

    Raises FrameDecodeError for a file PIL cannot read (corrupt, truncated, vanished).
    """
    try:
        with warnings.catch_warnings():
            # PIL warns (to stderr) past its own limit; ours is lower and is an error, not a warning.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                _check_size(image, path)
                pixels = np.asarray(_as_rgb(ImageOps.exif_transpose(image)))
    except FrameDecodeError:
        raise
    except Exception as exc:  # PIL raises many types for bad files; one bad file must not stop a folder
        raise FrameDecodeError(f"{path}: cannot decode image: {exc}") from exc
    return to_rgb(pixels, "RGB", swap_rb)


def _check_size(image: Image.Image, path: PathLike) -> None:
    """Refuse images whose decoded pixels would not fit a small board's memory (read from the header)."""
    width, height = image.size
    if width * height > MAX_PIXELS:
        raise FrameDecodeError(f"{path}: image is {width}x{height}, more than {MAX_PIXELS // 1_000_000} megapixels; "
                               "resize it before classifying")


def _as_rgb(image: Image.Image) -> Image.Image:
    # A palette image with a transparent colour must pass through RGBA, or PIL warns on the way to RGB.
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    return image if image.mode == "RGB" else image.convert("RGB")


def list_images(folder: Path) -> list[Path]:
    """The visible image files directly in ``folder``, sorted by file name."""
    try:
        entries = list(folder.iterdir())
    except OSError as exc:
        raise SourceUnavailable(f"{folder}: cannot list folder: {exc}") from exc
    names = (p for p in entries if not p.name.startswith(".") and is_image_name(p.name) and p.is_file())
    return sorted(names, key=lambda p: p.name)


class FolderSource:
    """The images of one folder in name order; with ``loop`` it starts over and sees new files."""

    live = False
    ahead_ok = True

    def __init__(self, folder: PathLike, *, loop: bool = False, swap_rb: bool = False):
        self.folder = Path(folder)
        self.loop = loop
        self.swap_rb = swap_rb
        self.description = f"folder {self.folder}"
        self._files: list[Path] = []
        self._next = 0
        self._counter = FrameCounter()

    def open(self) -> None:
        """Scan the folder; raises SourceUnavailable when it is missing or holds no images."""
        if not self.folder.is_dir():
            raise SourceUnavailable(f"{self.folder}: folder not found; check camera.source")
        self._rescan()
        logger.info("source opened kind=folder path=%s images=%d loop=%s", self.folder, len(self._files), self.loop)

    def read(self) -> Frame | None:
        """Next image as a Frame; None after the last one unless looping."""
        if self._next >= len(self._files):
            if not self.loop:
                return None
            self._rescan()
        path = self._files[self._next]
        self._next += 1  # advance first: a bad file raises, and the next read moves on
        return self._counter.stamp(decode_image(path, self.swap_rb), path.name)

    def close(self) -> None:
        self._files = []
        self._next = 0

    def _rescan(self) -> None:
        files = list_images(self.folder)
        if not files:
            raise SourceUnavailable(f"no images in {self.folder} (looked for {' '.join(IMAGE_EXTENSIONS)})")
        self._files = files
        self._next = 0


class ImageSource:
    """One image file: a single frame, or the same file again and again with ``loop``.

    The file is decoded on every read, so a snapshot that another program rewrites is seen fresh.
    """

    live = False
    ahead_ok = False  # read when its turn comes: the file may be rewritten in between

    def __init__(self, path: PathLike, *, loop: bool = False, swap_rb: bool = False):
        self.path = Path(path)
        self.loop = loop
        self.swap_rb = swap_rb
        self.description = f"image {self.path}"
        self._done = False
        self._counter = FrameCounter()

    def open(self) -> None:
        """Check the file is there; raises SourceUnavailable when it is not."""
        if not self.path.exists() or self.path.is_dir():  # a named pipe fed by another program is fine
            raise SourceUnavailable(f"{self.path}: image file not found; check camera.source")
        self._done = False
        logger.info("source opened kind=image path=%s loop=%s", self.path, self.loop)

    def read(self) -> Frame | None:
        """The image as a Frame; None on the second read unless looping."""
        if self._done and not self.loop:
            return None
        self._done = True
        return self._counter.stamp(decode_image(self.path, self.swap_rb), self.path.name)

    def close(self) -> None:
        self._done = True
