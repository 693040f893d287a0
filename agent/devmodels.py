"""Models the TF Serving stand-in (agent.devserver) serves, from a TF-Serving-style model base.

``<base>/<model>/<version>/`` holds ``model.onnx`` (onnxruntime, imported lazily) or ``builtin.json``,
one of two built-in models that both have the tutorial CNN's signature (input ``conv2d_input`` DT_FLOAT
[-1,H,W,3], output ``dense_1`` DT_FLOAT [-1,1], or [-1,2] with ``"head": "softmax"``): ``tutorial_cnn``
(random-weight Keras tutorial CNN, meaningless outputs) or ``mean_brightness`` (costs microseconds). The
model kinds and their builtin.json keys are in agent.devmodelkinds. An optional ``signature.json`` beside
either file puts an image-decoding step in front of the model, taking encoded images (agent.devimages).

This module holds the repository: ``load_version`` loads one version folder, ``ModelRepository`` keeps
every version's state (START...END) and the labels, ``make_model_base`` writes a model base. A version
that fails to load (a bad file, a bad signature.json) shows as END with the error. Shared types
(``TensorSpec``, ``ModelError``, ``ServedModel``) are in agent.devmodeltypes; ``TensorSpec``,
``INPUT_NAME`` and ``OUTPUT_NAME`` are re-exported here for bench/soak.py's stand-in model.
"""

from __future__ import annotations

import json
import logging
import re
import threading
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from agent.devimages import read_image_input, with_image_input
from agent.devmodelkinds import INPUT_NAME, OUTPUT_NAME, load_model
from agent.devmodeltypes import ModelError, ServedModel, TensorSpec

__all__ = [
    "INPUT_NAME",
    "OUTPUT_NAME",
    "STATES",
    "ModelRepository",
    "TensorSpec",
    "VersionStatus",
    "load_version",
    "make_model_base",
]

logger = logging.getLogger(__name__)

STATES = ("START", "LOADING", "AVAILABLE", "UNLOADING", "END")


def load_version(folder: Path) -> ServedModel:
    """Load the model in one version folder (behind signature.json, if any); raise ModelError like a failed load."""
    model = load_model(folder)
    signature = folder / "signature.json"
    return with_image_input(model, read_image_input(signature), signature) if signature.is_file() else model


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
    jpeg_input: dict[str, Any] | None = None,
) -> Path:
    """Create ``root/<name>/<version>/`` folders: ONNX symlinks or builtin.json, plus signature.json.

    ``builtin`` is merged into ``{"model": "tutorial_cnn"}``; the tutorial CNN gets seed = version.
    ``jpeg_input`` (e.g. ``{"size": [150, 150], "scale": "unit"}``) is written as signature.json, merged
    into ``{"input": "image_bytes", "decode": "image"}``; None removes a signature.json left there.
    """
    root = Path(root)
    for version in versions:
        folder = root / name / str(version)
        folder.mkdir(parents=True, exist_ok=True)
        if onnx is not None:
            link = folder / "model.onnx"
            link.unlink(missing_ok=True)
            link.symlink_to(Path(onnx).resolve())
        else:
            config = {"model": "tutorial_cnn", **(builtin or {})}
            if config["model"] == "tutorial_cnn":
                config["seed"] = version
            (folder / "builtin.json").write_text(json.dumps(config) + "\n", encoding="utf-8")
        signature = folder / "signature.json"
        signature.unlink(missing_ok=True)
        if jpeg_input is not None:
            text = json.dumps({"input": "image_bytes", "decode": "image", **jpeg_input})
            signature.write_text(text + "\n", encoding="utf-8")
    return root
