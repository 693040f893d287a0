"""server.encoding: which request body a model gets (numbers or base64 JPEG), chosen from its input's dtype."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from conftest import MODEL, ONNX_ENV, agent_config, run_agent

from agent.config import ModelConfig
from agent.devserver import DevServer, make_model_base
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


@pytest.fixture
def jpeg_devserver(tmp_path):
    """Version 1 takes float pixels; version 2 the same model behind an encoded-image (DT_STRING) signature."""
    base = make_model_base(tmp_path / "models", name=MODEL, versions=(1, 2), onnx=onnx_path())
    make_model_base(base, name=MODEL, versions=(2,), onnx=onnx_path(), jpeg_input={"size": [150, 150]})
    with DevServer(base, record_bodies=True) as server:
        yield server


def onnx_path() -> Path | None:
    """The real cat/dog model when CI has it (labels then mean something), else the built-in CNN."""
    path = os.environ.get(ONNX_ENV)
    return Path(path) if path and Path(path).is_file() else None


def test_auto_sends_base64_jpeg_to_a_string_input_model_end_to_end(tmp_path, jpeg_devserver, broker, collector,
                                                                   photos):
    by_encoding = {}
    for version in (1, 2):
        config = agent_config(tmp_path, source=photos, server_url=jpeg_devserver.url, mqtt_port=broker.port,
                              server={"version": version}, model={"size": [150, 150]},
                              state_dir=str(tmp_path / f"state{version}"))
        before = len(collector.results())
        jpeg_devserver.clear_requests()
        done = run_agent(config)
        assert done.returncode == 0, done.stderr
        assert "encoding=" + ("b64_jpeg" if version == 2 else "json") in done.stderr
        bodies = [r.body for r in jpeg_devserver.recorded() if r.path.endswith(":predict")]
        by_encoding[version] = (bodies, collector.results()[before:])
    json_bodies, json_results = by_encoding[1]
    jpeg_bodies, jpeg_results = by_encoding[2]
    assert len(jpeg_results) == len(json_results) == 4
    instance = json.loads(jpeg_bodies[0])["instances"][0]
    assert list(instance) == ["image_bytes"] and list(instance["image_bytes"]) == ["b64"]
    assert max(map(len, jpeg_bodies)) < 0.05 * min(map(len, json_bodies))
    if onnx_path() is not None:  # the real model: JPEG at quality 90 changes no label and hardly any score
        assert [r["label"] for r in jpeg_results] == [r["label"] for r in json_results] == ["cat", "dog"] * 2
        assert max(abs(a["score"] - b["score"]) for a, b in zip(jpeg_results, json_results)) < 0.02
