"""The stand-in's model kinds: the two built-in models (builtin.json) and ONNX files (model.onnx).

``load_model(folder)`` loads a version folder's ``model.onnx`` (onnxruntime, imported lazily) or
``builtin.json``, one of two built-in models that both have the tutorial CNN's signature (input
``conv2d_input`` DT_FLOAT [-1,H,W,3], output ``dense_1`` DT_FLOAT [-1,1], or [-1,2] with ``"head": "softmax"``):

- ``{"model": "tutorial_cnn", "seed": 1}`` (optional ``"head": "sigmoid"|"softmax"``, ``"extra_outputs":
  true``): the classic Keras cats-vs-dogs tutorial CNN, 150x150, with weights drawn from the seed. Its
  outputs are deterministic and spread over (0, 1) but MEANINGLESS (random weights, never trained): use
  it to exercise the protocol, never to judge a classification. About 9 ms per image.
- ``{"model": "mean_brightness"}`` (optional ``"size": [H, W]``, default [150, 150]; optional ``"head"``):
  p(dog) = clip(mean of the input values, 0, 1), so a bright picture says "dog". Costs microseconds: the
  model for benchmarks. Its graph is Flatten -> Dense(1) -> clip, so an input with another number of
  values per image than H*W*3 fails as TF's MatMul does ("Matrix size-incompatible: ...").

Bad inputs fail with the error text TF's kernels give. The repository that serves these is agent.devmodels.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from agent.devmodeltypes import ModelError, ServedModel, TensorSpec, config_error, is_size, read_config, tf_node

INPUT_NAME = "conv2d_input"
OUTPUT_NAME = "dense_1"
_SIZE = 150
_FILTERS = ((3, 16), (16, 32), (32, 64))
_FLAT = 17 * 17 * 64  # 150 -> conv 148 -> pool 74 -> 72 -> 36 -> 34 -> 17
_HIDDEN = 512
_CHUNK = 1  # one image per pass (the head too): results do not depend on the batch size, buffers stay small
_TUTORIAL_KEYS = {"model", "seed", "head", "extra_outputs"}
_BRIGHTNESS_KEYS = {"model", "size", "head"}
_HEADS = ("sigmoid", "softmax")
_TUTORIAL_INPUT = TensorSpec(INPUT_NAME, "DT_FLOAT", (-1, _SIZE, _SIZE, 3), f"serving_default_{INPUT_NAME}:0")


# --- the built-in tutorial CNN ------------------------------------------------------------------


@dataclass(frozen=True)
class _Weights:
    kernels: tuple[np.ndarray, ...]  # im2col layout (cin*9, cout); biases are zero like Keras' init
    dense: np.ndarray  # (18496, 512)
    head: np.ndarray  # (512, units), calibrated


def _conv_relu(images: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    count, height, width, _ = images.shape
    windows = sliding_window_view(images, (1, 3, 3, 1))  # N, H-2, W-2, C, 1, 3, 3, 1 (no axis=: numpy 2.0 stubs)
    columns = windows.reshape(count * (height - 2) * (width - 2), -1)
    return np.maximum(columns @ kernel, 0).reshape(count, height - 2, width - 2, -1)


def _max_pool(images: np.ndarray) -> np.ndarray:
    count, height, width, channels = images.shape
    h2, w2 = height // 2, width // 2
    blocks = images[:, : h2 * 2, : w2 * 2].reshape(count, h2, 2, w2, 2, channels)
    return blocks.max(axis=(2, 4))


def _hidden(weights: _Weights, images: np.ndarray) -> np.ndarray:
    """Activations of Dense(512) for a batch of (N, 150, 150, 3) images."""
    parts = []
    for start in range(0, len(images), _CHUNK):
        x = images[start : start + _CHUNK]
        for kernel in weights.kernels:
            x = _max_pool(_conv_relu(x, kernel))
        parts.append(np.maximum(x.reshape(len(x), -1) @ weights.dense, 0))
    return np.concatenate(parts) if parts else np.zeros((0, _HIDDEN), np.float32)


def _pink_noise(rng: np.random.Generator, count: int) -> np.ndarray:
    """Images with a photo-like 1/f spectrum, for calibrating the head."""
    fy = np.fft.fftfreq(_SIZE)[:, None]
    fx = np.fft.rfftfreq(_SIZE)[None, :]
    falloff = np.hypot(fx, fy)
    falloff[0, 0] = 1.0
    shape = (count, _SIZE, _SIZE // 2 + 1, 3)
    spectrum = (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)) / falloff[None, :, :, None]
    images = np.fft.irfft2(spectrum, s=(_SIZE, _SIZE), axes=(1, 2))
    images = (images - images.mean(axis=(1, 2, 3), keepdims=True)) / images.std(axis=(1, 2, 3), keepdims=True)
    return np.clip(0.45 + 0.22 * images, 0.0, 1.0).astype(np.float32)


@functools.lru_cache(maxsize=8)
def _tutorial_trunk(seed: int) -> tuple[_Weights, np.ndarray]:
    """He-scaled random conv and Dense(512) weights, and their activations on calibration images."""
    rng = np.random.default_rng(seed)
    kernels = []
    for cin, cout in _FILTERS:
        kernel = rng.standard_normal((3, 3, cin, cout), dtype=np.float32) * np.float32(np.sqrt(2 / (9 * cin)))
        if cin == 3:
            # Zero-mean first filters see edges, not brightness: plain colours all give p = 0.5.
            kernel -= kernel.mean(axis=(0, 1, 2), keepdims=True)
            kernel *= np.float32(np.sqrt(2 / 27)) / kernel.std(axis=(0, 1, 2), keepdims=True)
        kernels.append(np.ascontiguousarray(kernel.transpose(2, 0, 1, 3).reshape(9 * cin, cout)))
    dense = rng.standard_normal((_FLAT, _HIDDEN), dtype=np.float32) * np.float32(np.sqrt(2 / _FLAT))
    trunk = _Weights(tuple(kernels), dense, np.zeros((_HIDDEN, 0), np.float32))
    return trunk, _hidden(trunk, _pink_noise(np.random.default_rng([seed, 1]), 8))


@functools.lru_cache(maxsize=16)
def _tutorial_weights(seed: int, units: int) -> _Weights:
    """The trunk plus a head calibrated so that photos give logits of about -3..3."""
    trunk, hidden = _tutorial_trunk(seed)
    head = np.random.default_rng([seed, 2]).standard_normal((_HIDDEN, units))
    # ReLU features share a common direction; remove it so the logit follows content, then scale.
    common = hidden.mean(axis=0) / np.linalg.norm(hidden.mean(axis=0))
    head = head - np.outer(common, common @ head)
    head /= (hidden @ head).std(axis=0, keepdims=True)
    return replace(trunk, head=head.astype(np.float32))


def _check_tutorial_input(shape: tuple[int, ...]) -> None:
    """Raise the error TF's kernels give for an input the tutorial CNN cannot take."""
    dims, first_conv = "[" + ",".join(str(d) for d in shape) + "]", tf_node("sequential/conv2d/Conv2D")
    if len(shape) != 4:
        raise ModelError("INVALID_ARGUMENT", f"input must be 4-dimensional{dims}{first_conv}")
    if shape[3] != 3:
        message = f"input depth must be evenly divisible by filter depth: {shape[3]} vs 3"
        raise ModelError("INVALID_ARGUMENT", message + first_conv)
    height, width = shape[1], shape[2]
    for suffix in ("", "_1", "_2"):
        side = min(height, width)
        if side < 3:
            message = (
                f"Computed output size would be negative: {side - 2} "
                f"[input_size: {side}, effective_filter_size: 3, stride: 1]"
            )
            raise ModelError("INVALID_ARGUMENT", message + tf_node(f"sequential/conv2d{suffix}/Conv2D"))
        height, width = (height - 2) // 2, (width - 2) // 2
    flat = height * width * _FILTERS[-1][1]
    if flat != _FLAT:
        message = f"Matrix size-incompatible: In[0]: [{shape[0]},{flat}], In[1]: [{_FLAT},{_HIDDEN}]"
        raise ModelError("INVALID_ARGUMENT", message + tf_node("sequential/dense/MatMul"))


class TutorialCNN:
    """The Keras tutorial CNN with seeded random weights: input conv2d_input, output dense_1."""

    kind = "builtin"

    def __init__(self, seed: int, head: str = "sigmoid", extra_outputs: bool = False):
        units = 2 if head == "softmax" else 1
        self._softmax = head == "softmax"
        self._weights = _tutorial_weights(seed, units)
        self.inputs: tuple[TensorSpec, ...] = (_TUTORIAL_INPUT,)
        outputs = [TensorSpec(OUTPUT_NAME, "DT_FLOAT", (-1, units), "StatefulPartitionedCall:0")]
        if extra_outputs:
            outputs.append(TensorSpec("logits", "DT_FLOAT", (-1, units), "StatefulPartitionedCall:1"))
        self.outputs = tuple(outputs)

    def predict(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        images = feeds[INPUT_NAME]
        _check_tutorial_input(images.shape)
        with np.errstate(over="ignore", invalid="ignore"):  # extreme inputs give inf/NaN as in TF, no warning
            logits = (_hidden(self._weights, images.astype(np.float32, copy=False))[:, None] @ self._weights.head)[:, 0]
            exps = np.exp(logits - logits.max(axis=1, keepdims=True))
            scores = exps / exps.sum(axis=1, keepdims=True) if self._softmax else 1.0 / (1.0 + np.exp(-logits))
        result = {OUTPUT_NAME: scores.astype(np.float32)}
        if len(self.outputs) > 1:
            result["logits"] = logits.astype(np.float32)
        return result


def _check_flat_size(shape: tuple[int, ...], wanted: tuple[int, ...]) -> int:
    """Flatten (to [batch, -1]) then MatMul: the values per image must be H*W*3, as in a Keras Dense.

    Returns the values per image. A scalar flattens to [1,1] and a vector to [N,1], as Keras' Flatten.
    """
    batch = shape[0] if shape else 1
    per_image = int(np.prod(shape[1:], dtype=np.int64))
    needed = int(np.prod(wanted[1:]))
    if per_image != needed:
        message = f"Matrix size-incompatible: In[0]: [{batch},{per_image}], In[1]: [{needed},1]"
        raise ModelError("INVALID_ARGUMENT", message + tf_node("sequential/dense_1/MatMul"))
    return needed


class MeanBrightness:
    """p(dog) = clip(mean of the input values, 0, 1): the tutorial CNN's signature at no cost."""

    kind = "builtin"

    def __init__(self, size: tuple[int, int] = (_SIZE, _SIZE), head: str = "sigmoid"):
        self._softmax = head == "softmax"
        shape = (-1, size[0], size[1], 3)
        self.inputs: tuple[TensorSpec, ...] = (
            TensorSpec(INPUT_NAME, "DT_FLOAT", shape, f"serving_default_{INPUT_NAME}:0"),
        )
        units = 2 if self._softmax else 1
        self.outputs: tuple[TensorSpec, ...] = (
            TensorSpec(OUTPUT_NAME, "DT_FLOAT", (-1, units), "StatefulPartitionedCall:0"),
        )

    def predict(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        images = feeds[INPUT_NAME]
        per_image = _check_flat_size(images.shape, self.inputs[0].shape)
        flat = images.reshape(-1, per_image)
        with np.errstate(invalid="ignore", over="ignore"):  # NaN/inf inputs give NaN, as in TF
            dog = np.clip(flat.mean(axis=1, dtype=np.float64), 0.0, 1.0).astype(np.float32)
        scores = np.stack([1 - dog, dog], axis=1) if self._softmax else dog[:, None]
        return {OUTPUT_NAME: scores}


def _tutorial_from(path: Path, config: dict[str, Any]) -> TutorialCNN:
    seed, head, extra = config.get("seed", 0), config.get("head", "sigmoid"), config.get("extra_outputs", False)
    config_error(path, [
        f"seed must be a non-negative integer, not {seed!r}" if type(seed) is not int or seed < 0 else "",
        f"head must be 'sigmoid' or 'softmax', not {head!r}" if head not in _HEADS else "",
        f"extra_outputs must be true or false, not {extra!r}" if type(extra) is not bool else "",
    ])  # fmt: skip
    return TutorialCNN(seed, head, extra)


def _brightness_from(path: Path, config: dict[str, Any]) -> MeanBrightness:
    size, head = config.get("size", [_SIZE, _SIZE]), config.get("head", "sigmoid")
    config_error(path, [
        f"size must be [height, width] of positive integers, not {size!r}" if not is_size(size) else "",
        f"head must be 'sigmoid' or 'softmax', not {head!r}" if head not in _HEADS else "",
    ])  # fmt: skip
    return MeanBrightness((size[0], size[1]), head)


_Builder = Callable[[Path, dict[str, Any]], ServedModel]
_BUILTINS: dict[str, tuple[set[str], _Builder]] = {
    "tutorial_cnn": (_TUTORIAL_KEYS, _tutorial_from),
    "mean_brightness": (_BRIGHTNESS_KEYS, _brightness_from),
}


def load_builtin(path: Path) -> ServedModel:
    config = read_config(path)
    model = config.get("model") if isinstance(config, dict) else None
    keys, build = _BUILTINS[model] if isinstance(model, str) and model in _BUILTINS else (set(), None)
    if not isinstance(config, dict) or build is None or set(config) - keys:
        shapes = [f"{{'model': '{name}'}} plus keys from {sorted(k)}" for name, (k, _) in _BUILTINS.items()]
        raise ModelError("INVALID_ARGUMENT", f"{path}: expected an object like {' or '.join(shapes)}; not {config!r}")
    return build(path, config)


# --- ONNX models through onnxruntime ------------------------------------------------------------

_ORT_DTYPES = {
    "tensor(float)": "DT_FLOAT", "tensor(double)": "DT_DOUBLE", "tensor(float16)": "DT_HALF",
    "tensor(bfloat16)": "DT_BFLOAT16", "tensor(int8)": "DT_INT8", "tensor(int16)": "DT_INT16",
    "tensor(int32)": "DT_INT32", "tensor(int64)": "DT_INT64", "tensor(uint8)": "DT_UINT8",
    "tensor(uint16)": "DT_UINT16", "tensor(uint32)": "DT_UINT32", "tensor(uint64)": "DT_UINT64",
    "tensor(bool)": "DT_BOOL", "tensor(string)": "DT_STRING",
}  # fmt: skip
_ORT_ERROR = re.compile(r"^\[ONNXRuntimeError\] : \d+ : (\w+) : ")


def _onnx_spec(arg: Any, tensor_name: str) -> TensorSpec:
    shape = tuple(d if isinstance(d, int) else -1 for d in (arg.shape or ()))
    return TensorSpec(arg.name, _ORT_DTYPES.get(arg.type, "DT_INVALID"), shape, tensor_name)


class OnnxModel:
    """An ONNX file served through onnxruntime, with a TF-like signature read from the session."""

    kind = "onnx"

    def __init__(self, path: Path):
        try:
            import onnxruntime
        except ImportError as exc:
            raise ModelError("UNKNOWN", "onnxruntime is not installed (pip install onnxruntime)") from exc
        options = onnxruntime.SessionOptions()
        options.log_severity_level = 3  # its load-time warnings would flood the test output
        try:
            self._session = onnxruntime.InferenceSession(
                str(path), sess_options=options, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:  # onnxruntime raises its own unexported exception types
            raise ModelError("INVALID_ARGUMENT", f"Could not load ONNX model {path}: {exc}") from exc
        self.inputs = tuple(_onnx_spec(a, f"serving_default_{a.name}:0") for a in self._session.get_inputs())
        self.outputs = tuple(
            _onnx_spec(a, f"StatefulPartitionedCall:{i}") for i, a in enumerate(self._session.get_outputs())
        )

    def predict(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        try:
            values = self._session.run(None, dict(feeds))
        except Exception as exc:  # onnxruntime's exception classes live in a private module
            text = str(exc).split("\x1b[")[0].strip()
            match = _ORT_ERROR.match(text)
            code = "INVALID_ARGUMENT" if match and match.group(1) == "INVALID_ARGUMENT" else "INTERNAL"
            raise ModelError(code, text[match.end() :] if match else text) from exc
        return {spec.alias: np.asarray(value) for spec, value in zip(self.outputs, values)}


def load_model(folder: Path) -> ServedModel:
    """The version folder's model.onnx or builtin.json model; raise ModelError like a failed load."""
    if (folder / "model.onnx").is_file():
        return OnnxModel(folder / "model.onnx")
    if (folder / "builtin.json").is_file():
        return load_builtin(folder / "builtin.json")
    raise ModelError(
        "NOT_FOUND", f"Could not find model.onnx or builtin.json at supplied export directory path: {folder}"
    )
