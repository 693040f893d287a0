"""Nothing lost: results survive a broker killed mid-run and an agent killed while the broker is away.

Real mosquitto processes (killed with SIGKILL, restarted on the same port with their persistence), the
stand-in over HTTP, and a subscriber with a persistent session at QoS 1, as a dashboard would have.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import threading
from pathlib import Path

import paho.mqtt.client as paho
import pytest
from conftest import SAMPLES, agent_config, device_for, start_agent, wait_until
from paho.mqtt.enums import CallbackAPIVersion

from agent.config import MqttConfig
from agent.devbroker import LocalBroker, free_port
from agent.mqtt import WINDOW, Publisher, Topics
from agent.outbox import Outbox


class SessionSubscriber:
    """A dashboard: persistent session (clean_session=False), QoS 1, resubscribes on every connect."""

    def __init__(self, port: int, topic: str, client_id: str):
        self.topic = topic
        self.frames: list[int] = []  # frame numbers in arrival order, duplicates included
        self._cond = threading.Condition()
        self.subscribed = threading.Event()
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=False)
        self.client.reconnect_delay_set(min_delay=1, max_delay=2)
        self.client.on_connect = lambda client, *_: client.subscribe(topic, qos=1)
        self.client.on_subscribe = lambda *_: self.subscribed.set()
        self.client.on_message = self._on_message
        self.port = port

    def __enter__(self) -> SessionSubscriber:
        self.client.connect_async("127.0.0.1", self.port)
        self.client.loop_start()
        assert self.subscribed.wait(10), "the dashboard could not subscribe"
        return self

    def __exit__(self, *exc: object) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def _on_message(self, client: paho.Client, userdata: object, message: paho.MQTTMessage) -> None:
        with self._cond:
            self.frames.append(json.loads(message.payload)["frame"])
            self._cond.notify_all()

    def wait_for_frames(self, count: int, timeout: float = 60.0) -> bool:
        """Until ``count`` distinct frames have arrived."""
        with self._cond:
            return self._cond.wait_for(lambda: len(set(self.frames)) >= count, timeout)

    def distinct_in_order(self) -> list[int]:
        """Frame numbers deduplicated (device + frame is the key), in order of first arrival."""
        seen: dict[int, None] = {}
        with self._cond:
            for frame in self.frames:
                seen.setdefault(frame, None)
        return list(seen)


def many_photos(folder: Path, count: int) -> Path:
    folder.mkdir()
    for index in range(count):
        name = ("chelsea.png", "dog.jpg")[index % 2]
        shutil.copy(SAMPLES / name, folder / f"{index:03d}-{name}")
    return folder


def predicts(devserver) -> int:
    return sum(1 for r in devserver.recorded() if r.path.endswith(":predict") and r.status == 200)


def stored(outbox: Path) -> int:
    """Results in an agent's outbox file, read by another process as SQLite allows (WAL)."""
    if not outbox.exists():
        return 0
    try:
        with sqlite3.connect(f"file:{outbox}?mode=ro", uri=True) as db:
            return int(db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0])
    except sqlite3.OperationalError:  # the agent is still creating it
        return 0


@pytest.fixture
def own_broker():
    """A mosquitto of this test alone, to kill and restart; saved to disk after every change."""
    with LocalBroker(persistence=True) as running:
        yield running


def test_a_broker_killed_mid_run_loses_no_result_and_keeps_the_order(tmp_path, devserver, own_broker,
                                                                     agent_processes):
    frames = 30
    device = device_for(tmp_path)
    config = agent_config(tmp_path, source=many_photos(tmp_path / "frames", frames), server_url=devserver.url,
                          mqtt_port=own_broker.port, camera={"fps": 10})
    with SessionSubscriber(own_broker.port, f"catdog/{device}/result", f"dash-{device}") as dashboard:
        agent = start_agent(agent_processes, config)
        assert dashboard.wait_for_frames(5), agent.stderr
        own_broker.stop(kill=True)  # SIGKILL: no goodbye to anyone
        already = predicts(devserver)
        assert wait_until(lambda: predicts(devserver) >= already + 8, timeout=30)
        own_broker.start()  # same port, same persistence file
        assert agent.wait(timeout=60) == 0, agent.stderr  # a finite run ends once the broker has everything
        assert dashboard.wait_for_frames(frames), f"got {dashboard.distinct_in_order()}\n{agent.stderr}"

    assert dashboard.distinct_in_order() == list(range(1, frames + 1))
    assert "mqtt disconnected" in agent.stderr and "Traceback" not in agent.stderr


def test_results_classified_before_a_kill_during_a_broker_outage_arrive_after_the_restart(
        tmp_path, devserver, agent_processes):
    device = device_for(tmp_path)
    broker = LocalBroker(persistence=True)  # not started: the broker is away during the first run
    config = agent_config(tmp_path, source=many_photos(tmp_path / "frames", 4), server_url=devserver.url,
                          mqtt_port=broker.port)
    first = start_agent(agent_processes, config)
    outbox = tmp_path / "state" / "outbox.sqlite3"
    assert wait_until(lambda: stored(outbox) == 4, timeout=30), first.stderr
    first.kill()  # SIGKILL while its four results wait for a broker

    with broker, SessionSubscriber(broker.port, f"catdog/{device}/result", f"dash-{device}") as dashboard:
        second = start_agent(agent_processes, config)  # classifies the folder again: frames 5 to 8
        assert second.wait(timeout=60) == 0, second.stderr
        assert dashboard.wait_for_frames(8), f"got {dashboard.distinct_in_order()}\n{second.stderr}"

    assert dashboard.distinct_in_order() == [1, 2, 3, 4, 5, 6, 7, 8]  # the kept ones first, in order
    assert "outbox holds results from an earlier run count=4" in second.stderr


def test_while_the_broker_is_away_the_results_wait_on_disk_not_in_paho(tmp_path):
    port = free_port()  # nothing listens there: the broker is away
    outbox = Outbox(tmp_path, max_messages=1000)
    cfg = MqttConfig(host="127.0.0.1", port=port)
    publisher = Publisher(cfg, Topics.for_device("catdog", "away"), "away", outbox=outbox).start()
    try:
        for frame in range(1, 51):
            publisher.publish_result({"device": "away", "frame": frame})
        assert publisher.pending() == 50
        assert len(publisher.client._out_messages) == 0  # paho holds none of them while disconnected
    finally:
        publisher.stop(timeout=0.5)
    with sqlite3.connect(tmp_path / "outbox.sqlite3") as db:
        assert db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0] == 50


def test_after_the_broker_returns_paho_never_holds_more_than_a_window_of_results(tmp_path, own_broker):
    outbox = Outbox(tmp_path, max_messages=1000)
    for frame in range(1, 201):
        outbox.put("catdog/window/result", json.dumps({"frame": frame}).encode(), frame)
    cfg = MqttConfig(host="127.0.0.1", port=own_broker.port)
    publisher = Publisher(cfg, Topics.for_device("catdog", "window"), "window", outbox=outbox)
    most = 0

    def watch() -> None:
        nonlocal most
        while publisher.pending():
            most = max(most, len(publisher.client._out_messages))

    publisher.start()
    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        assert publisher.wait_delivered(timeout=30)
    finally:
        watcher.join(5)
        publisher.stop(timeout=1)
    assert 1 <= most <= WINDOW + 2  # the window of results, plus availability and state


def test_a_10_mb_and_a_non_utf8_message_on_the_command_topic_do_not_disturb_the_agent(
        tmp_path, photos, devserver, broker, collector, agent_processes):
    config = agent_config(tmp_path, source=photos, server_url=devserver.url, mqtt_port=broker.port,
                          camera={"loop": True, "fps": 20})
    agent = start_agent(agent_processes, config)
    assert collector.wait_for(lambda: len(collector.results()) >= 2), agent.stderr
    command = f"catdog/{device_for(tmp_path)}/command"
    sender = paho.Client(CallbackAPIVersion.VERSION2)
    sender.connect("127.0.0.1", broker.port)
    sender.loop_start()
    try:
        for payload in (b"\x00" * (10 * 1024 * 1024), b"\xff\xfe{not utf-8", b"{\"id\": 1, \"set\": {}}"):
            sender.publish(command, payload, qos=1).wait_for_publish(10)
    finally:
        sender.disconnect()
        sender.loop_stop()
    seen = len(collector.results())
    assert collector.wait_for(lambda: len(collector.results()) >= seen + 5), agent.stderr  # still classifying
    assert agent.terminate() == 0, agent.stderr
    assert "Traceback" not in agent.stderr
