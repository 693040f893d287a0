"""SIGTERM ends the agent within 5 s in every state it can be in, and a vanished source is waited for."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import threading
import time

from conftest import SAMPLES, Collector, agent_command, agent_config, device_for, start_agent

from agent.devbroker import free_port
from agent.devserver import Fault


def assert_stops_within_5_s(agent) -> None:
    started = time.monotonic()
    code = agent.terminate(signal.SIGTERM)
    took = time.monotonic() - started
    assert code == 0, agent.stderr
    assert took < 5.0, f"took {took:.1f} s"
    assert "Traceback" not in agent.stderr


def test_sigterm_while_the_start_up_status_call_hangs(tmp_path, photos, devserver, broker, agent_processes):
    devserver.inject(Fault(delay_s=30, path_regex=r"/versions/2$"))
    config = agent_config(tmp_path, source=photos, server_url=devserver.url, mqtt_port=broker.port,
                          server={"timeout_s": 60})
    agent = start_agent(agent_processes, config)
    assert devserver.wait_for_request(lambda r: r.path.endswith("/versions/2"))

    assert_stops_within_5_s(agent)
    assert "server unavailable" not in agent.stderr, "a stop is not an outage"


class SilentBroker:
    """Accepts TCP connections and never answers: a broker that hangs after accept."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen()
        self.port = self.sock.getsockname()[1]
        self.accepted = threading.Event()
        self.clients: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            self.clients.append(client)
            self.accepted.set()

    def close(self) -> None:
        for client in self.clients:
            client.close()
        self.sock.close()


def test_sigterm_with_a_broker_that_never_answers_and_results_waiting(tmp_path, photos, devserver, agent_processes):
    silent = SilentBroker()
    try:
        config = agent_config(tmp_path, source=photos, server_url=devserver.url, mqtt_port=silent.port)
        agent = start_agent(agent_processes, config)
        assert silent.accepted.wait(10)
        # A predict that was answered: its result now waits for a broker that never acknowledges.
        assert devserver.wait_for_request(lambda r: r.path.endswith(":predict") and r.status == 200)
        assert_stops_within_5_s(agent)
        assert "results kept in the outbox for the next run" in agent.stderr
        with sqlite3.connect(tmp_path / "state" / "outbox.sqlite3") as db:
            assert db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0] >= 1  # on disk, not lost
    finally:
        silent.close()


def test_sigterm_while_the_broker_refuses_connections(tmp_path, photos, devserver, agent_processes):
    config = agent_config(tmp_path, source=photos, server_url=devserver.url, mqtt_port=free_port())
    agent = start_agent(agent_processes, config)
    assert devserver.wait_for_request(lambda r: r.path.endswith(":predict"))

    assert_stops_within_5_s(agent)
    assert agent.stderr.count("mqtt cannot connect") == 1, "one line per outage, not one per attempt"


def test_check_leaves_no_availability_behind(tmp_path, photos, devserver, broker):
    config = agent_config(tmp_path, source=photos, server_url=devserver.url, mqtt_port=broker.port)
    proc = subprocess.run(agent_command("check", "--config", str(config)), capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr

    late = Collector(broker.port, topic=f"catdog/{device_for(tmp_path)}/#").start()
    try:
        # A retained message would arrive right after the subscription; a sentinel bounds the wait.
        late.client.publish(f"catdog/{device_for(tmp_path)}/sentinel", b"x", qos=1)
        assert late.wait_for(lambda: late.on("sentinel"))
        assert late.on("availability") == [], "check must not claim the device is online (or offline)"
    finally:
        late.stop()


def test_a_looping_folder_that_empties_is_waited_for_and_resumes(tmp_path, devserver, broker, collector,
                                                                 agent_processes):
    folder = tmp_path / "drop"
    folder.mkdir()
    shutil.copy(SAMPLES / "dog.jpg", folder / "a.jpg")
    config = agent_config(tmp_path, source=folder, server_url=devserver.url, mqtt_port=broker.port,
                          camera={"loop": True, "fps": 20})
    agent = start_agent(agent_processes, config)
    assert collector.wait_for(lambda: len(collector.on("result")) >= 1)

    (folder / "a.jpg").unlink()
    assert collector.wait_for(lambda: any(m.json()["camera_ok"] is False for m in collector.on("state")))
    seen = len(collector.on("result"))
    shutil.copy(SAMPLES / "chelsea.png", folder / "b.png")

    assert collector.wait_for(lambda: len(collector.on("result")) > seen, timeout=30)
    assert collector.wait_for(lambda: collector.on("state")[-1].json()["camera_ok"] is True)
    assert_stops_within_5_s(agent)
    assert "source back" in agent.stderr


def test_sigterm_while_the_source_blocks_on_a_named_pipe_with_no_writer(tmp_path, devserver, broker, collector,
                                                                        agent_processes):
    fifo = tmp_path / "snapshot.jpg"
    os.mkfifo(fifo)  # opening it blocks until a writer comes: a source that hangs
    config = agent_config(tmp_path, source=fifo, server_url=devserver.url, mqtt_port=broker.port,
                          camera={"loop": True})
    agent = start_agent(agent_processes, config)
    assert collector.wait_for(lambda: any(m.json()["status"] == "running" for m in collector.on("state")))

    assert_stops_within_5_s(agent)
