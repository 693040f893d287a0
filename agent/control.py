"""Central control on the device: commands, the remembered assignment, rollback, snapshots, HA discovery.

The daemon calls in at three points: ``handle_waiting()`` between frames (commands are applied there,
never mid-frame), ``classified()`` after each result and ``failed()`` after a frame the server refused.
A pin or fps change is a config change: it goes through the same plan/prepare/switch steps as a
SIGHUP reload, so the server is asked whether the new version is AVAILABLE before anything switches,
and a refusal leaves the agent exactly as it was.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from typing import TYPE_CHECKING, Any

import numpy as np

from agent import __version__, homeassistant
from agent.assignment import Assignment, AssignmentStore
from agent.commands import MAX_COMMAND_BYTES, Command, CommandError, Pin, parse_command
from agent.config import Config
from agent.errors import AgentError, BadReplyError, ModelNotAvailable, PermanentServerError, ServerError
from agent.inbox import CommandInbox, Inbound
from agent.mqtt import Publisher, Topics
from agent.pacing import Stopped
from agent.result import Result, iso_utc
from agent.snapshots import snapshot_jpeg

if TYPE_CHECKING:
    from agent.daemon import Agent

logger = logging.getLogger(__name__)

COMMANDED = ("command", "retained-command")


def configured_pin(config: Config) -> Pin:
    return Pin(config.server.version, config.server.label)


def effective_config(file_config: Config, assignment: Assignment) -> Config:
    """The file's config with what the central side assigned (pin, fps) in its place."""
    server, camera = file_config.server, file_config.camera
    if assignment.pin is not None:
        server = dataclasses.replace(server, version=assignment.pin.version, label=assignment.pin.label)
    if assignment.fps is not None:
        camera = dataclasses.replace(camera, fps=assignment.fps)
    return dataclasses.replace(file_config, server=server, camera=camera)


def make_publisher(config: Config) -> Publisher:
    """The device's MQTT client: topics, command subscriptions and (opt-in) Home Assistant discovery."""
    topics = Topics.for_device(config.mqtt.topic_prefix, config.device.id, config.device.groups)
    publisher = Publisher(config.mqtt, topics, config.client_id)
    publisher.inbox = CommandInbox(topics.commands)
    if config.mqtt.homeassistant:
        messages = homeassistant.discovery_messages(
            device_id=config.device.id, prefix=config.mqtt.topic_prefix, labels=config.model.labels,
            model=config.server.model, sw_version=__version__, discovery_prefix=config.mqtt.discovery_prefix,
            snapshot=config.mqtt.snapshot)
        publisher.on_connect_hooks.append(lambda: announce(publisher, messages))
    return publisher


def announce(publisher: Publisher, messages: list[tuple[str, bytes]]) -> None:
    for topic, payload in messages:  # retained: Home Assistant may start after us
        publisher.publish_raw(topic, payload, retain=True)


class Control:
    """Applies commands to one Agent and remembers what they assigned in ``state_dir``."""

    agent: Agent  # set by attach(): the Agent is built with its Control

    def __init__(self, file_config: Config, store: AssignmentStore, assignment: Assignment):
        self.file_config, self.store, self.assignment = file_config, store, assignment
        self.failures = 0  # frames in a row the commanded version failed
        self.last_rgb: np.ndarray | None = None  # the last classified frame, for snapshots
        self.last_label: str | None = None

    @classmethod
    def load(cls, file_config: Config) -> Control:
        """With the assignment remembered in state_dir (none on a first run)."""
        store = AssignmentStore(file_config.state_dir)
        return cls(file_config, store, store.load())

    @property
    def config(self) -> Config:
        """The config to run with: the file's, with the assignment in place."""
        return effective_config(self.file_config, self.assignment)

    def attach(self, agent: Agent) -> None:
        self.agent = agent
        self.show()

    # -- commands -------------------------------------------------------------------------------

    def handle_waiting(self) -> None:
        inbox = self.agent.publisher.inbox
        for message in inbox.take() if inbox is not None else ():
            self.handle(message)

    def handle(self, message: Inbound) -> None:
        """Apply one command and answer it on command/result; a bad one is refused, the agent goes on."""
        if message.size == 0:  # how MQTT deletes a retained message: the central side withdrew a command
            logger.info("retained command cleared topic=%s", message.topic)
            return
        try:
            if message.size > MAX_COMMAND_BYTES:
                raise CommandError(f"command is too large ({message.size} bytes; at most {MAX_COMMAND_BYTES})")
            command = parse_command(message.payload)
        except CommandError as exc:
            self.refuse(exc.command_id, str(exc), message.topic)
            return
        if command.id in self.assignment.handled:
            logger.info("command already handled id=%s topic=%s retained=%s: ignored", command.id, message.topic,
                        message.retained)
            return
        try:
            self.apply(command, message.retained)
        except Stopped:
            return
        except (CommandError, AgentError, OSError) as exc:
            self.remember(self.assignment.handled_id(command.id))  # a retained bad command is refused once
            self.refuse(command.id, f"{command.describe()}: {exc}", message.topic)
            return
        logger.info("command applied id=%s topic=%s retained=%s: %s", command.id, message.topic, message.retained,
                    command.describe())
        self.answer({"id": command.id, "ok": True, "device": self.agent.config.device.id,
                     "state": self.agent.reporter.snapshot()})

    def apply(self, command: Command, retained: bool) -> None:
        source = "retained-command" if retained else "command"
        current = self.assignment.handled_id(command.id)
        if command.pin is not None or command.unpin:
            before = current.pin if current.pin is not None else None
            assigned = dataclasses.replace(current, pin=command.pin, previous=before, command_id=command.id,
                                           source=source if command.pin is not None else "config")
            self.switch(assigned)
        elif command.fps is not None:
            self.switch(dataclasses.replace(current, fps=command.fps))
        elif command.pause is not None:
            self.remember(dataclasses.replace(current, paused=command.pause))
        elif command.snapshot:
            if self.last_rgb is None:
                raise CommandError("no frame has been classified yet")
            self.remember(current)
            self.publish_snapshot()

    def switch(self, assigned: Assignment) -> None:
        """Run the agent with ``assigned`` over the file's config (the new pin checked first), then remember it."""
        from agent.reload import plan_reload, prepare, switch

        agent = self.agent
        new = effective_config(self.file_config, assigned)
        plan = plan_reload(agent.config, new)
        staged = prepare(agent, new, plan)  # raises when the server does not serve the new pin
        switch(agent, new, staged)
        self.failures = 0
        self.remember(assigned)

    def remember(self, assignment: Assignment) -> None:
        self.assignment = assignment
        self.store.save(assignment)
        self.show()

    def show(self) -> None:
        """What state publishes about the pin, pause and groups."""
        health, assigned = self.agent.health, self.assignment
        health.groups = self.file_config.device.groups
        health.paused = assigned.paused
        health.pin = {"configured": configured_pin(self.file_config).payload(),
                      "assigned": assigned.pin.payload() if assigned.pin is not None else None,
                      "source": assigned.source if assigned.pin is not None else "config"}
        health.refresh_status()

    def refuse(self, command_id: str | None, reason: str, topic: str) -> None:
        logger.warning("command refused id=%s topic=%s: %s", command_id, topic, reason)
        self.agent.health.record_error("command", reason)
        self.answer({"id": command_id, "ok": False, "device": self.agent.config.device.id, "error": reason})

    def answer(self, payload: dict[str, Any]) -> None:
        publisher = self.agent.publisher
        publisher.publish_raw(publisher.topics.command_result, json.dumps(payload).encode())

    # -- results, failures and rollback ---------------------------------------------------------

    def classified(self, rgb: np.ndarray, result: Result) -> None:
        """A result went out: the version works; a new label shows on the snapshot topic (if enabled)."""
        self.failures = 0
        changed = result.classification.label != self.last_label
        self.last_rgb, self.last_label = rgb, result.classification.label
        if changed and self.agent.config.mqtt.snapshot:
            self.publish_snapshot()

    def failed(self, exc: ServerError) -> None:
        """A frame the (commanded) version refused: N in a row, or the version gone, and it is rolled back."""
        assigned, limit = self.assignment, self.agent.config.server.rollback_after
        if assigned.pin is None or assigned.source not in COMMANDED or limit == 0:
            return
        if not isinstance(exc, (PermanentServerError, BadReplyError)):
            return  # an outage is the server's, not the version's
        self.failures += 1
        gone = isinstance(exc, ModelNotAvailable) or getattr(exc, "status", None) == 404
        if gone or self.failures >= limit:
            self.roll_back(f"{assigned.pin.describe()} failed {self.failures} frame(s) in a row: {exc}")

    def roll_back(self, reason: str) -> None:
        assigned = self.assignment
        assert assigned.pin is not None
        target = assigned.previous
        back = dataclasses.replace(assigned, pin=target, previous=None, source="rollback" if target else "config")
        configured = f"the configured {configured_pin(self.file_config).describe()}"
        to_text = target.describe() if target is not None else configured
        try:
            self.switch(back)
        except (AgentError, Stopped) as exc:
            logger.error("rollback to %s failed: %s; staying on %s", to_text, exc, assigned.pin.describe())
            self.failures = 0  # try again after another rollback_after failures
            return
        logger.error("rolled back to %s: %s", to_text, reason)
        self.agent.health.rollback = {"from": assigned.pin.payload(), "to": target.payload() if target else None,
                                      "reason": reason, "command_id": assigned.command_id,
                                      "at": iso_utc(time.time())}
        self.answer({"id": assigned.command_id, "ok": False, "device": self.agent.config.device.id,
                     "error": f"rolled back to {to_text}: {reason}", "state": self.agent.reporter.snapshot()})
        self.agent.reporter.publish()

    # -- snapshots ------------------------------------------------------------------------------

    def publish_snapshot(self) -> None:
        assert self.last_rgb is not None
        mqtt = self.agent.config.mqtt
        try:
            jpeg = snapshot_jpeg(self.last_rgb, max_width=mqtt.snapshot_width, max_bytes=mqtt.snapshot_max_bytes)
        except ValueError as exc:
            logger.warning("snapshot not published: %s", exc)
            return
        publisher = self.agent.publisher
        publisher.publish_raw(publisher.topics.snapshot, jpeg, retain=True)
