"""Devices played by the tests through the MQTT contract (README "MQTT topics", schemas/), not mocks of our code.

A :class:`FakeDevice` does on a real broker what an agent promises: retained ``state`` and ``availability``
(``offline`` as its Last Will), commands on ``{prefix}/{device}/command`` and on its groups'
``{prefix}/group/{name}/command``, and one acknowledgement per command on ``command/result``. Everything it
receives or sends is checked against the JSON Schemas.
"""

from __future__ import annotations

import json
import threading
import uuid
from typing import Any

import paho.mqtt.client as paho
from helpers_schemas import validate
from paho.mqtt.enums import CallbackAPIVersion

LABEL_VERSIONS = {"stable": "2", "canary": "4"}  # what the fake "server" maps labels to


def state_payload(device: str, *, version: str | None = "2", groups: tuple[str, ...] | list[str] = (),
                  configured: int | None = 2, assigned: dict | None = None, source: str = "config",
                  **fields: Any) -> dict[str, Any]:
    """A state payload as the agent publishes it (validated against state.schema.json)."""
    state: dict[str, Any] = {
        "device": device, "status": "running", "model": "cat_dog_classifier", "version": version, "label": None,
        "fps": 1.0, "frames": 10, "results": 10, "errors": {}, "server_ok": True, "camera_ok": True, "queued": 0,
        "dropped": 0, "last_error": None, "uptime_s": 12.5, "agent_version": "0.1.0",
        "pin": {"configured": {"version": configured, "label": None}, "assigned": assigned, "source": source},
    }
    if groups:
        state["groups"] = list(groups)
    state.update(fields)
    return validate("state", state)


def _client(name: str) -> paho.Client:
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"{name}-{uuid.uuid4().hex[:6]}",
                         protocol=paho.MQTTv311, clean_session=True)
    return client


def encode(payload: Any) -> bytes:
    if isinstance(payload, bytes):
        return payload
    return payload.encode() if isinstance(payload, str) else json.dumps(payload, separators=(",", ":")).encode()


def retain(port: int, messages: dict[str, Any]) -> None:
    """Publish each message retained (QoS 1) and wait for the broker's acknowledgements."""
    client = _client("retainer")
    client.connect("127.0.0.1", port)
    client.loop_start()
    try:
        infos = [client.publish(topic, encode(payload), qos=1, retain=True) for topic, payload in messages.items()]
        for info in infos:
            info.wait_for_publish(5)
            assert info.is_published()
    finally:
        client.disconnect()
        client.loop_stop()


def offline_device(port: int, prefix: str, device: str, **state: Any) -> None:
    """A device that was seen and is gone: retained state, retained ``offline``."""
    retain(port, {f"{prefix}/{device}/state": state_payload(device, **state),
                  f"{prefix}/{device}/availability": "offline"})


class FakeDevice:
    """An online device; ``answer`` is ``accept``, ``refuse`` (with ``error``) or ``silent`` (never answers)."""

    def __init__(self, port: int, prefix: str, device: str, *, answer: str = "accept", error: str = "refused",
                 groups: tuple[str, ...] = (), **state: Any):
        self.port, self.prefix, self.device = port, prefix, device
        self.answer, self.error, self.groups = answer, error, groups
        self.state = state_payload(device, groups=groups, **state)
        self.commands: list[tuple[str, dict, bool]] = []  # (topic, command, retain flag)
        self.problems: list[str] = []  # schema violations met in paho's thread, asserted by the tests
        self.got_command = threading.Event()
        self._subscribed = threading.Event()
        self.topic = f"{prefix}/{device}"
        self.client = _client(f"fake-{device}")
        self.client.will_set(f"{self.topic}/availability", b"offline", qos=1, retain=True)
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = lambda *args: self._subscribed.set()
        self.client.on_message = self._on_message

    def start(self) -> FakeDevice:
        self.client.connect("127.0.0.1", self.port)
        self.client.loop_start()
        assert self._subscribed.wait(5), f"{self.device}: no SUBACK"
        for info in (self._publish("state", self.state, retain=True), self._publish("availability", "online", True)):
            info.wait_for_publish(5)
        return self

    def stop(self) -> None:
        self._publish("availability", "offline", retain=True).wait_for_publish(5)
        self.client.disconnect()
        self.client.loop_stop()

    def _publish(self, kind: str, payload: Any, retain: bool = False) -> paho.MQTTMessageInfo:
        if kind != "availability":
            validate("command-result" if kind == "command/result" else kind, payload)
        return self.client.publish(f"{self.topic}/{kind}", encode(payload), qos=1, retain=retain)

    def _on_connect(self, client: paho.Client, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        topics = [f"{self.topic}/command"] + [f"{self.prefix}/group/{g}/command" for g in self.groups]
        client.subscribe([(topic, 1) for topic in topics])

    def _on_message(self, client: paho.Client, userdata: Any, message: paho.MQTTMessage) -> None:
        try:
            self._handle(message)
        except AssertionError as exc:
            self.problems.append(str(exc))

    def _handle(self, message: paho.MQTTMessage) -> None:
        command = validate("command", bytes(message.payload))  # every command the CLI sends obeys the schema
        self.commands.append((message.topic, command, bool(message.retain)))
        self.got_command.set()
        if self.answer == "silent":
            return
        ack: dict[str, Any] = {"id": command["id"], "ok": self.answer == "accept", "device": self.device}
        if self.answer == "accept":
            self.state = self._applied(command["set"])
            self._publish("state", self.state, retain=True)
            ack["state"] = self.state
        else:
            ack["error"] = self.error
        self._publish("command/result", ack)

    def _applied(self, change: dict[str, Any]) -> dict[str, Any]:
        pin = dict(self.state["pin"])
        configured = pin["configured"]
        if change.get("version") is None and change.get("label") is None:  # back to the configured pin
            pin.update(assigned=None, source="config")
            version = str(configured["version"]) if configured["version"] is not None else self.state["version"]
        else:
            assigned = {"version": change.get("version"), "label": change.get("label")}
            pin.update(assigned=assigned, source="command")
            version = str(assigned["version"]) if assigned["version"] else LABEL_VERSIONS[assigned["label"]]
        return validate("state", {**self.state, "version": version, "pin": pin})
