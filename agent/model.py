"""What the agent needs to know about the served model: input name and size, output, version.

Values the config sets win; the rest comes from the server's ``/metadata``. Mismatches between the
two are reported here, once, at start -- not as a 400 on every frame.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from agent.classify import Classification, classify, first_output
from agent.config import ModelConfig
from agent.encode import PixelEncoder, predict_body
from agent.errors import ModelNotAvailable, PermanentServerError
from agent.preprocess import InputSpec, fit
from agent.serving import ModelMetadata, ServingClient, TensorInfo

# Input dtypes our JSON row encoding can fill from RGB pixels (numbers only).
NUMERIC_DTYPES = frozenset({"DT_FLOAT", "DT_DOUBLE", "DT_HALF", "DT_UINT8", "DT_INT32", "DT_INT64"})
INTEGER_DTYPES = frozenset({"DT_UINT8", "DT_INT32", "DT_INT64"})


@dataclass(frozen=True)
class ServedModel:
    """The resolved model: what to send, what to read back, and which version answers."""

    version: str
    input_name: str
    input_spec: InputSpec
    output_name: str | None  # None: the signature has a single output (the reply is bare)
    input: TensorInfo
    output: TensorInfo | None

    def request_body(self, rgb: np.ndarray, encoder: PixelEncoder, signature: str | None) -> bytes:
        """The ``:predict`` body for one RGB frame: fitted to this model's input, then encoded."""
        return predict_body(fit(rgb, self.input_spec), encoder, input_name=self.input_name, signature=signature)

    def classification(self, reply: object, labels: Sequence[str], threshold: float) -> Classification:
        """This model's output in a ``:predict`` reply, as a label and scores (BadReplyError if malformed)."""
        return classify(first_output(reply, self.output_name), labels, threshold)

    def describe(self) -> str:
        out = self.output.describe() if self.output else "?"
        return f"version={self.version} input={self.input.describe()} output={out}"


def resolve_model(meta: ModelMetadata, cfg: ModelConfig, where: str) -> ServedModel:
    """Combine ``/metadata`` with the config's model section; raise ModelNotAvailable on mismatch."""
    tensor_in = _pick(meta.inputs, cfg.input, "input", where)
    tensor_out = _pick(meta.outputs, cfg.output, "output", where)
    height, width = cfg.size or _size_from_shape(tensor_in, where)
    if tensor_in.dtype not in NUMERIC_DTYPES:
        raise ModelNotAvailable(f"{where}: input {tensor_in.describe()} is not a numeric image tensor "
                                "(string/JPEG inputs are not supported yet)")
    scale = cfg.scale
    if tensor_in.dtype in INTEGER_DTYPES and scale != "raw":
        raise ModelNotAvailable(f"{where}: input {tensor_in.describe()} takes integers; set model.scale: raw")
    spec = InputSpec(height, width, cfg.resize, cfg.interpolation, scale)
    output_name = tensor_out.name if len(meta.outputs) > 1 else None
    return ServedModel(meta.version, tensor_in.name, spec, output_name, tensor_in, tensor_out)


def _pick(tensors: dict[str, TensorInfo] | object, wanted: str | None, role: str, where: str) -> TensorInfo:
    assert isinstance(tensors, dict)
    names = ", ".join(sorted(tensors)) or "none"
    if wanted is not None:
        if wanted not in tensors:
            raise ModelNotAvailable(f"{where}: model.{role} {wanted!r} is not an {role} of the signature "
                                    f"({role}s: {names})")
        return tensors[wanted]
    if len(tensors) != 1:
        raise ModelNotAvailable(f"{where}: the signature has {len(tensors)} {role}s ({names}); "
                                f"choose one with model.{role}")
    return next(iter(tensors.values()))


def _size_from_shape(tensor: TensorInfo, where: str) -> tuple[int, int]:
    shape = tensor.shape
    if len(shape) == 4 and shape[3] == 3 and shape[1] > 0 and shape[2] > 0:
        return shape[1], shape[2]
    raise ModelNotAvailable(f"{where}: cannot read the image size from input {tensor.describe()} "
                            "(expected [-1, height, width, 3]); set model.size: [height, width]")


def fetch_served_model(client: ServingClient, cfg: ModelConfig) -> ServedModel:
    """Check the pinned version is AVAILABLE, read its metadata, resolve it against the config.

    Raises ModelNotAvailable (unknown model/version/label, listing the versions that are) or
    TransientServerError (server unreachable, version still loading).
    """
    client.check_available()
    try:
        meta = client.metadata()
    except PermanentServerError as exc:
        if exc.status in (400, 404):  # 400: unknown label; 404: version vanished since the status call
            versions = ", ".join(client.available_versions()) or "none"
            raise ModelNotAvailable(f"{exc}; available versions: {versions}", status=exc.status) from exc
        raise
    where = f"model {client.endpoint.model} {client.endpoint.pin} at {client.endpoint.url}"
    return resolve_model(meta, cfg, where)
