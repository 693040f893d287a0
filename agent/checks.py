"""``catdog-agent check``: each part of the frame path tried once, one ✓/✗ line each, with the reason."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Callable

from agent.config import Config
from agent.errors import AgentError
from agent.frames import Frame
from agent.model import ServedModel, body_encoder, fetch_served_model
from agent.mqtt import Publisher, Topics
from agent.serving import ServingClient, VersionStatus
from agent.sources import read_one_frame


@dataclass(frozen=True)
class CheckLine:
    ok: bool
    name: str
    detail: str

    def render(self) -> str:
        return f"{'✓' if self.ok else '✗'} {self.name}: {self.detail}"


class Checker:
    """Runs the checks in order; later checks that need an earlier result are skipped with a reason."""

    def __init__(self, config: Config, serving: ServingClient):
        self.config, self.serving = config, serving
        self.model: ServedModel | None = None
        self.frame: Frame | None = None

    def run(self) -> Iterator[CheckLine]:
        yield self._attempt("server", self.check_server)
        yield self._attempt("model", self.check_model)
        yield self._attempt("broker", self.check_broker)
        yield self._attempt("source", self.check_source)
        yield self._attempt("predict", self.check_predict)

    def _attempt(self, name: str, check: Callable[[], str]) -> CheckLine:
        try:
            return CheckLine(True, name, check())
        except (AgentError, OSError, RuntimeError, ValueError) as exc:
            return CheckLine(False, name, str(exc) or type(exc).__name__)

    def check_server(self) -> str:
        states = self.serving.check_available()
        everything = self.serving.status(pinned=False)
        return (f"{self.serving.endpoint.predict_url} — {self.serving.endpoint.pin} "
                f"{_state_of(states)}; versions on the server: {_versions(everything)}")

    def check_model(self) -> str:
        self.model = fetch_served_model(self.serving, self.config.model, self.config.server.encoding)
        spec = self.model.input_spec
        return (f"{self.model.describe()}; frames become {spec.height}x{spec.width} "
                f"({spec.resize}, {spec.interpolation}, scale {spec.scale})")

    def check_broker(self) -> str:
        mqtt = self.config.mqtt
        topics = Topics.for_device(mqtt.topic_prefix, self.config.device.id)
        # A distinct client id: reusing the daemon's would disconnect a running agent.
        publisher = Publisher(mqtt, topics, f"{self.config.client_id}-check", announce=False)
        try:
            publisher.client.connect(mqtt.host, mqtt.port, keepalive=mqtt.keepalive)  # refusals raise at once
            publisher.client.loop_start()
            if not publisher.wait_connected(5.0):
                reason = publisher.refused or "no CONNACK within 5 s"
                raise AgentError(f"{mqtt.host}:{mqtt.port}: {reason}")
        except OSError as exc:
            raise AgentError(f"{mqtt.host}:{mqtt.port}: {exc.strerror or exc}") from exc
        finally:
            publisher.client.disconnect()
            publisher.client.loop_stop()
        return f"{mqtt.host}:{mqtt.port} connected{' with TLS' if mqtt.tls else ''}; topics {topics.result}, ..."

    def check_source(self) -> str:
        one = read_one_frame(self.config.camera)
        self.frame = one.frame
        height, width = one.frame.rgb.shape[:2]
        means = one.frame.rgb.reshape(-1, 3).mean(axis=0)
        details = f"; {one.details}" if one.details else ""
        return (f"{one.source}: first frame {width}x{height} ({one.frame.origin}){details}; mean R/G/B "
                f"{means[0]:.0f}/{means[1]:.0f}/{means[2]:.0f} (a red object reading blue in `catdog-agent "
                "snapshot` means camera.swap_rb: true)")

    def check_predict(self) -> str:
        if self.model is None or self.frame is None:
            raise AgentError("skipped (needs the model and a frame)")
        body = self.model.request_body(self.frame.rgb, body_encoder(self.config.server, self.config.model),
                                       self.serving.signature)
        started = time.monotonic()
        reply = self.serving.predict(body)
        took_ms = (time.monotonic() - started) * 1000
        result = self.model.classification(reply, self.config.model.labels, self.config.model.threshold)
        return (f"{result.label} {result.score:.3f} (version {self.model.version}) in {took_ms:.0f} ms, "
                f"{len(body) / 1024:.0f} KiB request")


def _state_of(states: list[VersionStatus]) -> str:
    return ", ".join(f"{s.version} {s.state}" for s in states) or "no versions"


def _versions(states: list[VersionStatus]) -> str:
    return ", ".join(f"{s.version} ({s.state})" for s in states) or "none"
