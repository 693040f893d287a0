"""Models the TF Serving stand-in (agent.devserver) serves, from a TF-Serving-style model base.

``<base>/<model>/<version>/`` holds ``model.onnx`` (onnxruntime, imported lazily) or ``builtin.json``:
the classic Keras cats-vs-dogs tutorial CNN with weights drawn from a seed. The built-in model's outputs
are deterministic and spread over (0, 1) but MEANINGLESS (random weights, never trained): use it to
exercise the protocol, never to judge a classification. A version that fails to load shows as END.
"""

from __future__ import annotations

import functools
import json
import logging
import re
import threading
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

logger = logging.getLogger(__name__)

STATES = ("START", "LOADING", "AVAILABLE", "UNLOADING", "END")
INPUT_NAME = "conv2d_input"
OUTPUT_NAME = "dense_1"
_SIZE = 150
_FILTERS = ((3, 16), (16, 32), (32, 64))
_FLAT = 17 * 17 * 64  # 150 -> conv 148 -> pool 74 -> 72 -> 36 -> 34 -> 17
_HIDDEN = 512
_CHUNK = 1  # one image per pass (the head too): results do not depend on the batch size, buffers stay small
_BUILTIN_KEYS = {"model", "seed", "head", "extra_outputs"}


@dataclass(frozen=True)
class TensorSpec:
    """One signature tensor: alias, TF dtype name (``DT_FLOAT``), shape (-1 = any size), graph name."""

    alias: str
    dtype: str
    shape: tuple[int, ...]
    tensor_name: str


_TUTORIAL_INPUT = TensorSpec(INPUT_NAME, "DT_FLOAT", (-1, _SIZE, _SIZE, 3), f"serving_default_{INPUT_NAME}:0")


class ModelError(Exception):
    """A model failed to load or to run; ``code`` is the TF error-code name (``INVALID_ARGUMENT``...)."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


class ServedModel(Protocol):
    kind: str  # "builtin" or "onnx"
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    def predict(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]: ...


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


def _tf_node(name: str) -> str:
    return "\n\t [[{{node " + name + "}}]]"


def _check_tutorial_input(shape: tuple[int, ...]) -> None:
    """Raise the error TF's kernels give for an input the tutorial CNN cannot take."""
    dims, first_conv = "[" + ",".join(str(d) for d in shape) + "]", _tf_node("sequential/conv2d/Conv2D")
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
            raise ModelError("INVALID_ARGUMENT", message + _tf_node(f"sequential/conv2d{suffix}/Conv2D"))
        height, width = (height - 2) // 2, (width - 2) // 2
    flat = height * width * _FILTERS[-1][1]
    if flat != _FLAT:
        message = f"Matrix size-incompatible: In[0]: [{shape[0]},{flat}], In[1]: [{_FLAT},{_HIDDEN}]"
        raise ModelError("INVALID_ARGUMENT", message + _tf_node("sequential/dense/MatMul"))


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


def _load_builtin(path: Path) -> TutorialCNN:
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelError("INVALID_ARGUMENT", f"Could not read {path}: {exc}") from exc
    if not isinstance(config, dict) or set(config) - _BUILTIN_KEYS:
        message = f'{path}: expected an object with keys from {sorted(_BUILTIN_KEYS)}, like {{"model": "tutorial_cnn"}}'
        raise ModelError("INVALID_ARGUMENT", f"{message}, not {config!r}")
    seed, head, extra = config.get("seed", 0), config.get("head", "sigmoid"), config.get("extra_outputs", False)
    problems = [
        f"model must be 'tutorial_cnn', not {config.get('model')!r}" if config.get("model") != "tutorial_cnn" else "",
        f"seed must be a non-negative integer, not {seed!r}" if type(seed) is not int or seed < 0 else "",
        f"head must be 'sigmoid' or 'softmax', not {head!r}" if head not in ("sigmoid", "softmax") else "",
        f"extra_outputs must be true or false, not {extra!r}" if type(extra) is not bool else "",
    ]
    if any(problems):
        raise ModelError("INVALID_ARGUMENT", f"{path}: " + "; ".join(p for p in problems if p))
    return TutorialCNN(seed, head, extra)


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


def load_version(folder: Path) -> ServedModel:
    """Load the model in one version folder; raise ModelError like a failed SavedModel load."""
    if (folder / "model.onnx").is_file():
        return OnnxModel(folder / "model.onnx")
    if (folder / "builtin.json").is_file():
        return _load_builtin(folder / "builtin.json")
    raise ModelError(
        "NOT_FOUND", f"Could not find model.onnx or builtin.json at supplied export directory path: {folder}"
    )


# --- the repository: versions, states, labels ---------------------------------------------------


@dataclass(frozen=True)
class VersionStatus:
    """One line of TF Serving's model status: version, state and load result."""

    version: int
    state: str
    error_code: str = "OK"
    error_message: str = ""


@dataclass
class _Slot:
    status: VersionStatus
    model: ServedModel | None = None


class ModelRepository:
    """Every model and version under a model base, with their states and labels (thread-safe)."""

    def __init__(self, base: Path, labels: Mapping[str, Mapping[str, int]] | None = None):
        self.base = Path(base)
        self._lock = threading.Lock()
        self._slots: dict[str, dict[int, _Slot]] = {}
        self._labels = {model: dict(pairs) for model, pairs in (labels or {}).items()}
        if not self.base.is_dir():
            raise FileNotFoundError(f"model base {self.base} is not a folder; create it with make_model_base()")
        for model_dir in sorted(p for p in self.base.iterdir() if p.is_dir() and not p.name.startswith(".")):
            for version_dir in sorted(model_dir.iterdir()):
                if version_dir.is_dir() and re.fullmatch(r"[0-9]+", version_dir.name):
                    self.add_version(model_dir.name, int(version_dir.name))

    def add_version(self, model: str, version: int) -> VersionStatus:
        """Load ``<base>/<model>/<version>`` (again) and return its state: AVAILABLE or END."""
        folder = self.base / model / str(version)
        try:
            loaded: ServedModel | None = load_version(folder)
            status = VersionStatus(version, "AVAILABLE")
        except ModelError as exc:
            loaded, status = None, VersionStatus(version, "END", exc.code, exc.message)
            logger.warning("model load failed model=%s version=%d code=%s error=%s", model, version, exc.code, exc)
        with self._lock:
            self._slots.setdefault(model, {})[version] = _Slot(status, loaded)
        return status

    def remove_version(self, model: str, version: int) -> None:
        """Unload a version: it stays listed in state END, as TF Serving's monitor keeps it."""
        with self._lock:
            slot = self._slots.get(model, {}).get(version)
            if slot is None:
                raise KeyError(f"model {model} has no version {version} under {self.base}")
            slot.status, slot.model = VersionStatus(version, "END"), None

    def set_state(self, model: str, version: int, state: str) -> None:
        """Force a version's state; AVAILABLE needs a loaded model (it is loaded from disk if needed)."""
        if state not in STATES:
            raise ValueError(f"state {state!r} is not one of {', '.join(STATES)}")
        with self._lock:
            slot = self._slots.get(model, {}).get(version)
            needs_load = state == "AVAILABLE" and (slot is None or slot.model is None)
        if needs_load and self.add_version(model, version).state != "AVAILABLE":
            raise ValueError(f"model {model} version {version} cannot become AVAILABLE: its load failed")
        with self._lock:
            slot = self._slots.setdefault(model, {}).setdefault(version, _Slot(VersionStatus(version, state)))
            slot.status = replace(slot.status, state=state)

    def set_label(self, model: str, label: str, version: int) -> None:
        with self._lock:
            self._labels.setdefault(model, {})[label] = version

    def label_version(self, model: str, label: str) -> int | None:
        with self._lock:
            return self._labels.get(model, {}).get(label)

    def statuses(self, model: str) -> list[VersionStatus]:
        """Every known version of ``model``, newest first (empty if the model is unknown)."""
        with self._lock:
            slots = self._slots.get(model, {})
            return [slots[v].status for v in sorted(slots, reverse=True)]

    def servable(self, model: str, version: int | None) -> tuple[int, ServedModel] | None:
        """The AVAILABLE version asked for (None = the highest AVAILABLE one), or None."""
        with self._lock:
            ready = {v: s.model for v, s in self._slots.get(model, {}).items() if s.status.state == "AVAILABLE"}
        chosen = max(ready, default=None) if version is None else version
        found = ready.get(chosen) if chosen is not None else None
        return None if chosen is None or found is None else (chosen, found)

    def models(self) -> dict[str, list[tuple[int, str]]]:
        """Model name -> [(version, kind or state)], for summaries."""
        with self._lock:
            return {
                name: [(v, s.model.kind if s.model else s.status.state) for v, s in sorted(slots.items())]
                for name, slots in sorted(self._slots.items())
            }


def make_model_base(
    root: Path,
    name: str = "cat_dog_classifier",
    versions: tuple[int, ...] = (1, 2),
    onnx: Path | None = None,
    builtin: dict[str, Any] | None = None,
) -> Path:
    """Create ``root/<name>/<version>/`` folders (ONNX symlinks or builtin.json with seed = version)."""
    root = Path(root)
    for version in versions:
        folder = root / name / str(version)
        folder.mkdir(parents=True, exist_ok=True)
        if onnx is not None:
            link = folder / "model.onnx"
            link.unlink(missing_ok=True)
            link.symlink_to(Path(onnx).resolve())
        else:
            config = {"model": "tutorial_cnn", **(builtin or {}), "seed": version}
            (folder / "builtin.json").write_text(json.dumps(config) + "\n", encoding="utf-8")
    return root
