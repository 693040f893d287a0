"""What people read: the `watch` view of MQTT traffic, and log lines under systemd's journal."""

from __future__ import annotations

import os
import subprocess

from conftest import agent_command, agent_config, device_for, run_agent

from agent.config import MqttConfig
from agent.mqtt import Publisher, Topics
from agent.watch import format_message


def test_format_message_renders_results_state_and_availability():
    result = (b'{"device":"porch","label":"dog","score":0.962,"scores":{"cat":0.038,"dog":0.962},'
              b'"version":"2","frame":17,"latency_ms":41.7,"source":"a.jpg"}')
    line = format_message("catdog/porch/result", result)
    assert line is not None
    assert "porch" in line and "frame   17" in line and "dog   0.962" in line and "version 2" in line
    assert format_message("catdog/porch/availability", b"online").split() == ["porch", "online"]
    assert "state running" in format_message("catdog/porch/state", b'{"status":"running","results":3}')
    assert format_message("catdog/porch/result", b"\xff\xfe not json") is not None, "never raises on garbage"


def test_watch_prints_what_a_device_publishes(tmp_path, broker):
    device = device_for(tmp_path)
    watch = subprocess.Popen(agent_command("watch", "--host", "127.0.0.1", "--port", str(broker.port),
                                           "--device", device), stdout=subprocess.PIPE, text=True)
    try:
        publisher = Publisher(MqttConfig(host="127.0.0.1", port=broker.port), Topics.for_device("catdog", device),
                              "catdog-watch-test").start()
        assert watch.stdout is not None
        first = watch.stdout.readline()  # the retained "online" or the live one, whichever the watcher got
        assert device in first and "online" in first
        publisher.publish_result({"device": device, "label": "cat", "score": 0.9, "scores": {"cat": 0.9, "dog": 0.1},
                                  "version": "2", "frame": 1, "latency_ms": 3.0, "source": "x.png"})
        line = watch.stdout.readline()
        assert "frame    1" in line and "cat" in line
        publisher.stop()
    finally:
        watch.terminate()
        watch.communicate(timeout=5)


def test_under_the_journal_lines_carry_syslog_priorities_and_no_timestamps(tmp_path, photos, devserver, broker):
    config = agent_config(tmp_path, source=photos, server_url=devserver.url, mqtt_port=broker.port,
                          server={"version": 7})
    log = tmp_path / "journal-stream"
    with open(log, "wb") as stream:
        stat = os.fstat(stream.fileno())
        env = {**os.environ, "JOURNAL_STREAM": f"{stat.st_dev}:{stat.st_ino}"}
        proc = subprocess.run(agent_command("run", "--config", str(config)), stderr=stream, env=env, timeout=60)

    assert proc.returncode == 69
    lines = log.read_text().splitlines()
    assert lines and all(line[:3] in ("<3>", "<4>", "<6>", "<7>") for line in lines), lines
    assert any(line.startswith("<3>agent.daemon: cannot start:") for line in lines), lines


def test_outside_the_journal_lines_have_timestamps_and_levels(tmp_path, photos, devserver, broker):
    config = agent_config(tmp_path, source=photos, server_url=devserver.url, mqtt_port=broker.port,
                          server={"version": 7})
    proc = run_agent(config)
    line = next(line for line in proc.stderr.splitlines() if "cannot start" in line)
    assert " ERROR agent.daemon: cannot start: " in line and line[:4].isdigit()
