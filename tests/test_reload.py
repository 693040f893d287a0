"""SIGHUP re-reads the config: a valid change applies without a restart, an invalid one is rejected whole.

Real agent processes on a looping folder, the stand-in over HTTP and a real mosquitto; the config
file is rewritten with ``agent_config`` (same path) before each SIGHUP.
"""

from __future__ import annotations

import json
import shutil
import signal
import threading
import time
from pathlib import Path

import pytest
from conftest import MODEL, SAMPLES, Collector, agent_config, device_for, predict_paths, start_agent, wait_until
from test_picamera2 import fake_environment
from test_systemd_notify import NotifySocket, start_under_systemd, stop

from agent.configload import parse_config
from agent.devbroker import free_port
from agent.pacing import ReloadSignal, StopSignal
from agent.reload import PUBLISHER, SERVING, SOURCE, plan_reload

LOOPING = {"loop": True, "fps": 20}


def start_looping(tmp_path, photos, devserver, broker, agent_processes, **sections):
    """An agent on the looping folder; returns (agent, a function that rewrites its config)."""
    def write(**changes) -> Path:
        merged = {**sections, **changes}
        merged["camera"] = {**LOOPING, **sections.get("camera", {}), **changes.get("camera", {})}
        return agent_config(tmp_path, source=photos, server_url=devserver.url, mqtt_port=broker.port, **merged)

    agent = start_agent(agent_processes, write())
    return agent, write


def hang_up(agent) -> None:
    agent.process.send_signal(signal.SIGHUP)


def versions(collector) -> list[str]:
    return [r["version"] for r in collector.results()]


def frame_numbers(collector) -> set[int]:
    return {r["frame"] for r in collector.results()}


def last_state(collector) -> dict:
    return collector.on("state")[-1].json()


def test_sighup_with_a_new_version_pin_switches_results_to_it_without_a_restart(
        tmp_path, photos, devserver, broker, collector, agent_processes):
    agent, write = start_looping(tmp_path, photos, devserver, broker, agent_processes)
    assert collector.wait_for(lambda: versions(collector).count("2") >= 3)

    config = write(server={"version": 1})
    hang_up(agent)

    assert collector.wait_for(lambda: versions(collector)[-3:] == ["1", "1", "1"]), agent.stderr
    seen = versions(collector)
    assert "2" not in seen[seen.index("1"):], "once switched, every result comes from the new pin"
    assert f"/v1/models/{MODEL}/versions/1:predict" in predict_paths(devserver)
    assert collector.wait_for(lambda: last_state(collector)["version"] == "1")
    assert agent.process.poll() is None and agent.stderr.count("running device=") == 1, "no restart"
    assert f"config reloaded path={config} changed=server.version" in agent.stderr
    frames = [r["frame"] for r in collector.results()]
    assert frames == sorted(set(frames)), "frame numbers go on across the switch"


def test_sighup_with_a_lower_fps_slows_the_loop_and_tells_systemd_reloading_then_ready(
        tmp_path, photos, devserver, broker):
    def write(fps: float) -> Path:
        return agent_config(tmp_path, source=photos, server_url=devserver.url, mqtt_port=broker.port,
                            camera={"loop": True, "fps": fps})

    def predicts_since(moment: float) -> list[float]:
        return [r.at for r in devserver.recorded() if r.path.endswith(":predict") and r.at > moment]

    notify = NotifySocket(tmp_path / "notify")
    process = start_under_systemd(write(50), notify, watchdog_s=10.0)
    try:
        assert notify.wait_for(lambda m: len(notify.times_of("READY=1")) == 1)
        write(2)
        process.send_signal(signal.SIGHUP)

        assert notify.wait_for(lambda m: len(notify.times_of("READY=1")) == 2)
        reloaded_at = time.time()
        (reloading,) = notify.times_of("RELOADING=1")
        assert reloading < notify.times_of("READY=1")[1]
        (message,) = [text for _, text in notify.messages if "RELOADING=1" in text.splitlines()]
        assert any(line.startswith("MONOTONIC_USEC=") for line in message.splitlines()), "systemd >= 253 wants it"
        assert wait_until(lambda: len(predicts_since(reloaded_at)) >= 4, timeout=10)
        at = predicts_since(reloaded_at)[:4]
        # Arrival times jitter with the work before each request; the mean of three gaps hardly does.
        assert (at[-1] - at[0]) / 3 > 0.3, f"2 fps means 0.5 s between predicts, got arrivals {at}"
    finally:
        assert stop(process) == 0
        notify.close()
    assert "config reloaded" in (tmp_path / f"{device_for(tmp_path)}.log").read_text()


def test_sighup_with_a_new_topic_prefix_moves_results_and_leaves_offline_on_the_old_topic(
        tmp_path, photos, devserver, broker, collector, agent_processes):
    moved = Collector(broker.port, topic=f"moved/{device_for(tmp_path)}/#").start()
    try:
        agent, write = start_looping(tmp_path, photos, devserver, broker, agent_processes)
        assert collector.wait_for(lambda: len(collector.results()) >= 3)

        write(mqtt={"topic_prefix": "moved"})
        hang_up(agent)

        assert moved.wait_for(lambda: len(moved.results()) >= 3), agent.stderr
        assert moved.wait_for(lambda: moved.on("availability") and moved.on("availability")[-1].payload == b"online")
        assert collector.on("availability")[-1].payload == b"offline"
        late = Collector(broker.port, topic=f"catdog/{device_for(tmp_path)}/availability").start()
        try:  # what a dashboard subscribing now is told about the old topic
            assert late.wait_for(lambda: late.on("availability"))
            assert late.on("availability")[0].payload == b"offline" and late.on("availability")[0].retain
        finally:
            late.stop()
        assert "changed=mqtt.topic_prefix" in agent.stderr
        # The outbox was handed over: every frame classified went out, each under the topic of its time.
        new = frame_numbers(moved)
        assert collector.wait_for(lambda: frame_numbers(collector) | new >= set(range(1, max(new) + 1)))
        assert max(frame_numbers(collector)) < min(new)
    finally:
        moved.stop()


def test_sighup_with_a_new_folder_reads_it_and_frame_numbers_go_on(
        tmp_path, photos, devserver, broker, collector, agent_processes):
    other = tmp_path / "other"
    other.mkdir()
    shutil.copy(SAMPLES / "person.jpg", other / "person.jpg")
    agent, write = start_looping(tmp_path, photos, devserver, broker, agent_processes)
    assert collector.wait_for(lambda: len(collector.results()) >= 3)

    agent_config(tmp_path, source=other, server_url=devserver.url, mqtt_port=broker.port, camera=LOOPING)
    hang_up(agent)

    assert collector.wait_for(lambda: [r["source"] for r in collector.results()][-2:] == ["person.jpg"] * 2)
    frames = [r["frame"] for r in collector.results()]
    assert frames == list(range(1, len(frames) + 1)), "a new source does not start the numbers over"
    assert "changed=camera.source" in agent.stderr and "source opened kind=folder path=" + str(other) in agent.stderr


def test_sighup_with_an_invalid_config_logs_every_problem_and_keeps_the_old_one(
        tmp_path, photos, devserver, broker, collector, agent_processes):
    agent, write = start_looping(tmp_path, photos, devserver, broker, agent_processes)
    assert collector.wait_for(lambda: len(collector.results()) >= 2)

    config = write(server={"version": 1}, mqtt={"prot": 1883}, camera={"fps": "fast"})
    hang_up(agent)

    assert collector.wait_for(lambda: last_state(collector)["errors"].get("config") == 1), agent.stderr
    seen = len(collector.results())
    assert collector.wait_for(lambda: len(collector.results()) >= seen + 3), "still classifying"
    assert set(versions(collector)) == {"2"}, "nothing of the rejected file applied"
    errors = [line for line in agent.stderr.splitlines() if "error: " in line]
    assert any("mqtt.prot: unknown key (did you mean 'port'?)" in line for line in errors)
    assert any("camera.fps: expected a number, got 'fast'" in line for line in errors)
    assert f"config reload rejected path={config} problems=2: camera.fps: expected a number" in agent.stderr
    assert "config reloaded" not in agent.stderr and agent.process.poll() is None

    write(server={"version": 1})  # fixed: the next SIGHUP applies it
    hang_up(agent)
    assert collector.wait_for(lambda: versions(collector)[-1] == "1"), agent.stderr


def test_sighup_pinning_a_version_the_server_does_not_have_is_rejected_with_its_reason(
        tmp_path, photos, devserver, broker, collector, agent_processes):
    agent, write = start_looping(tmp_path, photos, devserver, broker, agent_processes)
    assert collector.wait_for(lambda: len(collector.results()) >= 2)

    write(server={"version": 7})
    hang_up(agent)

    assert collector.wait_for(lambda: last_state(collector)["errors"].get("config") == 1), agent.stderr
    assert "version 7" in last_state(collector)["last_error"]
    seen = len(collector.results())
    assert collector.wait_for(lambda: len(collector.results()) >= seen + 3)
    assert set(versions(collector)) == {"2"} and last_state(collector)["version"] == "2"
    rejected = next(line for line in agent.stderr.splitlines() if "config reload rejected" in line)
    assert "version 7" in rejected and "available versions: 2, 1" in rejected


def test_sighup_during_a_server_outage_applies_at_once_instead_of_after_the_back_off(
        tmp_path, photos, devserver, broker, collector, agent_processes):
    # One attempt per request, then the loop's outage pause: 20 s after the first failure.
    slow_retry = {"retry": {"attempts": 1, "initial_s": 20, "max_s": 20}}
    agent, write = start_looping(tmp_path, photos, devserver, broker, agent_processes, server=slow_retry)
    assert collector.wait_for(lambda: len(collector.results()) >= 1)
    devserver.stop()
    assert collector.wait_for(lambda: last_state(collector)["server_ok"] is False)

    write(camera={"fps": 5})
    asked = time.monotonic()
    hang_up(agent)

    assert wait_until(lambda: "config reloaded" in agent.stderr, timeout=15), agent.stderr
    assert time.monotonic() - asked < 5, "the reload waited for the back-off"
    assert "changed=camera.fps" in agent.stderr


def test_sighup_while_start_up_waits_for_a_wrong_server_url_applies_the_fixed_one_at_once(
        tmp_path, photos, devserver, broker, collector, agent_processes):
    nobody = f"http://127.0.0.1:{free_port()}"
    slow_retry = {"retry": {"attempts": 1, "initial_s": 20, "max_s": 20}}
    config = agent_config(tmp_path, source=photos, server_url=nobody, mqtt_port=broker.port, camera=LOOPING,
                          server=slow_retry)
    agent = start_agent(agent_processes, config)
    assert collector.wait_for(lambda: collector.on("state") and last_state(collector)["server_ok"] is False)

    agent_config(tmp_path, source=photos, server_url=devserver.url, mqtt_port=broker.port, camera=LOOPING,
                 server=slow_retry)
    hang_up(agent)

    assert collector.wait_for(lambda: len(collector.results()) >= 2, timeout=10), agent.stderr
    assert set(versions(collector)) == {"2"} and "changed=server.url" in agent.stderr


def start_on_picamera2(tmp_path, devserver, broker, agent_processes, monkeypatch):
    """An agent on the fake picamera2 (which, like a Pi, cannot open a camera twice); returns (agent, report)."""
    report = tmp_path / "picamera2.json"
    fake_environment(monkeypatch, report=str(report))
    config = agent_config(tmp_path, source="picamera2", server_url=devserver.url, mqtt_port=broker.port,
                          camera={"fps": 20, "timeout_s": 1})
    return start_agent(agent_processes, config), report


def test_sighup_changing_a_camera_that_opens_once_closes_it_first_and_goes_on(
        tmp_path, devserver, broker, collector, agent_processes, monkeypatch):
    agent, report = start_on_picamera2(tmp_path, devserver, broker, agent_processes, monkeypatch)
    assert collector.wait_for(lambda: len(collector.results()) >= 2), agent.stderr

    agent_config(tmp_path, source="picamera2", server_url=devserver.url, mqtt_port=broker.port,
                 camera={"fps": 20, "timeout_s": 1, "flip": "rotate-180"})
    hang_up(agent)

    assert wait_until(lambda: "config reloaded" in agent.stderr), agent.stderr
    seen = len(collector.results())
    assert collector.wait_for(lambda: len(collector.results()) >= seen + 2), agent.stderr
    assert agent.terminate() == 0, agent.stderr
    assert "changed=camera.flip" in agent.stderr and "busy" not in agent.stderr
    counters = json.loads(report.read_text())
    assert counters["created"] == 2 and counters["closed"] == 2 and counters["closed_at_exit"] == 0


def test_sighup_to_a_camera_that_cannot_open_reopens_the_old_one_and_is_rejected(
        tmp_path, devserver, broker, collector, agent_processes, monkeypatch):
    agent, report = start_on_picamera2(tmp_path, devserver, broker, agent_processes, monkeypatch)
    assert collector.wait_for(lambda: len(collector.results()) >= 2), agent.stderr

    agent_config(tmp_path, source="picamera2:1", server_url=devserver.url, mqtt_port=broker.port,
                 camera={"fps": 20, "timeout_s": 1})  # the fake has one camera: number 0
    hang_up(agent)

    assert collector.wait_for(lambda: last_state(collector)["errors"].get("config") == 1), agent.stderr
    seen = len(collector.results())
    assert collector.wait_for(lambda: len(collector.results()) >= seen + 2), "the old camera is back"
    assert "there is no camera 1" in last_state(collector)["last_error"]
    assert agent.terminate() == 0, agent.stderr
    counters = json.loads(report.read_text())
    assert counters["created"] == 2 and counters["closed"] == 2, "camera 0 closed, reopened, closed at exit"


# --- the plan: what a change needs -----------------------------------------------------------------

BASE = {
    "device": {"id": "porch"},
    "camera": {"source": "frames", "fps": 1},
    "server": {"url": "http://models:8501", "model": "m", "version": 2},
    "mqtt": {"host": "broker"},
    "state_dir": "/var/lib/catdog-agent",
}


def config_with(tmp_path, **changes):
    data = {section: dict(values) if isinstance(values, dict) else values for section, values in BASE.items()}
    for key, value in changes.items():
        section, _, name = key.partition("__")
        if name:
            data.setdefault(section, {})[name] = value
        else:
            data[section] = value
    return parse_config(data, source="agent.yaml", base_dir=tmp_path)


@pytest.mark.parametrize(
    ("changes", "changed", "rebuild"),
    [
        pytest.param({}, (), set(), id="nothing"),
        pytest.param({"camera__fps": 5, "model__threshold": 0.7, "log_level": "debug"},
                     ("camera.fps", "model.threshold", "log_level"), set(), id="in-place"),
        pytest.param({"server__version": 1}, ("server.version",), {SERVING}, id="version"),
        pytest.param({"model__scale": "raw"}, ("model.scale",), {SERVING}, id="model-input"),
        pytest.param({"camera__flip": "rotate-180"}, ("camera.flip",), {SOURCE}, id="camera"),
        pytest.param({"camera__skip_unchanged": {"threshold": 0.05}}, ("camera.skip_unchanged",), set(),
                     id="skip-unchanged-in-place"),
        pytest.param({"mqtt__topic_prefix": "x", "device": {"id": "porch-2"}},
                     ("device.id", "mqtt.topic_prefix"), {PUBLISHER}, id="topics"),
        pytest.param({"mqtt__tls": {}}, ("mqtt.tls",), {PUBLISHER}, id="tls-turned-on"),
        pytest.param({"camera__source": "clip.mp4", "camera__fps": 2}, ("camera.source", "camera.fps"),
                     {SOURCE}, id="video"),
    ],
)
def test_plan_sorts_each_change_into_in_place_or_the_stage_it_rebuilds(tmp_path, changes, changed, rebuild):
    plan = plan_reload(config_with(tmp_path), config_with(tmp_path, **changes))
    assert plan.changed == changed and plan.rebuild == rebuild and plan.refused is None


def test_plan_for_a_video_rebuilds_the_source_when_only_fps_changes(tmp_path):
    (tmp_path / "clip.mp4").write_bytes(b"")
    old = config_with(tmp_path, camera__source=str(tmp_path / "clip.mp4"))
    plan = plan_reload(old, config_with(tmp_path, camera__source=str(tmp_path / "clip.mp4"), camera__fps=3))
    assert plan.changed == ("camera.fps",) and plan.rebuild == {SOURCE}


def test_plan_changes_skip_unchanged_settings_in_place_even_for_a_video(tmp_path):
    (tmp_path / "clip.mp4").write_bytes(b"")
    clip = str(tmp_path / "clip.mp4")
    old = config_with(tmp_path, camera__source=clip, camera__skip_unchanged={})
    plan = plan_reload(old, config_with(tmp_path, camera__source=clip, camera__skip_unchanged={"max_interval_s": 5}))
    assert plan.changed == ("camera.skip_unchanged.max_interval_s",) and plan.rebuild == set()


def test_plan_refuses_a_new_state_dir(tmp_path):
    plan = plan_reload(config_with(tmp_path), config_with(tmp_path, state_dir=str(tmp_path / "elsewhere")))
    assert plan.refused == "state_dir cannot change without a restart (the outbox lives there)"


@pytest.mark.parametrize(("before", "after", "refused"), [(1, 0, True), (0, 1, True), (1, 2, False)])
def test_plan_refuses_turning_the_outbox_on_or_off_through_qos(tmp_path, before, after, refused):
    plan = plan_reload(config_with(tmp_path, mqtt__qos=before), config_with(tmp_path, mqtt__qos=after))
    assert (plan.refused is not None) == refused
    if refused:
        assert "mqtt.qos cannot change to or from 0 without a restart" in str(plan.refused)


def test_reload_signal_makes_many_requests_one_and_wakes_a_waiter():
    reloads, stop = ReloadSignal(), StopSignal()
    try:
        assert reloads.wait(0, stop) is False and reloads.take() is False
        woke = []
        waiter = threading.Thread(target=lambda: woke.append(reloads.wait(30, stop)))
        waiter.start()
        for _ in range(3):
            reloads.set()
        waiter.join(5)
        assert woke == [True]
        assert reloads.take() is True and reloads.take() is False
        assert reloads.wait(0.01, stop) is False, "taken: the pipe is drained too"
        stop.set("test")
        assert reloads.wait(30, stop) is True
    finally:
        reloads.close()
        stop.close()
