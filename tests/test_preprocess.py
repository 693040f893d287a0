"""Preprocessing: the pixels and floats the model sees, checked against the Keras tutorial pipeline."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from helpers_media import PHOTOS, quadrant_colours, quadrants
from PIL import Image

from agent.preprocess import Canvas, InputSpec, fit, normalize, preprocess
from agent.sources.files import decode_image

TUTORIAL = InputSpec(150, 150)  # defaults: stretch, bilinear, unit


def mean_abs_diff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.float64) - b.astype(np.float64)).mean())


@pytest.mark.parametrize("photo", PHOTOS, ids=lambda p: p.name)
def test_defaults_match_the_tutorial_bilinear_pipeline(photo: Path) -> None:
    tutorial = np.asarray(Image.open(photo).convert("RGB").resize((150, 150), Image.BILINEAR)) / 255
    ours = preprocess(decode_image(photo), TUTORIAL)
    assert ours.shape == (150, 150, 3) and ours.dtype == np.float32
    assert mean_abs_diff(ours, tutorial) < 1e-6  # same decode, same resize: only float32 rounding differs


@pytest.mark.parametrize("photo", PHOTOS, ids=lambda p: p.name)
def test_defaults_stay_close_to_the_tutorial_default_bicubic_resize(photo: Path) -> None:
    tutorial = np.asarray(Image.open(photo).convert("RGB").resize((150, 150))) / 255
    assert mean_abs_diff(preprocess(decode_image(photo), TUTORIAL), tutorial) < 0.01


def test_fit_returns_a_frame_of_the_right_size_untouched() -> None:
    rgb = quadrants(150, 150)
    assert fit(rgb, TUTORIAL) is rgb


@pytest.mark.parametrize("interpolation", ["nearest", "bilinear", "bicubic", "area"])
def test_each_interpolation_resizes_to_the_model_size(interpolation: str) -> None:
    pixels = fit(quadrants(64, 96), InputSpec(32, 48, interpolation=interpolation))
    assert pixels.shape == (32, 48, 3) and pixels.dtype == np.uint8
    assert quadrant_colours(pixels)["top_left"].tolist() == [255, 0, 0]


def test_area_interpolation_averages_like_pil_box() -> None:
    checker = np.zeros((4, 4, 3), np.uint8)
    checker[::2, ::2] = 255
    checker[1::2, 1::2] = 255
    assert fit(checker, InputSpec(2, 2, interpolation="area")).tolist() == [[[128] * 3] * 2] * 2
    assert fit(checker, InputSpec(2, 2, interpolation="nearest")).max() in (0, 255)


def test_stretch_ignores_aspect() -> None:
    wide = np.full((50, 200, 3), 255, np.uint8)
    assert fit(wide, InputSpec(100, 100)).min() == 255  # no padding: every pixel comes from the frame


def test_letterbox_pads_a_wide_frame_above_and_below_with_black() -> None:
    wide = np.full((100, 200, 3), 255, np.uint8)
    pixels = fit(wide, InputSpec(150, 150, resize="letterbox", interpolation="nearest"))
    content = np.flatnonzero(pixels[:, 75, 0])
    assert (content[0], content[-1]) == (37, 111)  # 75 rows of picture, centred: (150 - 75) // 2 = 37
    assert pixels[:37].max() == 0 and pixels[112:].max() == 0
    assert pixels[37:112].min() == 255


def test_letterbox_pads_a_tall_frame_left_and_right_and_keeps_content_in_place() -> None:
    tall = quadrants(200, 100)
    pixels = fit(tall, InputSpec(100, 100, resize="letterbox", interpolation="nearest"))
    assert pixels[:, :25].max() == 0 and pixels[:, 75:].max() == 0
    inner = pixels[:, 25:75]
    assert quadrant_colours(inner)["top_left"].tolist() == [255, 0, 0]
    assert quadrant_colours(inner)["bottom_right"].tolist() == [255, 255, 255]


def test_crop_keeps_the_centre_of_a_wide_frame() -> None:
    thirds = np.zeros((100, 300, 3), np.uint8)
    thirds[:, :100] = (255, 0, 0)
    thirds[:, 100:200] = (0, 255, 0)
    thirds[:, 200:] = (0, 0, 255)
    pixels = fit(thirds, InputSpec(50, 50, resize="crop"))
    assert np.array_equal(pixels, np.broadcast_to(np.array([0, 255, 0], np.uint8), (50, 50, 3)))


def test_crop_keeps_the_centre_of_a_tall_frame_to_a_wide_target() -> None:
    bands = np.zeros((400, 100, 3), np.uint8)
    bands[150:250] = 255  # the middle quarter
    pixels = fit(bands, InputSpec(50, 100, resize="crop", interpolation="nearest"))
    # target aspect 2:1 -> the centred 100x50 box (rows 175..225) lies inside the white band
    assert pixels.shape == (50, 100, 3) and pixels.min() == 255


def test_crop_of_a_frame_with_the_target_aspect_is_a_plain_resize() -> None:
    rgb = quadrants(64, 64)
    spec = InputSpec(32, 32)
    assert np.array_equal(fit(rgb, InputSpec(32, 32, resize="crop")), fit(rgb, spec))


@pytest.mark.parametrize("resize", ["stretch", "letterbox", "crop"])
def test_a_reused_canvas_gives_the_same_pixels_and_never_aliases_an_earlier_result(resize: str) -> None:
    canvas = Canvas()
    spec = InputSpec(150, 150, resize=resize)
    photos = [decode_image(photo) for photo in PHOTOS]
    frames = [*photos, photos[0][::2, ::3], np.ascontiguousarray(photos[1][:, ::-1])]  # other sizes, a view
    results = [fit(frame, spec, canvas) for frame in frames]
    for frame, result in zip(frames, results):  # compared after all ran: a later frame must not show through
        assert np.array_equal(result, fit(frame, spec))


@pytest.mark.parametrize(("scale", "low", "high"), [("unit", 0.0, 1.0), ("symmetric", -1.0, 1.0),
                                                    ("raw", 0.0, 255.0)])
def test_normalize_maps_the_pixel_range_to_the_scale(scale: str, low: float, high: float) -> None:
    values = normalize(np.array([0, 255], np.uint8), scale)
    assert values.dtype == np.float32
    assert values.tolist() == [low, high]


def test_symmetric_scale_centres_mid_gray_near_zero() -> None:
    values = normalize(np.array([127, 128], np.uint8), "symmetric")
    assert np.allclose(values, [-0.5 / 127.5, 0.5 / 127.5], atol=1e-7)


def test_preprocess_applies_the_spec_scale() -> None:
    rgb = quadrants(64, 64)
    raw = preprocess(rgb, InputSpec(32, 32, scale="raw"))
    assert np.allclose(preprocess(rgb, InputSpec(32, 32, scale="symmetric")), raw / 127.5 - 1, atol=1e-6)


@pytest.mark.parametrize(("field", "value"), [("resize", "zoom"), ("interpolation", "lanczos"), ("scale", "percent")])
def test_input_spec_rejects_unknown_choices(field: str, value: str) -> None:
    with pytest.raises(ValueError, match=f"{field} '{value}' is not one of"):
        InputSpec(150, 150, **{field: value})


def test_input_spec_rejects_an_empty_size() -> None:
    with pytest.raises(ValueError, match="must be positive"):
        InputSpec(0, 150)


def test_normalize_rejects_an_unknown_scale() -> None:
    with pytest.raises(ValueError, match="scale 'percent'"):
        normalize(np.zeros(3, np.uint8), "percent")
