"""JPEG of a classified frame for ``{prefix}/{device}/snapshot`` (what dashboards and HA's image entity show).

Not the ``catdog-agent snapshot`` command (``agent/snapshot.py``). Pure: RGB array in, JPEG bytes out.
The picture is made small enough to be cheap on a Pi and on the broker: at most ``max_width`` wide
(aspect kept), and at most ``max_bytes`` long — a noisy scene that JPEG compresses badly is sent at a
lower quality first, then smaller, in a bounded number of tries.
"""

from __future__ import annotations

import io
import math
from typing import Any

import numpy as np
from PIL import Image

# Pillow >= 9.1 has the Image.Resampling enum; older releases (Debian bullseye's 8.1) only the constants.
_BILINEAR: Any = getattr(Image, "Resampling", Image).BILINEAR
# Shrink by whole factors with reduce() (a cheap box filter) until within this factor of the target, then
# resample bilinearly: a 1920-wide frame costs little more than a 640-wide one, and looks the same.
REDUCING_GAP = 2.0
# Qualities tried, below the requested one, before the picture is made smaller.
FALLBACK_QUALITIES = (60, 45, 30)
MIN_WIDTH = 32  # smaller than this shows nothing on a dashboard: give up instead
MAX_ATTEMPTS = 12


def snapshot_jpeg(rgb: np.ndarray, *, max_width: int = 640, quality: int = 80, max_bytes: int = 200_000) -> bytes:
    """``rgb`` (H x W x 3 uint8, R-G-B order) as JPEG bytes at most ``max_width`` wide and ``max_bytes`` long.

    Wider frames are scaled down with the aspect ratio kept. Too many bytes at ``quality``: the lower
    qualities of FALLBACK_QUALITIES are tried, then the picture is made smaller (at the lowest quality)
    until it fits. ValueError when the frame is not RGB uint8, an argument is out of range, or even a
    MIN_WIDTH-wide picture does not fit in ``max_bytes``.
    """
    image = _rgb_image(rgb)
    if max_width < 1:
        raise ValueError(f"max_width must be at least 1 (got {max_width})")
    if not 1 <= quality <= 95:
        raise ValueError(f"quality must be 1 to 95 (got {quality})")
    if max_bytes < 1:
        raise ValueError(f"max_bytes must be positive (got {max_bytes})")
    image = _fit_width(image, max_width)
    qualities = [quality] + [q for q in FALLBACK_QUALITIES if q < quality]
    sizes: list[int] = []
    for attempt in range(MAX_ATTEMPTS):
        if attempt < len(qualities):
            current, q = image, qualities[attempt]
        elif current.width > MIN_WIDTH:  # every quality was too big: smaller, at the lowest quality
            width = max(MIN_WIDTH, _next_width(current.width, sizes[-1], max_bytes))
            current, q = _fit_width(image, width), qualities[-1]
        else:
            break
        data = _encode(current, q)
        if len(data) <= max_bytes:
            return data
        sizes.append(len(data))
    raise ValueError(f"snapshot does not fit in {max_bytes} bytes: {len(sizes)} tries, the last "
                     f"{current.width}x{current.height} at quality {q} took {sizes[-1]} bytes")


def _rgb_image(rgb: np.ndarray) -> Image.Image:
    if not isinstance(rgb, np.ndarray) or rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        shape = getattr(rgb, "shape", None)
        dtype = getattr(rgb, "dtype", type(rgb).__name__)
        raise ValueError(f"snapshot needs an H x W x 3 uint8 RGB frame (got shape {shape}, dtype {dtype})")
    if rgb.shape[0] < 1 or rgb.shape[1] < 1:
        raise ValueError(f"snapshot of an empty frame (shape {rgb.shape})")
    return Image.fromarray(np.ascontiguousarray(rgb))  # H x W x 3 uint8 is mode RGB: channel order kept


def _fit_width(image: Image.Image, width: int) -> Image.Image:
    """``image`` at most ``width`` wide, the aspect ratio kept (never enlarged)."""
    if image.width <= width:
        return image
    height = max(1, round(image.height * width / image.width))
    return image.resize((width, height), _BILINEAR, reducing_gap=REDUCING_GAP)


def _next_width(width: int, size: int, max_bytes: int) -> int:
    """A smaller width expected to fit: bytes grow about with the area, so scale by sqrt(max/size),
    with a margin (headers do not shrink), and at least a tenth smaller so that the tries end."""
    scale = min(0.9, 0.9 * math.sqrt(max_bytes / size))
    return int(width * scale)


def _encode(image: Image.Image, quality: int) -> bytes:
    out = io.BytesIO()
    # Baseline, 4:2:0 chroma (Pillow's default), no optimize pass: Huffman tables per image cost CPU on a Pi.
    image.save(out, "JPEG", quality=quality)
    return out.getvalue()
