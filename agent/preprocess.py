"""Frame -> model input, exactly as the model was trained: resize with PIL, then scale to floats.

Pure functions on numpy arrays; nothing here knows about HTTP or configuration files.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

RESIZE_MODES = ("stretch", "letterbox", "crop")
SCALES = ("unit", "symmetric", "raw")

# Pillow >= 9.1 has the Image.Resampling enum; older releases (Debian bullseye's 8.1) only the constants.
_FILTERS: Any = getattr(Image, "Resampling", Image)
# "area" is PIL's BOX filter: each output pixel averages the input pixels it covers, like cv2.INTER_AREA.
_RESAMPLE: dict[str, int] = {
    "nearest": _FILTERS.NEAREST,
    "bilinear": _FILTERS.BILINEAR,
    "bicubic": _FILTERS.BICUBIC,
    "area": _FILTERS.BOX,
}
INTERPOLATIONS = tuple(_RESAMPLE)


@dataclass(frozen=True)
class InputSpec:
    """What the model expects: input size, how to get there, and the value range of its floats."""

    height: int
    width: int
    resize: str = "stretch"
    interpolation: str = "bilinear"
    scale: str = "unit"

    def __post_init__(self) -> None:
        if self.height < 1 or self.width < 1:
            raise ValueError(f"model input size must be positive, got {self.height}x{self.width}")
        _check_choice("resize", self.resize, RESIZE_MODES)
        _check_choice("interpolation", self.interpolation, INTERPOLATIONS)
        _check_choice("scale", self.scale, SCALES)


def _check_choice(what: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{what} {value!r} is not one of {', '.join(choices)}")


CANVAS_MAX_PIXELS = 4_000_000  # a bigger frame (a 12 MP photo) is not kept: 48 MB held for the agent's life


class Canvas:
    """A full-size PIL image reused for every frame of the same size; safe to share between threads.

    ``Image.fromarray`` allocates and zero-fills a fresh image (1.2 MB at 640x480) per frame; writing the
    pixels into one kept image skips that: ~0.1-0.2 of the 2-2.5 ms a 640x480 fit costs here.
    """

    def __init__(self) -> None:
        self._image: Image.Image | None = None
        self.lock = threading.Lock()

    @staticmethod
    def takes(rgb: np.ndarray) -> bool:
        """An RGB uint8 frame of up to CANVAS_MAX_PIXELS (a bigger one is fitted from a fresh image)."""
        return rgb.dtype == np.uint8 and rgb.ndim == 3 and rgb.shape[2] == 3 and rgb.size <= 3 * CANVAS_MAX_PIXELS

    def holding(self, rgb: np.ndarray) -> Image.Image:
        """The canvas with ``rgb`` written into it; call with ``lock`` held, done with it before release."""
        height, width = rgb.shape[:2]
        if self._image is None or self._image.size != (width, height):
            self._image = Image.new("RGB", (width, height), None)  # None: left unfilled, overwritten next
        self._image.frombytes(np.ascontiguousarray(rgb))
        return self._image


def fit(rgb: np.ndarray, spec: InputSpec, canvas: Canvas | None = None) -> np.ndarray:
    """Resize an RGB uint8 frame to the model's (height, width, 3): the pixels the model sees.

    With a ``canvas`` the frame is written into its kept image instead of a new one (same pixels out).
    """
    height, width = rgb.shape[:2]
    if (height, width) == (spec.height, spec.width):
        return rgb
    if canvas is None or not canvas.takes(rgb):
        return _fit_image(Image.fromarray(rgb), spec)
    with canvas.lock:  # every path below makes a new image, so the result never aliases the canvas
        return _fit_image(canvas.holding(rgb), spec)


def _fit_image(image: Image.Image, spec: InputSpec) -> np.ndarray:
    width, height = image.size
    resample = _RESAMPLE[spec.interpolation]
    if spec.resize == "letterbox":
        return _letterbox(image, spec, resample)
    if spec.resize == "crop":
        box = _centre_box(width, height, spec)
        # Crop first: resize(box=...) would let the filter reach past the box and blend in cropped pixels.
        image = image.crop(box)
    return np.asarray(image.resize((spec.width, spec.height), resample))


def _letterbox(image: Image.Image, spec: InputSpec, resample: int) -> np.ndarray:
    """Fit the whole frame inside the target keeping its aspect, centred on black."""
    scale = min(spec.width / image.width, spec.height / image.height)
    inner_w = min(spec.width, max(1, round(image.width * scale)))
    inner_h = min(spec.height, max(1, round(image.height * scale)))
    inner = np.asarray(image.resize((inner_w, inner_h), resample))
    canvas = np.zeros((spec.height, spec.width, 3), dtype=np.uint8)
    top = (spec.height - inner_h) // 2
    left = (spec.width - inner_w) // 2
    canvas[top:top + inner_h, left:left + inner_w] = inner
    return canvas


def _centre_box(width: int, height: int, spec: InputSpec) -> tuple[int, int, int, int]:
    """The largest centred (left, top, right, bottom) box with the target's aspect, in whole pixels.

    Same arithmetic as Keras' ``smart_resize`` (``crop_to_aspect_ratio=True``).
    """
    crop_h = max(1, min(height, int(width * spec.height / spec.width)))
    crop_w = max(1, min(width, int(height * spec.width / spec.height)))
    top = (height - crop_h) // 2
    left = (width - crop_w) // 2
    return (left, top, left + crop_w, top + crop_h)


def normalize(pixels: np.ndarray, scale: str) -> np.ndarray:
    """uint8 pixels as float32: unit = p/255, symmetric = p/127.5 - 1, raw = p."""
    values = pixels.astype(np.float32)
    if scale == "unit":
        return values / np.float32(255.0)
    if scale == "symmetric":
        return values / np.float32(127.5) - np.float32(1.0)
    if scale == "raw":
        return values
    raise ValueError(f"scale {scale!r} is not one of {', '.join(SCALES)}")


def preprocess(rgb: np.ndarray, spec: InputSpec) -> np.ndarray:
    """The model's float32 (height, width, 3) input for an RGB uint8 frame."""
    return normalize(fit(rgb, spec), spec.scale)
