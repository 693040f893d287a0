"""The picture the fake sensor sees, laid out in memory the way each picamera2 format really is.

The scene: red top-left, green top-right, blue bottom-left, white bottom-right (tests/helpers_media's
``quadrants``), with the frame number in the first four pixels of the top row as gray levels (gray reads
the same in any channel order). libcamera's format names are little-endian fourccs, so "BGR888" is R,G,B
bytes and "RGB888" is B,G,R (picamera2 request.py ``_get_pil_mode``; issue #191).
"""

from __future__ import annotations

import numpy as np

RED, GREEN, BLUE, WHITE = (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255)
NUMBER_PIXELS = 4


def scene(width: int, height: int, number: int) -> np.ndarray:
    """The RGB scene of frame ``number``, height x width x 3 uint8."""
    rgb = np.zeros((height, width, 3), dtype=np.uint8)
    half_h, half_w = height // 2, width // 2
    rgb[:half_h, :half_w] = RED
    rgb[:half_h, half_w:] = GREEN
    rgb[half_h:, :half_w] = BLUE
    rgb[half_h:, half_w:] = WHITE
    for index, byte in enumerate(number.to_bytes(NUMBER_PIXELS, "big")):
        rgb[0, index] = byte
    return rgb


def frame_number(rgb: np.ndarray) -> int:
    """The frame number stamped into an unflipped frame by :func:`scene`."""
    return int.from_bytes(bytes(int(rgb[0, index, 0]) for index in range(NUMBER_PIXELS)), "big")


def transformed(rgb: np.ndarray, hflip: bool, vflip: bool) -> np.ndarray:
    """The scene as the ISP flips it (libcamera.Transform)."""
    if hflip:
        rgb = rgb[:, ::-1]
    if vflip:
        rgb = rgb[::-1]
    return rgb


def in_format(rgb: np.ndarray, fmt: str, swap_channels: bool = False) -> np.ndarray:
    """``rgb`` as the array ``make_array`` returns for stream format ``fmt`` (a fresh copy)."""
    if swap_channels:  # the driver bug of issues #848/#1325: red and blue exchanged
        rgb = rgb[:, :, ::-1]
    if fmt == "BGR888":
        return np.ascontiguousarray(rgb)
    if fmt == "RGB888":
        return np.ascontiguousarray(rgb[:, :, ::-1])
    if fmt in ("XBGR8888", "XRGB8888"):
        ordered = rgb if fmt == "XBGR8888" else rgb[:, :, ::-1]
        padding = np.full(rgb.shape[:2] + (1,), 255, dtype=np.uint8)
        return np.ascontiguousarray(np.concatenate([ordered, padding], axis=2))
    if fmt == "YUV420":
        return _yuv420(rgb)
    raise RuntimeError(f"fake picamera2: make_array for format {fmt!r} is not modelled")


def _yuv420(rgb: np.ndarray) -> np.ndarray:
    """I420 planes as picamera2 returns them: (height * 3 / 2, width), luma from BT.601, neutral chroma."""
    height, width = rgb.shape[:2]
    luma = (rgb.astype(np.float32) @ np.array([0.299, 0.587, 0.114], dtype=np.float32)).round().astype(np.uint8)
    chroma = np.full((height // 2, width), 128, dtype=np.uint8)
    return np.concatenate([luma, chroma], axis=0)
