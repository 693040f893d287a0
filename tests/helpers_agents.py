"""Real agents for the fleet tests: ``catdog-agent run`` processes on one broker and one stand-in.

A :class:`Fleet` writes each device's config (fps 10, looping photos, one topic prefix of the test's own, the
device's groups), starts the agents through ``conftest.start_agent`` (the ``agent_processes`` fixture kills them)
and records everything published under the prefix, so that tests await results, states and acknowledgements.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import paho.mqtt.client as paho
from conftest import AgentProcess, Collector, agent_config, device_for, start_agent
from helpers_schemas import validate_message
from paho.mqtt.enums import CallbackAPIVersion

from agent.devserver import DevServer

GROUP = "yard"


def publish(port: int, topic: str, payload: bytes | str, retain: bool = False) -> None:
    """One QoS 1 message, acknowledged by the broker before this returns."""
    client = paho.Client(CallbackAPIVersion.VERSION2)
    client.connect("127.0.0.1", port)
    client.loop_start()
    try:
        client.publish(topic, payload, qos=1, retain=retain).wait_for_publish(5)
    finally:
        client.disconnect()
        client.loop_stop()


def command(**action: object) -> tuple[str, bytes]:
    command_id = "t-" + uuid.uuid4().hex[:8]
    return command_id, json.dumps({"id": command_id, **action}).encode()


class Fleet:
    """Agents started from configs in one test folder, and a collector on all their topics."""

    def __init__(self, tmp_path: Path, server: DevServer, broker_port: int, registry: list, photos: Path):
        self.tmp_path, self.server, self.port = tmp_path, server, broker_port
        self.registry, self.photos = registry, photos
        self.prefix = device_for(tmp_path)  # a topic prefix of this test's own: no other test's retained messages
        self.collector = Collector(broker_port, topic=f"{self.prefix}/#").start()
        self.configs: dict[str, Path] = {}

    def config(self, device: str, *, groups: tuple[str, ...] = (GROUP,), **sections: dict) -> Path:
        folder = self.tmp_path / device
        folder.mkdir(exist_ok=True)
        mqtt = {"topic_prefix": self.prefix, **sections.pop("mqtt", {})}
        server = {"version": 1, **sections.pop("server", {})}
        path = agent_config(folder, source=self.photos, server_url=self.server.url, mqtt_port=self.port,
                            device=device, camera={"fps": 10, "loop": True},
                            server=server, mqtt=mqtt, **sections)
        data = path.read_text().replace(f"device:\n  id: {device}\n",
                                        f"device:\n  id: {device}\n  groups: [{', '.join(groups)}]\n")
        path.write_text(data)
        self.configs[device] = path
        return path

    def start(self, device: str) -> AgentProcess:
        return start_agent(self.registry, self.configs[device])

    def topic(self, device: str, kind: str) -> str:
        return f"{self.prefix}/{device}/{kind}"

    def results(self, device: str) -> list[dict]:
        return [m.json() for m in list(self.collector.messages) if m.topic == self.topic(device, "result")]

    def states(self, device: str) -> list[dict]:
        return [m.json() for m in list(self.collector.messages)
                if m.topic == self.topic(device, "state") and m.payload]

    def acks(self, device: str, command_id: str) -> list[dict]:
        return [m.json() for m in list(self.collector.messages)
                if m.topic == self.topic(device, "command/result") and m.json().get("id") == command_id]

    def wait_ack(self, device: str, command_id: str, timeout: float = 20.0) -> dict:
        assert self.collector.wait_for(lambda: bool(self.acks(device, command_id)), timeout), \
            f"{device} did not answer command {command_id}"
        return self.acks(device, command_id)[0]

    def wait_version(self, device: str, version: str, after: int = 0, timeout: float = 20.0) -> None:
        assert self.collector.wait_for(
            lambda: any(r["version"] == version for r in self.results(device)[after:]), timeout), \
            f"{device} never answered with version {version}"

    def wait_state(self, device: str, version: str, timeout: float = 20.0) -> dict:
        """The device's retained state says it serves ``version`` (what `assign` and `watch` read)."""
        assert self.collector.wait_for(
            lambda: bool(self.states(device)) and self.states(device)[-1].get("version") == version, timeout), \
            f"{device} never published a state with version {version}"
        return self.states(device)[-1]

    def more_results(self, device: str, count: int = 5, timeout: float = 20.0) -> None:
        """Wait for ``count`` results beyond those seen so far: the device goes on classifying."""
        seen = len(self.results(device))
        assert self.collector.wait_for(lambda: len(self.results(device)) >= seen + count, timeout), \
            f"{device} stopped publishing results"

    def check_schemas(self, commands: bool = False) -> None:
        """Everything the agents published matches its schema; the commands too with ``commands`` (a test that
        sends malformed ones on purpose leaves them out)."""
        published = [m for m in list(self.collector.messages)
                     if m.payload and (commands or not m.topic.endswith("/command"))]
        assert published
        for message in published:
            validate_message(message.topic, message.payload)

    def stop(self) -> None:
        self.collector.stop()
