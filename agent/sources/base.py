"""The FrameSource interface every source implements, and the small helpers they share."""

from __future__ import annotations

import time
from typing import Protocol
from urllib.parse import urlsplit, urlunsplit

import numpy as np

from agent.frames import Frame


class FrameSource(Protocol):
    """Where frames come from: a folder, a file, a camera or a stream."""

    live: bool  # True for cameras/streams (only the newest frame matters); False for files
    ahead_ok: bool  # reading the next frame early changes nothing (a folder, a video file); see readahead.py
    description: str  # safe for logs (no credentials)

    def open(self) -> None:
        """Get ready to read; raises SourceUnavailable when the source is missing or empty."""

    def read(self) -> Frame | None:
        """Return the next frame, or None when a finite source is exhausted (and not looping).

        Raises FrameDecodeError for one bad item (the next read continues with the next item) and
        SourceError when the source itself failed.
        """

    def close(self) -> None:
        """Release what open() acquired; safe to call more than once."""


class FrameCounter:
    """Stamps pixels into Frames numbered 1, 2, 3… for the life of one source (loops included)."""

    def __init__(self) -> None:
        self.seq = 0

    def stamp(self, rgb: np.ndarray, origin: str) -> Frame:
        """Wrap ``rgb`` as the next Frame, captured now."""
        return self.stamp_at(rgb, origin, time.time())

    def stamp_at(self, rgb: np.ndarray, origin: str, captured_at: float) -> Frame:
        """Wrap ``rgb`` as the next Frame, captured at ``captured_at`` (epoch seconds)."""
        self.seq += 1
        return Frame(rgb=rgb, seq=self.seq, captured_at=captured_at, origin=origin)


def redact(source: str) -> str:
    """``source`` with a URL's ``user:password@`` and query (cameras put tokens there) masked, for logs."""
    parts = urlsplit(source)
    if not parts.netloc:
        return source
    netloc = parts.netloc
    if "@" in netloc:
        netloc = "***@" + netloc.rsplit("@", 1)[1]
    query = "***" if parts.query else ""
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))
