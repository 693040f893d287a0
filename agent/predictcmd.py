"""``catdog-agent predict``: classify image files through the configured server, one line each."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

from agent.config import Config
from agent.encode import BodyEncoder
from agent.errors import AgentError
from agent.model import ServedModel, body_encoder, fetch_served_model
from agent.serving import ServingClient
from agent.sources.files import decode_image


def predict_files(config: Config, paths: list[Path]) -> Iterator[tuple[str, bool]]:
    """Yield ``(line, ok)`` per image: ``path: label score (scores) version N``, or the error."""
    from agent.stages import make_serving_client

    serving = make_serving_client(config, threading.Event())
    try:
        model = fetch_served_model(serving, config.model, config.server.encoding)
        encoder = body_encoder(config.server, config.model)
        for path in paths:
            try:
                yield _predict_one(path, config, serving, model, encoder), True
            except AgentError as exc:
                yield f"{path}: error: {exc}", False
    finally:
        serving.close()


def _predict_one(path: Path, config: Config, serving: ServingClient, model: ServedModel,
                 encoder: BodyEncoder) -> str:
    body = model.request_body(decode_image(path, config.camera.swap_rb), encoder, serving.signature)
    result = model.classification(serving.predict(body), config.model.labels, config.model.threshold)
    scores = ", ".join(f"{k} {v:.3f}" for k, v in result.scores.items())
    return f"{path}: {result.label} {result.score:.3f} ({scores}) version {model.version}"
