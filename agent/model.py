"""What the agent needs to know about the served model: input name and size, output, version.

Values the config sets win; the rest comes from the server's ``/metadata``. Mismatches between the
two are reported here, once, at start -- not as a 400 on every frame.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from agent.classify import Classification, classify, first_output
from agent.config import ModelConfig, ServerConfig
from agent.encode import BodyEncoder
from agent.errors import ModelNotAvailable, PermanentServerError
from agent.preprocess import InputSpec, fit
from agent.serving import ModelMetadata, ServingClient, TensorInfo

# Input dtypes our JSON row encoding can fill from RGB pixels (numbers only); a DT_STRING input takes
# encoded images (the model decodes them in its graph).
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
    encoding: str = "json"  # or "b64_jpeg"

    def request_body(self, rgb: np.ndarray, encoder: BodyEncoder, signature: str | None) -> bytes:
        """The ``:predict`` body for one RGB frame: fitted to this model's input, then encoded."""
        return encoder.body(fit(rgb, self.input_spec, encoder.canvas), self.encoding, input_name=self.input_name,
                            signature=signature)

    def classification(self, reply: object, labels: Sequence[str], threshold: float) -> Classification:
        """This model's output in a ``:predict`` reply, as a label and scores (BadReplyError if malformed)."""
        return classify(first_output(reply, self.output_name), labels, threshold)

    def describe(self) -> str:
        out = self.output.describe() if self.output else "?"
        return f"version={self.version} input={self.input.describe()} output={out} encoding={self.encoding}"


def resolve_model(meta: ModelMetadata, cfg: ModelConfig, where: str, encoding: str = "auto") -> ServedModel:
    """Combine ``/metadata`` with the config's model section; raise ModelNotAvailable on mismatch.

    ``encoding`` (server.encoding): "auto" sends JSON numbers to a numeric input and base64 JPEG to a
    ``DT_STRING`` one; "json" and "b64_jpeg" insist, and fail here when the input cannot take them.
    """
    tensor_in = _pick(meta.inputs, cfg.input, "input", where)
    tensor_out = _pick(meta.outputs, cfg.output, "output", where)
    chosen = _encoding_for(tensor_in, encoding, where)
    if chosen == "b64_jpeg":
        if cfg.size is None:
            raise ModelNotAvailable(f"{where}: input {tensor_in.describe()} takes encoded images, whose size "
                                    "the server does not publish; set model.size: [height, width] to the size "
                                    "the model resizes to")
        height, width = cfg.size
    else:
        height, width = cfg.size or _size_from_shape(tensor_in, where)
    scale = cfg.scale
    if tensor_in.dtype in INTEGER_DTYPES and scale != "raw":
        raise ModelNotAvailable(f"{where}: input {tensor_in.describe()} takes integers; set model.scale: raw")
    spec = InputSpec(height, width, cfg.resize, cfg.interpolation, scale)
    output_name = tensor_out.name if len(meta.outputs) > 1 else None
    return ServedModel(meta.version, tensor_in.name, spec, output_name, tensor_in, tensor_out, chosen)


def _encoding_for(tensor: TensorInfo, wanted: str, where: str) -> str:
    """The body encoding this input takes: "json" for numbers, "b64_jpeg" for strings (encoded images)."""
    takes = "b64_jpeg" if tensor.dtype == "DT_STRING" else "json" if tensor.dtype in NUMERIC_DTYPES else None
    if takes is None:
        raise ModelNotAvailable(f"{where}: input {tensor.describe()} is neither a numeric image tensor nor "
                                "encoded image bytes (DT_STRING)")
    if wanted not in ("auto", takes):
        kind = "encoded image bytes (DT_STRING)" if takes == "b64_jpeg" else "numbers"
        raise ModelNotAvailable(f"{where}: server.encoding is {wanted} but input {tensor.describe()} takes "
                                f"{kind}; use server.encoding: auto or {takes}")
    return takes


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


def fetch_served_model(client: ServingClient, cfg: ModelConfig, encoding: str = "auto") -> ServedModel:
    """Check the pinned version is AVAILABLE, read its metadata, resolve it against the config.

    Raises ModelNotAvailable (unknown model/version/label, listing the versions that are) or
    TransientServerError (server unreachable, version still loading).
    """
    states = client.check_available()
    try:
        meta = client.metadata()
    except PermanentServerError as exc:
        if exc.status in (400, 404):  # 400: unknown label; 404: version vanished since the status call
            versions = ", ".join(client.available_versions()) or "none"
            raise ModelNotAvailable(f"{exc}; available versions: {versions}", status=exc.status) from exc
        raise
    where = f"model {client.endpoint.model} {client.endpoint.pin} at {client.endpoint.url}"
    if client.endpoint.label is not None:  # the label resolves; the version it names must be served too
        state = next((s.state for s in states if s.version == meta.version), "not listed")
        if state != "AVAILABLE":
            raise ModelNotAvailable(f"{where}: the label names version {meta.version}, which is {state}", status=404)
    return resolve_model(meta, cfg, where, encoding)


def body_encoder(server: ServerConfig, model: ModelConfig) -> BodyEncoder:
    """The request-body writer the config asks for (scale, JSON decimals, JPEG quality)."""
    return BodyEncoder(model.scale, server.json_decimals, server.jpeg_quality)
