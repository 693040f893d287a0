"""SIGHUP: read the config file again and switch to it without a restart, or keep the old one whole.

``plan_reload`` sorts what changed. Some keys apply in place (camera.fps, camera.skip_unchanged, model.threshold
and labels, server.refresh_s, mqtt.state_interval_s, mqtt.outbox.max_messages, log_level); the others rebuild the
stage they belong to: the source (camera.*), the serving client and model (server.*, model.*) or the
MQTT publisher (mqtt.*, device.id). state_dir is refused: the outbox lives there.

Every new stage is built and tried before anything is switched -- the new pin must be served, the new
source must open, the new MQTT credentials must load -- so a rejected reload leaves the agent exactly
as it was. Only a camera that one process cannot open twice is closed first (and reopened on failure).
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from typing import Any

from agent.config import CameraConfig, Config
from agent.configload import load_config
from agent.control import effective_config, make_publisher
from agent.daemon import Agent
from agent.errors import AgentError, CameraStalled, ConfigError, SourceError
from agent.model import ServedModel, body_encoder, fetch_served_model
from agent.mqtt import Publisher
from agent.outbox import OutboxError
from agent.pacing import Pacer, Stopped, call_unless_stopped
from agent.readahead import READS_WAIT_S, reads_over
from agent.scene import scene_gate
from agent.serving import ServingClient
from agent.sources import opened_source, source_kind
from agent.sources.base import FrameSource
from agent.stages import make_serving_client, open_outbox

logger = logging.getLogger(__name__)

SOURCE, SERVING, PUBLISHER = "source", "serving", "publisher"
IN_PLACE = frozenset({"camera.fps", "camera.skip_unchanged", "camera.skip_unchanged.threshold",
                      "camera.skip_unchanged.max_interval_s", "model.threshold", "model.labels", "server.refresh_s",
                      "mqtt.state_interval_s", "mqtt.outbox.max_messages", "log_level"})
RESTART_ONLY = {"state_dir": "state_dir cannot change without a restart (the outbox lives there)"}


def qos_refusal(old: Config, new: Config) -> str | None:
    """Turning the outbox on or off (QoS 0 has none) would strand its results or restart frame numbers."""
    if (old.mqtt.qos == 0) != (new.mqtt.qos == 0):
        return "mqtt.qos cannot change to or from 0 without a restart (QoS 0 runs without the outbox)"
    return None
# Cameras a process can hold only once: the old one must let go before the new one opens.
DEVICE_KINDS = frozenset({"picamera2", "csi", "v4l2"})
HANDOVER_S = 2.0  # the old MQTT connection's time to have "offline" acknowledged


@dataclasses.dataclass(frozen=True)
class Plan:
    """What a reload has to do: the keys that changed, the stages they rebuild, or why it cannot be done."""

    changed: tuple[str, ...]
    rebuild: frozenset[str]
    refused: str | None = None


def changed_keys(old: Any, new: Any, prefix: str = "") -> list[str]:
    """Dotted YAML keys whose values differ, in schema order."""
    keys: list[str] = []
    for spec in dataclasses.fields(old):
        if spec.metadata.get("internal"):
            continue  # Config.path: where it was read from, not a setting
        before, after, key = getattr(old, spec.name), getattr(new, spec.name), prefix + spec.name
        if dataclasses.is_dataclass(before) and type(before) is type(after):
            keys += changed_keys(before, after, key + ".")
        elif before != after:
            keys.append(key)
    return keys


def stage_of(key: str) -> str | None:
    """The stage a changed key rebuilds; None when it applies in place."""
    if key in IN_PLACE:
        return None
    if key.startswith("camera."):
        return SOURCE
    if key.startswith(("server.", "model.")):
        return SERVING  # model.size, resize, scale… change the resolved model, so it is resolved again
    return PUBLISHER  # mqtt.* and device.id (part of every topic)


def plan_reload(old: Config, new: Config) -> Plan:
    changed = tuple(changed_keys(old, new))
    refused = next((RESTART_ONLY[key] for key in changed if key in RESTART_ONLY), None) or qos_refusal(old, new)
    rebuild = {stage for stage in map(stage_of, changed) if stage is not None}
    if "camera.fps" in changed and source_kind(new.camera.source) == "video":
        rebuild.add(SOURCE)  # a video file is sampled at camera.fps in video time
    return Plan(changed, frozenset(rebuild), refused)


@dataclasses.dataclass
class Staged:
    """New stages built and tried for a reload, not switched to yet."""

    serving: ServingClient | None = None
    model: ServedModel | None = None
    publisher: Publisher | None = None  # built, not started: it holds no connection yet
    source: FrameSource | None = None

    def discard(self) -> None:
        for stage in (self.serving, self.source):
            if stage is not None:
                stage.close()


def apply_reload(agent: Agent) -> None:
    """Read the agent's config file again; switch to it whole, or keep the old one whole and log why."""
    notify = agent.heartbeat.is_ready  # before READY, systemd's start job is still waiting: nothing to say
    if notify:
        agent.heartbeat.notifier.reloading(f"reloading {agent.config.path}")
    reload_from(agent, agent.config.path)
    if notify:
        agent.heartbeat.notifier.ready(agent.health.summary())


def reload_from(agent: Agent, path: str) -> None:
    try:
        in_file = load_config(path)
        new = effective_config(in_file, agent.control.assignment)  # an assignment outlives a reload
        plan = plan_reload(agent.config, new)
        if plan.refused:
            raise ConfigError([f"{path}: {plan.refused}"])
        staged = prepare(agent, new, plan)
    except ConfigError as exc:
        reject(agent, path, exc.problems)
    except Stopped:
        return  # SIGTERM came meanwhile: the run ends, with the old config
    except CameraStalled:
        raise  # the camera closed for the reload is lost: only a restart can help (exit 1)
    except (AgentError, OSError) as exc:  # OSError: a token, password or TLS file that cannot be read
        reject(agent, path, [str(exc)])
    else:
        switch(agent, new, staged)
        agent.control.file_config = in_file
        agent.control.show()
        logger.info("config reloaded path=%s changed=%s", path, ",".join(plan.changed) or "none")
        agent.reporter.publish()  # the new version, label and topics show at once


def reject(agent: Agent, path: str, problems: list[str]) -> None:
    first = problems[0].removeprefix(f"{path}: ")  # the summary names the file once
    logger.error("config reload rejected path=%s problems=%d: %s", path, len(problems), first)
    for problem in problems:
        logger.error("error: %s", problem)
    agent.health.record_error(ConfigError.kind, problems[0])
    agent.reporter.publish()


# --- building and trying the new stages ------------------------------------------------------------

def prepare(agent: Agent, new: Config, plan: Plan) -> Staged:
    """Build every stage the plan rebuilds, the source last (it alone may touch the running one)."""
    staged = Staged()
    try:
        if SERVING in plan.rebuild:
            staged.serving, staged.model = resolve(agent, new)
        if PUBLISHER in plan.rebuild:
            staged.publisher = make_publisher(new)  # loads credentials and TLS files: may refuse
        if SOURCE in plan.rebuild and agent.source is not None:  # not opened yet: run() opens the new one
            staged.source = replace_source(agent, new.camera)
    except BaseException:
        staged.discard()
        raise
    return staged


def resolve(agent: Agent, config: Config) -> tuple[ServingClient, ServedModel | None]:
    """A client for the new server section and the model it serves (None while start-up still resolves)."""
    client = make_serving_client(config, agent.stop)
    client.on_retry = agent.heartbeat.progress
    if agent.model is None:
        return client, None  # start-up waits out an unreachable server with whatever client it has
    try:
        model = call_unless_stopped(lambda: fetch_served_model(client, config.model, config.server.encoding),
                                    agent.stop)
        return client, model
    except BaseException:
        client.close()
        raise


def replace_source(agent: Agent, camera: CameraConfig) -> FrameSource:
    """The new source, opened; the old one stays open unless both are cameras a process holds only once."""
    assert agent.source is not None
    if not (source_kind(agent.config.camera.source) in DEVICE_KINDS and source_kind(camera.source) in DEVICE_KINDS):
        return opened_source(camera, agent.stop)
    agent.source.close()  # a camera: never read ahead
    try:
        return opened_source(camera, agent.stop)
    except SourceError:
        reopen_old(agent)
        raise


def reopen_old(agent: Agent) -> None:
    try:
        agent.source = opened_source(agent.config.camera, agent.stop)
    except SourceError as exc:
        raise CameraStalled(f"{exc}; the camera closed for a reload cannot be opened again") from exc


# --- switching over --------------------------------------------------------------------------------

def switch(agent: Agent, new: Config, staged: Staged) -> None:
    """Put the new stages and config in place; nothing here refuses any more."""
    if staged.serving is not None:
        agent.serving.close()
        agent.serving, agent.encoder = staged.serving, body_encoder(new.server, new.model)
        agent.outage.initial_s = new.server.retry.initial_s
    if staged.model is not None:
        agent.model = staged.model
        agent.outage.up()  # the new server answered
    if staged.source is not None:
        assert agent.source is not None
        if reads_over(agent.reader, agent.worker, READS_WAIT_S):  # a read in flight on the old source ends first
            agent.source.close()  # closing twice is safe (a camera closed first)
        agent.source = staged.source
    if staged.publisher is not None:
        agent.publisher = agent.reporter.publisher = hand_over(agent.publisher, staged.publisher, new, agent.stop)
    apply_in_place(agent, new)
    agent.config = new


def hand_over(old: Publisher, new: Publisher, config: Config, stop: threading.Event) -> Publisher:
    """The old connection publishes ``offline`` and closes with its outbox; the new one takes the outbox over.

    Results still in it keep the topic they were classified under, and go out first.
    """
    old.stop(timeout=HANDOVER_S, drain=False, stop=stop)
    try:
        new.outbox = open_outbox(config)  # before start(): its sender starts with it
    except OutboxError as exc:
        logger.error("%s; publishing results without the outbox meanwhile", exc)
    return new.start()


def apply_in_place(agent: Agent, new: Config) -> None:
    old = agent.config
    if new.camera.fps != old.camera.fps:
        agent.pacer = Pacer(new.camera.fps)
    if new.camera != old.camera:  # new skip_unchanged settings or a new source: compare afresh from the next frame
        agent.gate = scene_gate(new.camera.skip_unchanged)
    if new.server.refresh_s != old.server.refresh_s:
        agent.next_refresh = time.monotonic() + new.server.refresh_s
    if new.log_level != old.log_level:  # a changed file wins over `--log-level`; an unchanged one does not
        logging.getLogger().setLevel(new.log_level.upper())
    if agent.publisher.outbox is not None:
        agent.publisher.outbox.max_messages = new.mqtt.outbox.max_messages
    agent.reporter.interval_s = new.mqtt.state_interval_s
    health = agent.health
    health.device, health.model, health.label = new.device.id, new.server.model, new.server.label
    health.version = agent.model.version if agent.model is not None else None
