"""``catdog-agent snapshot``: save what the model would see, to aim the camera and catch a colour mistake.

The frame goes through the same source and the same fit (size, resize mode, interpolation) as in
``run``, then is enlarged with nearest-neighbour, so each model pixel shows as a visible block.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from agent.config import Config
from agent.errors import AgentError, ServerError
from agent.frames import Frame
from agent.preprocess import InputSpec, fit
from agent.sources import read_one_frame

logger = logging.getLogger(__name__)

DEFAULT_SIZE = (150, 150)  # the tutorial model's input, when neither the config nor the server says
VIEW_PIXELS = 600  # the saved picture's longer side is enlarged to about this


@dataclass(frozen=True)
class Snapshot:
    """The saved picture and where its size came from, for the one line the command prints."""

    path: Path
    frame: Frame
    spec: InputSpec
    size_from: str
    enlarged: int

    def describe(self) -> str:
        height, width = self.frame.rgb.shape[:2]
        spec = self.spec
        return (f"saved {self.path}: what the model sees, {spec.width}x{spec.height} ({self.size_from}; "
                f"{spec.resize}, {spec.interpolation}) from a {width}x{height} frame of {self.frame.origin}, "
                f"enlarged {self.enlarged}x. If red things look blue, set camera.swap_rb: true")


def take_snapshot(config: Config, out: Path) -> Snapshot:
    """Read one frame from the configured source, fit it to the model input and save it enlarged."""
    spec, size_from = model_input(config)
    frame = read_one_frame(config.camera).frame
    pixels = fit(frame.rgb, spec)
    enlarged = max(1, VIEW_PIXELS // max(spec.height, spec.width))
    view = pixels.repeat(enlarged, axis=0).repeat(enlarged, axis=1)
    try:
        Image.fromarray(np.ascontiguousarray(view)).save(out)
    except (OSError, ValueError) as exc:  # unknown suffix, unwritable folder
        raise AgentError(f"{out}: cannot save the snapshot: {exc}") from exc
    return Snapshot(out, frame, spec, size_from, enlarged)


def model_input(config: Config) -> tuple[InputSpec, str]:
    """The model input the agent would use: model.size, else the server's metadata, else 150x150."""
    cfg = config.model
    if cfg.size is not None:
        return _spec(config, cfg.size), "model.size"
    from agent.model import fetch_served_model
    from agent.stages import make_serving_client

    serving = make_serving_client(config, threading.Event())
    try:
        return fetch_served_model(serving, cfg, config.server.encoding).input_spec, "from the server's metadata"
    except ServerError as exc:
        logger.warning("server metadata unavailable, using %dx%d: %s", *DEFAULT_SIZE, exc)
        return _spec(config, DEFAULT_SIZE), "server unreachable: default size"
    finally:
        serving.close()


def _spec(config: Config, size: tuple[int, int]) -> InputSpec:
    """``size`` (height, width) with the config's resize mode, interpolation and scale."""
    cfg = config.model
    return InputSpec(size[0], size[1], cfg.resize, cfg.interpolation, cfg.scale)
