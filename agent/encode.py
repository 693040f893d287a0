"""Request bodies for TF Serving's ``:predict``: row-format JSON of the pixels, or base64 JPEG.

JSON: a fitted pixel has only 256 possible values, so the text of each normalised value is precomputed once
(fixed width, left-padded with spaces, which JSON allows between tokens) and the nested arrays are
assembled with numpy byte operations. This is >100x faster than ``json.dumps(x.tolist())`` for a
150x150x3 frame (see bench/frame_path.py), with an error of at most half a unit in the last decimal.

JPEG: for a model whose signature takes encoded images (a ``DT_STRING`` input that decodes them in its
graph), the fitted frame goes as ``{"b64": "<JPEG>"}``: a fiftieth of the JSON's bytes.
"""

from __future__ import annotations

import base64
import io
import json
import threading
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from agent.preprocess import Canvas, normalize

_OPEN, _CLOSE, _COMMA = ord("["), ord("]"), ord(",")


class PixelEncoder:
    """Writes uint8 HxWxC pixels as the JSON nested list of their normalised values.

    Safe to share between threads (a lock guards the reused text buffer).
    """

    def __init__(self, scale: str = "unit", decimals: int = 4):
        if not 1 <= decimals <= 9:
            raise ValueError(f"decimals must be between 1 and 9, got {decimals}")
        self.scale = scale
        self.decimals = decimals
        self.table = _text_table(scale, decimals)
        # Each text as pieces of 8, 4, 2 or 1 bytes (6 = 4 + 2): numpy's take() copies items of those sizes
        # with one load and store, and other sizes with memmove (one 6-byte take costs 1.4x two takes).
        self._pieces = [(start, size, np.ascontiguousarray(self.table[:, start:start + size]).view(f"V{size}")
                         .reshape(256)) for start, size in _pieces(self.width)]
        # Texts kept per (shape, prefix, suffix) with punctuation in place; each frame only rewrites the
        # values. Reusing the buffer matters: a fresh 0.65 MB array costs more in page faults than the encoding.
        self._buffers: dict[tuple[tuple[int, ...], bytes, bytes], np.ndarray] = {}
        self._lock = threading.Lock()

    @property
    def width(self) -> int:
        """Bytes of text per value."""
        return int(self.table.shape[1])

    def instance(self, pixels: np.ndarray) -> bytes:
        """The JSON text of one HxWxC uint8 array: ``[[[r,g,b],...],...]`` of normalised values."""
        return self.wrapped(pixels, b"", b"")

    def wrapped(self, pixels: np.ndarray, prefix: bytes, suffix: bytes) -> bytes:
        """``prefix + instance(pixels) + suffix``, built in one buffer."""
        _check_pixels(pixels)
        with self._lock:
            text = self._buffer(pixels.shape, prefix, suffix)
            instance = text[len(prefix):len(text) - len(suffix)]
            cells = _value_cells(instance, pixels.shape, self.width)
            indices = pixels[..., np.newaxis]
            for start, size, texts in self._pieces:
                slots = cells[..., start:start + size].view(f"V{size}")
                # take(out=..., mode="clip") writes straight into the text; "raise" would buffer (uint8 is in range).
                np.take(texts, indices, out=slots, mode="clip")
            return text.tobytes()

    def _buffer(self, shape: tuple[int, ...], prefix: bytes, suffix: bytes) -> np.ndarray:
        key = (shape, prefix, suffix)
        text = self._buffers.get(key)
        if text is None:
            if len(self._buffers) >= 4:  # a source changing size now and then must not grow memory
                self._buffers.clear()
            text = np.concatenate([np.frombuffer(prefix, dtype=np.uint8), _punctuation(shape, self.width),
                                   np.frombuffer(suffix, dtype=np.uint8)])
            self._buffers[key] = text
        return text


def _layout(text: np.ndarray, shape: tuple[int, ...], width: int) -> tuple[np.ndarray, np.ndarray]:
    """Views of flat ``text`` as rows (H, row bytes) and pixels (H, W, pixel bytes).

    Layout: '[' then per row '[' pixels ',' (the last row's ',' is the outer ']'); per pixel
    '[' values ',' (the row's last pixel's ',' is the row's ']'); per value text then ',' or ']'.
    Reshapes that only split the last axis are views, so writes through them land in ``text``.
    """
    height, columns, channels = shape
    pixel_len = 1 + channels * (width + 1) + 1
    rows = text[1:].reshape(height, 1 + columns * pixel_len + 1)
    return rows, rows[:, 1:-1].reshape(height, columns, pixel_len)


def _value_cells(text: np.ndarray, shape: tuple[int, ...], width: int) -> np.ndarray:
    """View of ``text`` with the ``width`` text bytes of each value: shape (H, W, C, width)."""
    height, columns, channels = shape
    _, pixels = _layout(text, shape, width)
    return pixels[:, :, 1:-1].reshape(height, columns, channels, width + 1)[..., :width]


def _pieces(width: int) -> list[tuple[int, int]]:
    """(start, size) pieces of a ``width``-byte text, sizes 8, 4, 2 or 1, largest first.

    A third take costs more than it saves (width 7 is faster as one take), so then the whole width.
    """
    pieces, start = [], 0
    for size in (8, 4, 2, 1):
        while width - start >= size:
            pieces.append((start, size))
            start += size
    return pieces if len(pieces) <= 2 else [(0, width)]


def _punctuation(shape: tuple[int, ...], width: int) -> np.ndarray:
    height, columns, channels = shape
    pixel_len = 1 + channels * (width + 1) + 1
    text = np.full(1 + height * (1 + columns * pixel_len + 1), _OPEN, dtype=np.uint8)
    rows, pixels = _layout(text, shape, width)
    rows[:, -1] = _COMMA
    rows[-1, -1] = _CLOSE
    pixels[:, :, -1] = _COMMA
    pixels[:, -1, -1] = _CLOSE
    cells = pixels[:, :, 1:-1].reshape(height, columns, channels, width + 1)
    cells[..., -1] = _COMMA
    cells[:, :, -1, -1] = _CLOSE
    return text


def _text_table(scale: str, decimals: int) -> np.ndarray:
    """(256, width) uint8: row v is the right-aligned text of normalize(v, scale)."""
    values = normalize(np.arange(256, dtype=np.uint8), scale)
    if scale == "raw":
        texts = [str(int(v)) for v in values]
    else:
        texts = [f"{float(v):.{decimals}f}" for v in values]
    width = max(len(t) for t in texts)
    padded = "".join(t.rjust(width) for t in texts).encode("ascii")
    return np.frombuffer(padded, dtype=np.uint8).reshape(256, width)


def _check_pixels(pixels: np.ndarray) -> None:
    if pixels.dtype != np.uint8 or pixels.ndim != 3 or 0 in pixels.shape:
        raise ValueError(f"expected non-empty HxWxC uint8 pixels, got shape {pixels.shape} dtype {pixels.dtype}")


def predict_body(pixels: np.ndarray, encoder: PixelEncoder, *, input_name: str | None,
                 signature: str | None) -> bytes:
    """The :predict request body for one frame, row format.

    ``{"signature_name":…,"instances":[{"<input_name>":<instance>}]}``; the plain form
    ``{"instances":[<instance>]}`` when input_name is None; no signature_name when signature is None.
    """
    head = [b"{"]
    if signature is not None:
        head += [b'"signature_name":', _json_string(signature), b","]
    head.append(b'"instances":[')
    tail = b"]}"
    if input_name is not None:
        head += [b"{", _json_string(input_name), b":"]
        tail = b"}]}"
    return encoder.wrapped(pixels, b"".join(head), tail)


def jpeg_body(pixels: np.ndarray, quality: int, *, input_name: str | None, signature: str | None) -> bytes:
    """The :predict body carrying one frame as base64 JPEG: ``{"instances":[{"<input>":{"b64":"…"}}]}``."""
    _check_pixels(pixels)
    jpeg = io.BytesIO()
    # 4:2:0 chroma like every camera's own JPEG; optimize off: Huffman tables per image cost ~30 % more CPU.
    Image.fromarray(pixels).save(jpeg, "JPEG", quality=quality)
    value = b'{"b64":"' + base64.b64encode(jpeg.getvalue()) + b'"}'
    if input_name is not None:
        value = b"{" + _json_string(input_name) + b":" + value + b"}"
    head = b'{"signature_name":' + _json_string(signature) + b"," if signature is not None else b"{"
    return head + b'"instances":[' + value + b"]}"


ENCODINGS = ("auto", "json", "b64_jpeg")


@dataclass
class BodyEncoder:
    """Writes one fitted frame as a request body in the encoding the model takes ("json" or "b64_jpeg").

    It also keeps the buffers each frame's work reuses: the JSON text and ``canvas``, fit()'s frame image.
    """

    scale: str = "unit"
    decimals: int = 4
    jpeg_quality: int = 90
    _pixels: PixelEncoder | None = field(default=None, init=False, repr=False)
    canvas: Canvas = field(default_factory=Canvas, init=False, repr=False, compare=False)  # fit()'s frame buffer

    def body(self, pixels: np.ndarray, encoding: str, *, input_name: str | None, signature: str | None) -> bytes:
        if encoding == "b64_jpeg":
            return jpeg_body(pixels, self.jpeg_quality, input_name=input_name, signature=signature)
        if encoding != "json":
            raise ValueError(f"encoding {encoding!r} is not json or b64_jpeg")
        if self._pixels is None:  # built on first use: its 256-entry table is wasted on a JPEG-only model
            self._pixels = PixelEncoder(self.scale, self.decimals)
        return predict_body(pixels, self._pixels, input_name=input_name, signature=signature)


def _json_string(text: str) -> bytes:
    return json.dumps(text).encode("ascii")
