"""What every model of the TF Serving stand-in shares: signature tensors, errors, config-file checks.

``TensorSpec`` describes one signature tensor, ``ModelError`` a failed load or run (with its TF error
code), ``ServedModel`` what agent.devmodels serves. The config helpers read and check the JSON files in
a version folder (builtin.json, signature.json) and raise ``ModelError`` as a failed load does. The model
kinds are in agent.devmodelkinds, the encoded-image input in agent.devimages.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np


@dataclass(frozen=True)
class TensorSpec:
    """One signature tensor: alias, TF dtype name (``DT_FLOAT``), shape (-1 = any size), graph name."""

    alias: str
    dtype: str
    shape: tuple[int, ...]
    tensor_name: str


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


def tf_node(name: str) -> str:
    """The node suffix TF appends to a kernel's error message."""
    return "\n\t [[{{node " + name + "}}]]"


def read_config(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelError("INVALID_ARGUMENT", f"Could not read {path}: {exc}") from exc


def is_size(value: Any) -> bool:
    return isinstance(value, list) and len(value) == 2 and all(type(v) is int and v > 0 for v in value)


def config_error(path: Path, problems: list[str]) -> None:
    """Raise one ModelError naming every non-empty problem, if there is any."""
    if any(problems):
        raise ModelError("INVALID_ARGUMENT", f"{path}: " + "; ".join(p for p in problems if p))
