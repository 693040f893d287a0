"""The :predict body: JSON numbers (normalize(pixels) to 4 or more decimals) or base64 JPEG, TF Serving's row format."""

from __future__ import annotations

import base64
import io
import json
import os
from pathlib import Path

import numpy as np
import pytest
from helpers_media import PHOTOS
from PIL import Image

from agent.encode import BodyEncoder, PixelEncoder, jpeg_body, predict_body
from agent.preprocess import InputSpec, fit, normalize, preprocess
from agent.sources.files import decode_image

SCALES = ["unit", "symmetric", "raw"]
DECIMALS = [4, 6, 9]


def tolerance(decimals: int) -> float:
    """Half a unit in the last decimal, plus float32 rounding."""
    return 0.5 * 10.0 ** -decimals + 1e-8


def decoded_instance(body: bytes, input_name: str | None = None) -> np.ndarray:
    instance = json.loads(body)["instances"][0]
    return np.array(instance[input_name] if input_name else instance, dtype=np.float64)


def random_pixels(shape: tuple, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=shape, dtype=np.uint8)


@pytest.mark.parametrize("scale", SCALES)
@pytest.mark.parametrize("decimals", DECIMALS)
def test_body_of_a_real_photo_parses_to_normalized_pixels(scale: str, decimals: int) -> None:
    pixels = fit(decode_image(PHOTOS[1]), InputSpec(150, 150))
    body = predict_body(pixels, PixelEncoder(scale, decimals), input_name="conv2d_input",
                        signature="serving_default")
    values = decoded_instance(body, "conv2d_input")
    assert values.shape == (150, 150, 3)
    assert np.abs(values - normalize(pixels, scale)).max() <= tolerance(decimals)


@pytest.mark.parametrize("scale", SCALES)
@pytest.mark.parametrize("shape", [(150, 150, 3), (224, 224, 3), (1, 1, 3), (3, 5, 1), (2, 7, 4)])
def test_random_pixels_of_any_shape_round_trip_within_the_default_four_decimals(scale: str, shape: tuple) -> None:
    pixels = random_pixels(shape)
    values = np.array(json.loads(PixelEncoder(scale).instance(pixels)), dtype=np.float64)
    assert values.shape == shape
    assert np.abs(values - normalize(pixels, scale)).max() <= tolerance(4)


@pytest.mark.parametrize("scale", SCALES)
@pytest.mark.parametrize("decimals", DECIMALS)
def test_every_pixel_value_has_its_exact_table_entry(scale: str, decimals: int) -> None:
    pixels = np.arange(256, dtype=np.uint8).reshape(16, 16, 1)
    values = np.array(json.loads(PixelEncoder(scale, decimals).instance(pixels)), dtype=np.float64)
    assert np.abs(values - normalize(pixels, scale)).max() <= tolerance(decimals)


@pytest.mark.parametrize("scale", ["unit", "symmetric"])
def test_four_decimals_tell_every_8_bit_step_apart(scale: str) -> None:
    """Rounding never merges two neighbouring pixel values: the error is under 1/70 of a step."""
    pixels = np.arange(256, dtype=np.uint8).reshape(1, 256, 1)
    values = np.array(json.loads(PixelEncoder(scale, 4).instance(pixels)))
    steps = np.diff(values.ravel())
    step = 1 / 255 if scale == "unit" else 2 / 255
    assert steps.min() > 0.97 * step and steps.max() < 1.03 * step
    assert tolerance(4) < step / 70


def test_raw_scale_writes_integers() -> None:
    pixels = np.array([[[0, 128, 255]]], dtype=np.uint8)
    assert json.loads(PixelEncoder("raw").instance(pixels)) == [[[0, 128, 255]]]
    assert all(isinstance(v, int) for v in json.loads(PixelEncoder("raw").instance(pixels))[0][0])


def test_fewer_decimals_trade_precision_for_size() -> None:
    pixels = random_pixels((20, 20, 3))
    four = PixelEncoder("unit")
    six = PixelEncoder("unit", decimals=6)
    values = np.array(json.loads(four.instance(pixels)))
    assert np.abs(values - normalize(pixels, "unit")).max() <= 5.1e-5
    assert len(four.instance(pixels)) < len(six.instance(pixels))


def test_consecutive_frames_do_not_leak_into_each_other() -> None:
    encoder = PixelEncoder("symmetric")
    first, second = random_pixels((30, 40, 3), seed=1), random_pixels((30, 40, 3), seed=2)
    encoder.instance(first)
    values = np.array(json.loads(encoder.instance(second)))
    assert np.abs(values - normalize(second, "symmetric")).max() <= tolerance(4)


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


def decoded_jpeg(body: bytes, input_name: str | None) -> np.ndarray:
    instance = json.loads(body)["instances"][0]
    value = instance[input_name] if input_name else instance
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(value["b64"]))).convert("RGB"))


@pytest.mark.parametrize("input_name", ["image_bytes", None])
def test_jpeg_body_carries_the_fitted_frame_as_base64_jpeg(input_name: str | None) -> None:
    pixels = fit(decode_image(PHOTOS[1]), InputSpec(150, 150))
    body = jpeg_body(pixels, 90, input_name=input_name, signature="serving_default")
    parsed = json.loads(body)
    assert list(parsed) == ["signature_name", "instances"] and len(parsed["instances"]) == 1
    decoded = decoded_jpeg(body, input_name)
    assert decoded.shape == pixels.shape
    # JPEG is lossy: close on average, not exact.
    assert np.abs(decoded.astype(np.int16) - pixels).mean() < 4


def test_jpeg_quality_trades_bytes_for_fidelity() -> None:
    pixels = fit(decode_image(PHOTOS[0]), InputSpec(150, 150))
    low, high = (jpeg_body(pixels, q, input_name=None, signature=None) for q in (30, 95))
    assert len(low) < len(high)
    errors = [np.abs(decoded_jpeg(body, None).astype(np.int16) - pixels).mean() for body in (low, high)]
    assert errors[1] < errors[0]


def test_body_encoder_writes_the_encoding_the_model_takes() -> None:
    pixels = random_pixels((8, 8, 3))
    encoder = BodyEncoder("symmetric", decimals=5, jpeg_quality=80)
    as_json = encoder.body(pixels, "json", input_name="x", signature=None)
    assert as_json == predict_body(pixels, PixelEncoder("symmetric", 5), input_name="x", signature=None)
    as_jpeg = encoder.body(pixels, "b64_jpeg", input_name="x", signature=None)
    assert as_jpeg == jpeg_body(pixels, 80, input_name="x", signature=None)
    with pytest.raises(ValueError, match="encoding 'auto'"):
        encoder.body(pixels, "auto", input_name="x", signature=None)


def test_four_decimals_move_the_real_models_output_by_less_than_1e_4_on_the_real_photos() -> None:
    """The JSON the agent sends by default, parsed as the server would, against the exact float32 input."""
    model_path = os.environ.get("CATDOG_ONNX_MODEL")
    if not model_path or not Path(model_path).is_file():
        pytest.skip("CATDOG_ONNX_MODEL is not set to the ONNX model file")
    onnxruntime = pytest.importorskip("onnxruntime")
    session = onnxruntime.InferenceSession(model_path, providers=["CPUExecutionProvider"])
    feed = session.get_inputs()[0]
    spec = InputSpec(*feed.shape[1:3])
    exact, sent = [], []
    for photo in PHOTOS:
        pixels = fit(decode_image(photo), spec)
        exact.append(preprocess(decode_image(photo), spec))
        sent.append(np.array(json.loads(PixelEncoder("unit", 4).instance(pixels)), dtype=np.float32))
    p_exact = session.run(None, {feed.name: np.stack(exact)})[0]
    p_sent = session.run(None, {feed.name: np.stack(sent)})[0]
    assert np.abs(np.stack(sent) - np.stack(exact)).max() > 1e-6, "the rounding did change the input"
    assert np.abs(p_sent - p_exact).max() < 1e-4, f"p moved by {np.abs(p_sent - p_exact).max():.2e}"
