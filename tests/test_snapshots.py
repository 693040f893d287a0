"""The snapshot JPEG (agent/snapshots.py): size, aspect, byte budget, colour order."""

from __future__ import annotations

import io

import numpy as np
import pytest
from helpers_media import BLUE, GREEN, RED, WHITE, quadrant_colours, quadrants
from helpers_schemas import JPEG_MAGIC
from PIL import Image

from agent.snapshots import MIN_WIDTH, snapshot_jpeg


def decode(data: bytes) -> Image.Image:
    assert data.startswith(JPEG_MAGIC)
    image = Image.open(io.BytesIO(data))
    assert image.format == "JPEG" and image.mode == "RGB"
    image.load()
    return image


def noise(height: int, width: int, seed: int = 0) -> np.ndarray:
    """Random pixels: the worst case for JPEG."""
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


@pytest.mark.parametrize(("size", "expected"), [
    ((720, 1280), (640, 360)),  # 16:9 camera
    ((1080, 1920), (640, 360)),
    ((480, 640), (640, 480)),  # exactly max_width: untouched
    ((240, 320), (320, 240)),  # smaller: never enlarged
    ((333, 1000), (640, 213)),  # odd ratio, rounded
    ((1000, 700), (640, 914)),  # portrait
])
def test_a_wide_frame_is_scaled_to_max_width_with_its_aspect_kept(size, expected):
    image = decode(snapshot_jpeg(quadrants(*size)))
    assert image.size == expected
    assert abs(image.width / image.height - size[1] / size[0]) < 0.01


def test_max_width_is_the_caller_s():
    assert decode(snapshot_jpeg(quadrants(720, 1280), max_width=320)).size == (320, 180)


def test_colours_survive_in_rgb_order():
    red = np.zeros((720, 1280, 3), dtype=np.uint8)
    red[..., 0] = 255
    pixels = np.asarray(decode(snapshot_jpeg(red))).astype(int)
    assert np.abs(pixels.mean(axis=(0, 1)) - RED).max() < 4  # red, not blue: R and B not swapped
    colours = quadrant_colours(np.asarray(decode(snapshot_jpeg(quadrants(720, 1280)))))
    for name, colour in (("top_left", RED), ("top_right", GREEN), ("bottom_left", BLUE), ("bottom_right", WHITE)):
        assert np.abs(colours[name] - colour).max() < 8, (name, colours[name])


def test_a_strided_view_is_encoded_like_a_copy():
    frame = quadrants(240, 320)
    mirrored = frame[:, ::-1]  # not contiguous
    assert snapshot_jpeg(mirrored) == snapshot_jpeg(np.ascontiguousarray(mirrored))


def test_a_noisy_frame_too_big_at_the_quality_asked_still_fits_by_lowering_quality_then_size():
    frame = noise(720, 1280)
    unlimited = snapshot_jpeg(frame, max_bytes=10**9)
    budget = len(unlimited) // 8
    assert len(unlimited) > budget  # too big at quality 80
    data = snapshot_jpeg(frame, max_bytes=budget)
    assert len(data) <= budget
    image = decode(data)
    assert image.width < 640  # a lower quality alone was not enough for noise: made smaller too
    assert abs(image.width / image.height - 16 / 9) < 0.05


def test_a_budget_a_lower_quality_meets_keeps_the_full_width():
    frame = noise(720, 1280)
    at_80 = len(snapshot_jpeg(frame, max_bytes=10**9))
    at_60 = len(snapshot_jpeg(frame, quality=60, max_bytes=10**9))
    assert at_60 < at_80
    data = snapshot_jpeg(frame, max_bytes=at_60)
    assert len(data) <= at_60 and decode(data).width == 640


@pytest.mark.parametrize("max_bytes", [100_000, 30_000, 10_000, 3_000, 1_500])
def test_the_result_never_exceeds_max_bytes(max_bytes):
    assert len(snapshot_jpeg(noise(1080, 1920, seed=max_bytes), max_bytes=max_bytes)) <= max_bytes


def test_a_budget_not_even_a_tiny_picture_fits_is_a_value_error():
    with pytest.raises(ValueError, match="does not fit in 100 bytes"):
        snapshot_jpeg(noise(720, 1280), max_bytes=100)
    with pytest.raises(ValueError, match="does not fit"):
        snapshot_jpeg(noise(8, 8), max_bytes=200)  # already smaller than MIN_WIDTH: not shrunk further
    smallest = len(snapshot_jpeg(noise(MIN_WIDTH * 9 // 16, MIN_WIDTH), quality=30))
    assert decode(snapshot_jpeg(noise(720, 1280), max_bytes=smallest)).width >= MIN_WIDTH


@pytest.mark.parametrize("frame", [
    pytest.param(np.zeros((10, 10), dtype=np.uint8), id="grey"),
    pytest.param(np.zeros((10, 10, 4), dtype=np.uint8), id="rgba"),
    pytest.param(np.zeros((10, 10, 3), dtype=np.float32), id="float"),
    pytest.param(np.zeros((0, 10, 3), dtype=np.uint8), id="empty"),
    pytest.param([[[0, 0, 0]]], id="list"),
])
def test_anything_but_an_rgb_uint8_frame_is_a_value_error(frame):
    with pytest.raises(ValueError, match="snapshot"):
        snapshot_jpeg(frame)


@pytest.mark.parametrize("kwargs", [{"max_width": 0}, {"quality": 0}, {"quality": 101}, {"max_bytes": 0}])
def test_arguments_out_of_range_are_a_value_error(kwargs):
    with pytest.raises(ValueError):
        snapshot_jpeg(quadrants(), **kwargs)
