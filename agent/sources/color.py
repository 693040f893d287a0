"""Colour order conversion: the one place where frames become RGB uint8 HxWx3.

OpenCV hands out BGR, PIL RGB, and picamera2's "RGB888"/"XRGB8888" formats are B,G,R(,X) bytes in
memory, so every source passes its pixels through :func:`to_rgb` with the order it actually has.
"""

from __future__ import annotations

import numpy as np

ORDERS = ("RGB", "BGR")


def to_rgb(pixels: np.ndarray, order: str, swap_rb: bool = False) -> np.ndarray:
    """Return ``pixels`` (HxW, HxWx1, HxWx3 or HxWx4 uint8 in ``order``) as C-contiguous RGB uint8 HxWx3.

    Gray is expanded to three channels, a fourth (alpha/padding) channel is dropped, and ``swap_rb``
    exchanges red and blue once more, for drivers that report the wrong order.
    """
    if order not in ORDERS:
        raise ValueError(f"colour order {order!r} is not one of {', '.join(ORDERS)}")
    if pixels.dtype != np.uint8:
        raise ValueError(f"frame pixels must be uint8, got {pixels.dtype}")
    three = _three_channels(pixels)
    if (order == "BGR") != swap_rb:
        three = three[:, :, ::-1]
    return np.ascontiguousarray(three)


def _three_channels(pixels: np.ndarray) -> np.ndarray:
    if pixels.ndim == 2:
        return np.repeat(pixels[:, :, np.newaxis], 3, axis=2)
    if pixels.ndim == 3 and pixels.shape[2] == 1:
        return np.repeat(pixels, 3, axis=2)
    if pixels.ndim == 3 and pixels.shape[2] in (3, 4):
        return pixels[:, :, :3]
    raise ValueError(f"frame shape {pixels.shape} is not HxW, HxWx1, HxWx3 or HxWx4")
