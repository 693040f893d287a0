"""The :predict body: valid JSON whose numbers are normalize(pixels) to 6 decimals, in TF Serving's row format."""

from __future__ import annotations

import json

import numpy as np
import pytest
from helpers_media import PHOTOS

from agent.encode import PixelEncoder, predict_body
from agent.preprocess import InputSpec, fit, normalize
from agent.sources.files import decode_image

SCALES = ["unit", "symmetric", "raw"]
TOLERANCE = 5.1e-7  # half a unit in the 6th decimal, plus float32 rounding


def decoded_instance(body: bytes, input_name: str | None = None) -> np.ndarray:
    instance = json.loads(body)["instances"][0]
    return np.array(instance[input_name] if input_name else instance, dtype=np.float64)


def random_pixels(shape: tuple, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=shape, dtype=np.uint8)


@pytest.mark.parametrize("scale", SCALES)
def test_body_of_a_real_photo_parses_to_normalized_pixels(scale: str) -> None:
    pixels = fit(decode_image(PHOTOS[1]), InputSpec(150, 150))
    body = predict_body(pixels, PixelEncoder(scale), input_name="conv2d_input", signature="serving_default")
    values = decoded_instance(body, "conv2d_input")
    assert values.shape == (150, 150, 3)
    assert np.abs(values - normalize(pixels, scale)).max() <= TOLERANCE


@pytest.mark.parametrize("scale", SCALES)
@pytest.mark.parametrize("shape", [(150, 150, 3), (224, 224, 3), (1, 1, 3), (3, 5, 1), (2, 7, 4)])
def test_random_pixels_of_any_shape_round_trip_within_six_decimals(scale: str, shape: tuple) -> None:
    pixels = random_pixels(shape)
    values = np.array(json.loads(PixelEncoder(scale).instance(pixels)), dtype=np.float64)
    assert values.shape == shape
    assert np.abs(values - normalize(pixels, scale)).max() <= TOLERANCE


@pytest.mark.parametrize("scale", SCALES)
def test_every_pixel_value_has_its_exact_table_entry(scale: str) -> None:
    pixels = np.arange(256, dtype=np.uint8).reshape(16, 16, 1)
    values = np.array(json.loads(PixelEncoder(scale).instance(pixels)), dtype=np.float64)
    assert np.abs(values - normalize(pixels, scale)).max() <= TOLERANCE


def test_raw_scale_writes_integers() -> None:
    pixels = np.array([[[0, 128, 255]]], dtype=np.uint8)
    assert json.loads(PixelEncoder("raw").instance(pixels)) == [[[0, 128, 255]]]
    assert all(isinstance(v, int) for v in json.loads(PixelEncoder("raw").instance(pixels))[0][0])


def test_fewer_decimals_trade_precision_for_size() -> None:
    pixels = random_pixels((20, 20, 3))
    four = PixelEncoder("unit", decimals=4)
    six = PixelEncoder("unit")
    values = np.array(json.loads(four.instance(pixels)))
    assert np.abs(values - normalize(pixels, "unit")).max() <= 5.1e-5
    assert len(four.instance(pixels)) < len(six.instance(pixels))


def test_consecutive_frames_do_not_leak_into_each_other() -> None:
    encoder = PixelEncoder("symmetric")
    first, second = random_pixels((30, 40, 3), seed=1), random_pixels((30, 40, 3), seed=2)
    encoder.instance(first)
    values = np.array(json.loads(encoder.instance(second)))
    assert np.abs(values - normalize(second, "symmetric")).max() <= TOLERANCE


def test_named_form_with_signature() -> None:
    pixels = random_pixels((2, 2, 3))
    body = predict_body(pixels, PixelEncoder(), input_name="conv2d_input", signature="serving_default")
    assert body.startswith(b'{"signature_name":"serving_default","instances":[{"conv2d_input":[[[')
    parsed = json.loads(body)
    assert list(parsed) == ["signature_name", "instances"]
    assert len(parsed["instances"]) == 1 and list(parsed["instances"][0]) == ["conv2d_input"]


def test_plain_form_without_signature() -> None:
    pixels = random_pixels((2, 2, 3))
    body = predict_body(pixels, PixelEncoder(), input_name=None, signature=None)
    assert body.startswith(b'{"instances":[[[[')
    parsed = json.loads(body)
    assert list(parsed) == ["instances"]
    assert np.array(parsed["instances"]).shape == (1, 2, 2, 3)


def test_plain_form_keeps_a_signature_and_named_form_can_omit_it() -> None:
    pixels = random_pixels((2, 2, 3))
    plain = json.loads(predict_body(pixels, PixelEncoder(), input_name=None, signature="classify"))
    named = json.loads(predict_body(pixels, PixelEncoder(), input_name="x", signature=None))
    assert plain["signature_name"] == "classify" and "signature_name" not in named
    assert np.array(named["instances"][0]["x"]).shape == (2, 2, 3)


def test_names_needing_escapes_stay_valid_json() -> None:
    body = predict_body(random_pixels((1, 1, 3)), PixelEncoder(), input_name='in"put\\', signature="sig/é")
    parsed = json.loads(body)
    assert parsed["signature_name"] == "sig/é" and 'in"put\\' in parsed["instances"][0]


@pytest.mark.parametrize("pixels", [np.zeros((2, 2, 3), np.float32), np.zeros((2, 2), np.uint8),
                                    np.zeros((0, 2, 3), np.uint8)], ids=["float", "2d", "empty"])
def test_encoder_rejects_anything_but_uint8_hwc(pixels: np.ndarray) -> None:
    with pytest.raises(ValueError, match="uint8"):
        PixelEncoder().instance(pixels)


def test_encoder_rejects_unknown_scale_and_decimals() -> None:
    with pytest.raises(ValueError, match="scale 'percent'"):
        PixelEncoder("percent")
    with pytest.raises(ValueError, match="decimals"):
        PixelEncoder("unit", decimals=0)
