"""The agent against other model shapes the stand-in can serve: softmax heads and several named outputs."""

from __future__ import annotations

import pytest
from conftest import MODEL, agent_config, run_agent

from agent.devserver import DevServer, make_model_base


def serve(tmp_path, **builtin) -> DevServer:
    base = make_model_base(tmp_path / "models", name=MODEL, versions=(2,), builtin=builtin)
    return DevServer(base).start()


@pytest.mark.parametrize(
    ("builtin", "model_section"),
    [
        pytest.param({"head": "softmax"}, {}, id="softmax-one-output"),
        pytest.param({"extra_outputs": True}, {"output": "dense_1"}, id="sigmoid-named-outputs"),
        pytest.param({"head": "softmax", "extra_outputs": True}, {"output": "dense_1"}, id="softmax-named-outputs"),
    ],
)
def test_softmax_and_named_output_models_give_a_score_per_label(tmp_path, photos, broker, collector, builtin,
                                                                model_section):
    with serve(tmp_path, **builtin) as server:
        config = agent_config(tmp_path, source=photos, server_url=server.url, mqtt_port=broker.port,
                              model=model_section)
        proc = run_agent(config)

    assert proc.returncode == 0, proc.stderr
    results = collector.results()
    assert len(results) == 4
    for result in results:
        assert set(result["scores"]) == {"cat", "dog"}
        assert abs(sum(result["scores"].values()) - 1) < 1e-3
        assert result["label"] == max(result["scores"], key=result["scores"].get)


def test_several_outputs_without_model_output_stop_the_start_with_the_names_to_choose_from(tmp_path, photos, broker):
    with serve(tmp_path, extra_outputs=True) as server:
        config = agent_config(tmp_path, source=photos, server_url=server.url, mqtt_port=broker.port)
        proc = run_agent(config)

    assert proc.returncode == 69
    assert "the signature has 2 outputs (dense_1, logits); choose one with model.output" in proc.stderr
