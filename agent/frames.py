"""Plain values passed between the stages."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Frame:
    """One captured picture: RGB uint8 HxWx3, its sequence number and capture time (epoch seconds)."""

    rgb: np.ndarray
    seq: int
    captured_at: float
    origin: str = ""  # file name or source description, for log lines
