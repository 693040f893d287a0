"""signature.json: an image-decoding step in front of a stand-in model, as a serving function has.

An optional ``signature.json`` beside a version's model.onnx or builtin.json puts ``tf.io.decode_image`` +
resize in front of the model (see ``ImageInput``):
``{"input": "image_bytes", "decode": "image", "size": [150, 150], "scale": "unit"}``. The signature then
has one DT_STRING [-1] input, whose values are JPEG/PNG (GIF, BMP) bytes, sent as ``{"b64": "..."}``;
undecodable bytes fail with DecodeImage's error text. ``read_image_input`` checks the file and
``with_image_input`` wraps a loaded model in a ``DecodedImageModel``; agent.devmodels.load_version uses both.
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from agent.devmodeltypes import ModelError, ServedModel, TensorSpec, config_error, is_size, read_config, tf_node
from agent.preprocess import normalize

_IMAGE_KEYS = {"input", "decode", "size", "scale"}
_SCALES = ("unit", "symmetric", "raw")  # as agent.preprocess: p/255, p/127.5 - 1, p
# tensorflow/core/kernels/image/decode_image_op.cc ClassifyFileFormat(): the magic bytes decide.
_MAGIC = (("JPEG", b"\xff\xd8\xff"), ("PNG", b"\x89PNG\r\n\x1a\n"), ("GIF", b"GIF8"), ("BMP", b"BM"))
_DECODE_NODE = "map/while/decode_image/DecodeImage"
_BILINEAR: Any = getattr(Image, "Resampling", Image).BILINEAR  # Pillow < 9.1 (bullseye's 8.1) has no enum


@dataclass(frozen=True)
class ImageInput:
    """What signature.json asks for: the string input's alias, the size images are resized to, the scale.

    As a serving function ``tf.map_fn(lambda s: resize(decode_image(s, channels=3)), image_bytes)``, except
    that the resize is PIL's bilinear (what the agent uses), not tf.image.resize.
    """

    name: str
    size: tuple[int, int]  # height, width
    scale: str


def _decode_error(message: str) -> ModelError:
    return ModelError("INVALID_ARGUMENT", message + tf_node(_DECODE_NODE))


def _bad_image_text(kind: str, data: bytes, exc: Exception) -> str:
    """DecodeImageV2Op's text for undecodable data of a known format (GIF/BMP: with PIL's reason)."""
    return {
        "JPEG": "jpeg::Uncompress failed. Invalid JPEG data or crop window.",
        "PNG": f"Invalid PNG data, size {len(data)}",
        "GIF": f"Invalid GIF data (size {len(data)}), {exc}",
    }.get(kind, f"Invalid BMP data (size {len(data)}), {exc}")


def decode_image(data: bytes, spec: ImageInput) -> np.ndarray:
    """One encoded image -> float32 (height, width, 3): decoded to RGB, PIL-bilinear resized, scaled."""
    if not data:
        raise _decode_error("Input is empty.")
    kind = next((name for name, magic in _MAGIC if data.startswith(magic)), None)
    if kind is None:
        raise _decode_error("Unknown image file format. One of JPEG, PNG, GIF, BMP required.")
    try:
        with Image.open(io.BytesIO(data), formats=[kind]) as image:
            rgb = image.convert("RGB")  # channels=3: grey is repeated, alpha dropped
    except Exception as exc:  # PIL raises OSError, SyntaxError, ValueError, EOFError... for bad data
        raise _decode_error(_bad_image_text(kind, data, exc)) from None
    height, width = spec.size
    return normalize(np.asarray(rgb.resize((width, height), _BILINEAR)), spec.scale)


class DecodedImageModel:
    """A model behind signature.json: one DT_STRING [-1] input of encoded images, the model's outputs."""

    def __init__(self, model: ServedModel, spec: ImageInput):
        self.kind = model.kind
        self._model, self._spec = model, spec
        self.inputs: tuple[TensorSpec, ...] = (
            TensorSpec(spec.name, "DT_STRING", (-1,), f"serving_default_{spec.name}:0"),
        )
        self.outputs: tuple[TensorSpec, ...] = model.outputs

    def predict(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        values = feeds[self._spec.name]
        if values.ndim == 0:
            message = "TensorListFromTensor: Tensor must be at least a vector, but saw shape: []"
            raise ModelError("INVALID_ARGUMENT", message + tf_node("map/TensorArrayUnstack/TensorListFromTensor"))
        if values.ndim > 1:
            shape = "[" + ",".join(str(d) for d in values.shape[1:]) + "]"
            raise _decode_error(f"`contents` must be scalar but got shape{shape}")
        images = [decode_image(bytes(value), self._spec) for value in values]
        batch = np.stack(images) if images else np.zeros((0, *self._spec.size, 3), np.float32)
        return self._model.predict({self._model.inputs[0].alias: batch})


def read_image_input(path: Path) -> ImageInput:
    """Read and check signature.json; a bad one fails the version's load."""
    config = read_config(path)
    if not isinstance(config, dict) or set(config) - _IMAGE_KEYS:
        example = '{"input": "image_bytes", "decode": "image", "size": [150, 150], "scale": "unit"}'
        raise ModelError("INVALID_ARGUMENT", f"{path}: expected an object like {example}; not {config!r}")
    name, decode = config.get("input", "image_bytes"), config.get("decode", "image")
    size: Any = config.get("size")
    scale = config.get("scale", "unit")
    config_error(path, [
        f"input must be a non-empty string, not {name!r}" if not isinstance(name, str) or not name else "",
        f"decode must be 'image', not {decode!r}" if decode != "image" else "",
        f"size must be [height, width] of positive integers, not {size!r}" if not is_size(size) else "",
        f"scale must be one of {', '.join(_SCALES)}, not {scale!r}" if scale not in _SCALES else "",
    ])  # fmt: skip
    return ImageInput(name, (size[0], size[1]), scale)


def with_image_input(model: ServedModel, spec: ImageInput, path: Path) -> DecodedImageModel:
    """Wrap ``model``, whose single input must take float32 [-1, height, width, 3] images."""
    if len(model.inputs) != 1:
        names = ", ".join(s.alias for s in model.inputs)
        raise ModelError("INVALID_ARGUMENT", f"{path}: the model must have one input to feed images to, not {names}")
    target = model.inputs[0]
    wanted = (-1, *spec.size, 3)
    fits = len(target.shape) == 4 and all(d in (-1, w) for d, w in zip(target.shape[1:], wanted[1:]))
    if target.dtype != "DT_FLOAT" or not fits:
        raise ModelError(
            "INVALID_ARGUMENT",
            f"{path}: the model's input {target.alias} ({target.dtype} {list(target.shape)}) cannot take "
            f"DT_FLOAT {list(wanted)} images",
        )
    return DecodedImageModel(model, spec)
