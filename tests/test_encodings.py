"""server.encoding: which request body a model gets (numbers or base64 JPEG), chosen from its input's dtype."""

from __future__ import annotations

import pytest

from agent.config import ModelConfig
from agent.errors import ModelNotAvailable
from agent.model import resolve_model
from agent.serving import ModelMetadata, TensorInfo

OUTPUTS = {"dense_1": TensorInfo("dense_1", "DT_FLOAT", (-1, 1))}
FLOAT_INPUT = {"conv2d_input": TensorInfo("conv2d_input", "DT_FLOAT", (-1, 150, 150, 3))}
STRING_INPUT = {"image_bytes": TensorInfo("image_bytes", "DT_STRING", (-1,))}


def metadata(inputs: dict) -> ModelMetadata:
    return ModelMetadata("2", inputs, OUTPUTS)


@pytest.mark.parametrize("encoding", ["auto", "json"])
def test_a_numeric_input_gets_json_numbers(encoding: str) -> None:
    model = resolve_model(metadata(FLOAT_INPUT), ModelConfig(), "here", encoding)
    assert model.encoding == "json" and (model.input_spec.height, model.input_spec.width) == (150, 150)


@pytest.mark.parametrize("encoding", ["auto", "b64_jpeg"])
def test_a_string_input_gets_base64_jpeg_at_the_configured_size(encoding: str) -> None:
    model = resolve_model(metadata(STRING_INPUT), ModelConfig(size=(224, 160)), "here", encoding)
    assert model.encoding == "b64_jpeg" and model.input_name == "image_bytes"
    assert (model.input_spec.height, model.input_spec.width) == (224, 160)
    assert "encoding=b64_jpeg" in model.describe()


def test_a_string_input_without_model_size_asks_for_it() -> None:
    with pytest.raises(ModelNotAvailable, match=r"here: input image_bytes DT_STRING \[-1\] takes encoded images.*"
                                                r"set model.size"):
        resolve_model(metadata(STRING_INPUT), ModelConfig(), "here", "auto")


def test_json_forced_on_a_string_input_is_refused_with_the_fix() -> None:
    with pytest.raises(ModelNotAvailable, match="server.encoding is json but input image_bytes DT_STRING .* takes "
                                                "encoded image bytes .*use server.encoding: auto or b64_jpeg"):
        resolve_model(metadata(STRING_INPUT), ModelConfig(size=(150, 150)), "here", "json")


def test_b64_jpeg_forced_on_a_numeric_input_is_refused_with_the_fix() -> None:
    with pytest.raises(ModelNotAvailable, match="server.encoding is b64_jpeg but input conv2d_input DT_FLOAT .* "
                                                "takes numbers; use server.encoding: auto or json"):
        resolve_model(metadata(FLOAT_INPUT), ModelConfig(), "here", "b64_jpeg")


def test_an_input_of_neither_kind_is_refused() -> None:
    with pytest.raises(ModelNotAvailable, match="neither a numeric image tensor nor encoded image bytes"):
        resolve_model(metadata({"x": TensorInfo("x", "DT_BOOL", (-1, 150, 150, 3))}), ModelConfig(), "here")
