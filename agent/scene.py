"""camera.skip_unchanged: classify a frame only when the scene changed since the last classified one.

Each frame is reduced to a tiny thumbnail, ``THUMB_WIDTH`` cells across and as many down as the
frame's aspect ratio gives (32x24 for 4:3, 32x18 for 16:9). A cell holds the mean red, green and blue
of ``SAMPLES`` x ``SAMPLES`` pixels spread evenly over it, so the cost does not grow with the
resolution (about 0.2 ms per frame on a 2-core x86, from 320x240 to 1920x1080), and only numpy is
needed -- OpenCV is an optional extra on devices.

The change between two thumbnails is the share of cells in which any of the three means moved by more
than ``CELL_DELTA`` levels. Sensor noise averages out over a cell's 36 pixels (sigma 3 per pixel is 0.5
per cell), JPEG artefacts and a one-pixel camera shake move a cell by a few levels, and light drifting
by a few percent moves it by a few levels too: all stay well below the delta. A cat or dog walking in
changes the cells it covers by tens of levels; colour counts, not only brightness, because an animal
can be as bright as the floor it stands on (measured on the sample photos: a photo of a cat or dog
pasted over 5 % of another changes 3 to 5 % of the cells in colour, but as little as 0.8 % in
brightness alone). A slow drift is compared with the last *classified* frame, so it adds up: once it
passes the delta it triggers one classification, and the new reference starts from there.
"""

from __future__ import annotations

import time
from typing import Callable, Protocol

import numpy as np

from agent.config import SkipUnchangedConfig

THUMB_WIDTH = 32  # cells across; a cat at a few metres covers several of them
SAMPLES = 6  # pixels per cell side that are averaged: 36 per cell
CELL_DELTA = 24.0  # levels (of 255) one of a cell's colour means must move for the cell to count as changed

_Layout = tuple[int, np.ndarray, np.ndarray]  # thumbnail height, sampled rows, sampled columns


class Gate(Protocol):
    """Decides per frame whether it is worth a request to the server."""

    change: float | None

    def should_classify(self, rgb: np.ndarray) -> bool: ...

    def classified(self) -> None: ...


class EveryFrame:
    """camera.skip_unchanged off (the default): every frame is classified."""

    change: float | None = None

    def should_classify(self, rgb: np.ndarray) -> bool:
        return True

    def classified(self) -> None:
        return None


class ChangeGate:
    """True for the first frame, a frame that differs enough from the last classified one, or when
    ``max_interval_s`` passed since that one was seen.

    ``should_classify(rgb)`` decides; ``classified()`` then makes the frame it was last asked about the
    reference. Calling it only after a result means a frame whose classification failed never becomes
    the reference: the next frame is compared with the last one that has a result.
    """

    def __init__(self, threshold: float = 0.02, max_interval_s: float = 60.0,
                 clock: Callable[[], float] = time.monotonic):
        self.threshold, self.max_interval_s, self.clock = threshold, max_interval_s, clock
        self.change: float | None = None  # the share of cells that changed in the last decision (for logs)
        self._reference: np.ndarray | None = None
        self._reference_at = 0.0
        self._candidate: tuple[np.ndarray, float] | None = None
        self._layouts: dict[tuple[int, int], _Layout] = {}

    def should_classify(self, rgb: np.ndarray) -> bool:
        thumb, now = self.thumbnail(rgb), self.clock()
        self._candidate = (thumb, now)
        reference = self._reference
        if reference is None or reference.shape != thumb.shape:
            self.change = None
            return True
        self.change = changed_share(reference, thumb)
        return self.change >= self.threshold or now - self._reference_at >= self.max_interval_s

    def classified(self) -> None:
        if self._candidate is not None:
            self._reference, self._reference_at = self._candidate
            self._candidate = None

    def thumbnail(self, rgb: np.ndarray) -> np.ndarray:
        """The frame as float32 cells (down x THUMB_WIDTH x RGB) of mean levels 0..255."""
        height, width = rgb.shape[:2]
        layout = self._layouts.get((height, width))
        if layout is None:
            layout = self._layouts[(height, width)] = _layout(height, width)
        cells_down, rows, columns = layout
        pixels = rgb.take(rows, axis=0).take(columns, axis=1)
        # Sum a cell's rows, then its columns (two reductions over contiguous axes beat one over both).
        rows_summed = pixels.reshape(cells_down, SAMPLES, -1).sum(axis=1, dtype=np.uint16)  # <= 6 * 255
        sums = rows_summed.reshape(cells_down, THUMB_WIDTH, SAMPLES, 3).sum(axis=2)
        return (sums / (SAMPLES * SAMPLES)).astype(np.float32)


def _layout(height: int, width: int) -> _Layout:
    """Which rows and columns are sampled: SAMPLES evenly spaced per cell, covering the whole frame."""
    cells_down = max(1, round(THUMB_WIDTH * height / width))
    rows = ((np.arange(cells_down * SAMPLES) + 0.5) * height / (cells_down * SAMPLES)).astype(np.intp)
    columns = ((np.arange(THUMB_WIDTH * SAMPLES) + 0.5) * width / (THUMB_WIDTH * SAMPLES)).astype(np.intp)
    return cells_down, rows, columns


def changed_share(before: np.ndarray, after: np.ndarray) -> float:
    """The share (0 to 1) of thumbnail cells in which a colour mean moved by more than CELL_DELTA."""
    moved = np.abs(after - before).max(axis=-1) > CELL_DELTA
    return float(np.count_nonzero(moved)) / moved.size


def scene_gate(config: SkipUnchangedConfig | None) -> Gate:
    """The gate camera.skip_unchanged asks for: EveryFrame when it is absent."""
    if config is None:
        return EveryFrame()
    return ChangeGate(config.threshold, config.max_interval_s)
