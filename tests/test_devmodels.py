"""The stand-in's models without HTTP: built-in configs, mean_brightness, signature.json, image decoding."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from agent.devimages import DecodedImageModel, ImageInput, decode_image
from agent.devmodelkinds import MeanBrightness, TutorialCNN
from agent.devmodels import ModelRepository, load_version, make_model_base
from agent.devmodeltypes import ModelError

SAMPLES = Path(__file__).resolve().parent.parent / "agent" / "samples"
DECODE_NODE = "\n\t [[{{node map/while/decode_image/DecodeImage}}]]"


def encoded(pixels: np.ndarray, fmt: str) -> bytes:
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, fmt)
    return out.getvalue()


def write(folder: Path, name: str, data) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text(data if isinstance(data, str) else json.dumps(data), encoding="utf-8")
    return folder


# --- builtin.json --------------------------------------------------------------------------------------


def test_make_model_base_gives_the_tutorial_cnn_a_seed_and_mean_brightness_none(tmp_path):
    make_model_base(tmp_path, "cnn", versions=(3,))
    make_model_base(tmp_path, "bright", versions=(3,), builtin={"model": "mean_brightness", "size": [4, 6]})

    assert json.loads((tmp_path / "cnn" / "3" / "builtin.json").read_text()) == {"model": "tutorial_cnn", "seed": 3}
    assert json.loads((tmp_path / "bright" / "3" / "builtin.json").read_text()) == {
        "model": "mean_brightness",
        "size": [4, 6],
    }
    assert isinstance(load_version(tmp_path / "cnn" / "3"), TutorialCNN)
    assert isinstance(load_version(tmp_path / "bright" / "3"), MeanBrightness)


@pytest.mark.parametrize(
    ("config", "error"),
    [
        ({"model": "mean_brightness", "size": [150]}, "size must be [height, width] of positive integers, not [150]"),
        ({"model": "mean_brightness", "size": [0, 5]}, "size must be [height, width]"),
        ({"model": "mean_brightness", "head": "relu"}, "head must be 'sigmoid' or 'softmax', not 'relu'"),
        ({"model": "mean_brightness", "seed": 1}, "expected an object like {'model': 'tutorial_cnn'} plus keys"),
        ({"model": "tutorial_cnn", "size": [150, 150]}, "expected an object like"),
        ({"model": "resnet"}, "expected an object like"),
        ({"seed": 1}, "expected an object like"),
        ([1], "expected an object like"),
        ({"model": "tutorial_cnn", "seed": -1}, "seed must be a non-negative integer, not -1"),
    ],
)
def test_a_bad_builtin_json_fails_the_load_with_the_reason(tmp_path, config, error):
    folder = write(tmp_path / "m" / "1", "builtin.json", config)

    with pytest.raises(ModelError) as failed:
        load_version(folder)

    assert failed.value.code == "INVALID_ARGUMENT"
    assert error in failed.value.message


# --- mean_brightness -----------------------------------------------------------------------------------


def test_mean_brightness_is_the_clipped_mean_of_each_image_in_float32():
    model = MeanBrightness()
    images = np.stack([np.full((150, 150, 3), v, np.float32) for v in (0.0, 0.25, 1.0, 7.0, -2.0)])

    scores = model.predict({"conv2d_input": images})["dense_1"]

    assert scores.dtype == np.float32
    assert scores.shape == (5, 1)
    assert scores[:, 0].tolist() == [0.0, 0.25, 1.0, 1.0, 0.0]


def test_mean_brightness_has_the_tutorial_signature_at_any_size_and_a_softmax_head():
    model = MeanBrightness((32, 48), head="softmax")
    images = np.full((2, 32, 48, 3), 0.75, np.float32)

    scores = model.predict({"conv2d_input": images})["dense_1"]

    assert [(s.alias, s.dtype, s.shape) for s in model.inputs] == [("conv2d_input", "DT_FLOAT", (-1, 32, 48, 3))]
    assert [(s.alias, s.dtype, s.shape) for s in model.outputs] == [("dense_1", "DT_FLOAT", (-1, 2))]
    assert scores.tolist() == [[0.25, 0.75], [0.25, 0.75]]


def test_mean_brightness_takes_an_empty_batch_and_gives_nan_for_nan():
    model = MeanBrightness()

    empty = model.predict({"conv2d_input": np.zeros((0, 150, 150, 3), np.float32)})["dense_1"]
    nan = model.predict({"conv2d_input": np.full((1, 150, 150, 3), np.nan, np.float32)})["dense_1"]

    assert empty.shape == (0, 1)
    assert np.isnan(nan).all()


@pytest.mark.parametrize(
    ("shape", "in0"),
    [((1, 2), "[1,2]"), ((3,), "[3,1]"), ((1, 150, 150, 1), "[1,22500]"), ((2, 149, 150, 3), "[2,67050]")],
)
def test_mean_brightness_refuses_another_size_as_tfs_matmul(shape, in0):
    with pytest.raises(ModelError) as failed:
        MeanBrightness().predict({"conv2d_input": np.zeros(shape, np.float32)})

    assert failed.value.code == "INVALID_ARGUMENT"
    assert failed.value.message == (
        f"Matrix size-incompatible: In[0]: {in0}, In[1]: [67500,1]\n\t [[{{{{node sequential/dense_1/MatMul}}}}]]"
    )


# --- image decoding ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("scale", "expected"),
    [("unit", [0.0, 1.0, 128 / 255]), ("symmetric", [-1.0, 1.0, 128 / 127.5 - 1]), ("raw", [0.0, 255.0, 128.0])],
)
def test_decoded_pixels_are_scaled_as_asked(scale, expected):
    pixels = np.zeros((4, 4, 3), np.uint8)
    pixels[0, 1] = 255
    pixels[0, 2] = 128

    image = decode_image(encoded(pixels, "PNG"), ImageInput("image_bytes", (4, 4), scale))

    assert image.dtype == np.float32
    assert image[0, :3, 0].tolist() == pytest.approx(expected, abs=1e-6)


def test_decoding_resizes_with_pil_bilinear_to_height_by_width():
    data = (SAMPLES / "dog.jpg").read_bytes()

    image = decode_image(data, ImageInput("image_bytes", (40, 60), "unit"))

    reference = Image.open(io.BytesIO(data)).convert("RGB").resize((60, 40), Image.BILINEAR)
    assert image.shape == (40, 60, 3)
    np.testing.assert_array_equal(image, np.asarray(reference, np.float32) / np.float32(255))


def test_grey_and_rgba_images_become_rgb():
    grey = encoded(np.full((8, 8), 51, np.uint8), "PNG")
    rgba = encoded(np.full((8, 8, 4), [255, 0, 0, 10], np.uint8), "PNG")
    spec = ImageInput("image_bytes", (8, 8), "raw")

    assert decode_image(grey, spec)[0, 0].tolist() == [51.0, 51.0, 51.0]
    assert decode_image(rgba, spec)[0, 0].tolist() == [255.0, 0.0, 0.0]


@pytest.mark.parametrize(
    ("data", "error"),
    [
        (b"", "Input is empty."),
        (b"not an image at all", "Unknown image file format. One of JPEG, PNG, GIF, BMP required."),
        (b"RIFF\x00\x00\x00\x00WEBPVP8 ", "Unknown image file format. One of JPEG, PNG, GIF, BMP required."),
        ((SAMPLES / "dog.jpg").read_bytes()[:2000], "jpeg::Uncompress failed. Invalid JPEG data or crop window."),
        ((SAMPLES / "chelsea.png").read_bytes()[:2000], "Invalid PNG data, size 2000"),
    ],
    ids=["empty", "garbage", "webp", "truncated-jpeg", "truncated-png"],
)
def test_undecodable_bytes_fail_with_tfs_decode_image_text(data, error):
    with pytest.raises(ModelError) as failed:
        decode_image(data, ImageInput("image_bytes", (150, 150), "unit"))

    assert (failed.value.code, failed.value.message) == ("INVALID_ARGUMENT", error + DECODE_NODE)


# --- signature.json ----------------------------------------------------------------------------------------


def test_make_model_base_writes_signature_json_and_removes_it_again(tmp_path):
    make_model_base(
        tmp_path,
        "m",
        versions=(1,),
        builtin={"model": "mean_brightness"},
        jpeg_input={"size": [150, 150], "scale": "symmetric"},
    )
    written = json.loads((tmp_path / "m" / "1" / "signature.json").read_text())
    wrapped = load_version(tmp_path / "m" / "1")
    make_model_base(tmp_path, "m", versions=(1,), builtin={"model": "mean_brightness"})

    assert written == {"input": "image_bytes", "decode": "image", "size": [150, 150], "scale": "symmetric"}
    assert isinstance(wrapped, DecodedImageModel)
    assert not (tmp_path / "m" / "1" / "signature.json").exists()
    assert isinstance(load_version(tmp_path / "m" / "1"), MeanBrightness)


def test_signature_json_gives_one_string_input_and_keeps_the_models_outputs(tmp_path):
    make_model_base(
        tmp_path,
        "m",
        versions=(1,),
        builtin={"head": "softmax", "extra_outputs": True},
        jpeg_input={"input": "jpeg", "size": [150, 150]},
    )

    model = load_version(tmp_path / "m" / "1")

    assert [(s.alias, s.dtype, s.shape, s.tensor_name) for s in model.inputs] == [
        ("jpeg", "DT_STRING", (-1,), "serving_default_jpeg:0")
    ]
    assert [s.alias for s in model.outputs] == ["dense_1", "logits"]
    assert model.kind == "builtin"


def test_the_wrapped_model_sees_the_decoded_batch(tmp_path):
    make_model_base(
        tmp_path,
        "m",
        versions=(1,),
        builtin={"model": "mean_brightness", "size": [10, 20]},
        jpeg_input={"size": [10, 20], "scale": "unit"},
    )
    model = load_version(tmp_path / "m" / "1")
    white, black = (encoded(np.full((5, 5, 3), v, np.uint8), "PNG") for v in (255, 0))

    scores = model.predict({"image_bytes": np.array([white, black, white], dtype=object)})["dense_1"]
    empty = model.predict({"image_bytes": np.array([], dtype=object)})["dense_1"]

    assert scores[:, 0].tolist() == [1.0, 0.0, 1.0]
    assert empty.shape == (0, 1)


@pytest.mark.parametrize(
    ("values", "error"),
    [
        (np.array([[b"x"]], dtype=object), "`contents` must be scalar but got shape[1]" + DECODE_NODE),
        (
            np.array(b"x", dtype=object),
            "TensorListFromTensor: Tensor must be at least a vector, but saw shape: []"
            "\n\t [[{{node map/TensorArrayUnstack/TensorListFromTensor}}]]",
        ),
    ],
)
def test_strings_that_are_not_a_vector_fail_as_in_map_fn(tmp_path, values, error):
    make_model_base(tmp_path, "m", versions=(1,), builtin={"model": "mean_brightness"}, jpeg_input={"size": [150, 150]})

    with pytest.raises(ModelError) as failed:
        load_version(tmp_path / "m" / "1").predict({"image_bytes": values})

    assert failed.value.message == error


@pytest.mark.parametrize(
    ("signature", "builtin", "error"),
    [
        ({"input": "image_bytes"}, {}, "size must be [height, width] of positive integers, not None"),
        ({"size": [150, 150], "scale": "percent"}, {}, "scale must be one of unit, symmetric, raw, not 'percent'"),
        ({"size": [150, 150], "decode": "jpeg"}, {}, "decode must be 'image', not 'jpeg'"),
        ({"size": [150, 150], "input": ""}, {}, "input must be a non-empty string, not ''"),
        ({"size": [150, 150], "colour": True}, {}, "expected an object like"),
        ("[150, 150]", {}, "expected an object like"),
        ("{not json", {}, "Could not read"),
        ({"size": [100, 100]}, {}, "cannot take DT_FLOAT [-1, 100, 100, 3] images"),
        (
            {"size": [150, 150]},
            {"model": "mean_brightness", "size": [64, 64]},
            "the model's input conv2d_input (DT_FLOAT [-1, 64, 64, 3]) cannot take DT_FLOAT [-1, 150, 150, 3] images",
        ),
    ],
)
def test_a_bad_signature_json_leaves_the_version_in_end(tmp_path, signature, builtin, error):
    make_model_base(tmp_path, "m", versions=(1, 2), builtin=builtin)
    write(tmp_path / "m" / "2", "signature.json", signature)

    repository = ModelRepository(tmp_path)
    statuses = repository.statuses("m")

    assert [(s.version, s.state) for s in statuses] == [(2, "END"), (1, "AVAILABLE")]
    assert statuses[0].error_code == "INVALID_ARGUMENT"
    assert error in statuses[0].error_message
    assert "signature.json" in statuses[0].error_message
