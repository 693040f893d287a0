"""camera.skip_unchanged end to end: a real video -> `catdog-agent run` -> TF Serving stand-in -> real mosquitto.

The videos are written with OpenCV from the sample photos plus fresh sensor noise in every frame.
Frame numbers are the agent's (from 1 in a fresh state_dir, in read order); with ``fps: 0`` a video's
every frame is read, so frame n is the video's frame n-1.
"""

from __future__ import annotations

import signal
from datetime import datetime
from pathlib import Path

import numpy as np
from conftest import SAMPLES, agent_config, predict_paths, run_agent, start_agent, wait_until
from helpers_media import write_video
from PIL import Image

SIZE = (320, 240)  # width, height
STATIC_FRAMES = 150
SEGMENT_FRAMES = 20
SEGMENTS = ("dog.jpg", "chelsea.png") * 3  # after the static cat: dog, cat, dog, cat, dog, cat


def photo(name: str) -> np.ndarray:
    return np.asarray(Image.open(SAMPLES / name).convert("RGB").resize(SIZE, Image.BILINEAR))


def noisy(rgb: np.ndarray, rng: np.random.Generator, sigma: float = 3.0) -> np.ndarray:
    return np.clip(rgb + rng.normal(0.0, sigma, rgb.shape), 0, 255).astype(np.uint8)


def static_video(path: Path, count: int, fps: float = 30.0) -> Path:
    rng = np.random.default_rng(7)
    cat = photo("chelsea.png")
    return write_video(path, (noisy(cat, rng) for _ in range(count)), fps=fps)


def final_state(collector) -> dict:
    assert collector.wait_for(lambda: collector.on("availability")
                              and collector.on("availability")[-1].payload == b"offline")
    state = collector.on("state")[-1].json()
    assert state["status"] == "stopped"
    return state


def test_a_static_scene_costs_one_request_and_every_scene_change_is_classified_on_its_first_frame(
        tmp_path, devserver, broker, collector):
    rng = np.random.default_rng(2026)
    frames = [noisy(photo("chelsea.png"), rng) for _ in range(STATIC_FRAMES)]
    starts = []
    for name in SEGMENTS:
        starts.append(len(frames) + 1)  # the agent's number of the segment's first frame
        frames += [noisy(photo(name), rng) for _ in range(SEGMENT_FRAMES)]
    video = write_video(tmp_path / "scene.avi", frames)
    config = agent_config(tmp_path, source=video, server_url=devserver.url, mqtt_port=broker.port,
                          camera={"fps": 0, "skip_unchanged": {"max_interval_s": 3600}})

    proc = run_agent(config)

    assert proc.returncode == 0, proc.stderr
    state = final_state(collector)
    results = collector.results()
    sent = [r["frame"] for r in results]
    static_sent = [frame for frame in sent if frame <= STATIC_FRAMES]
    assert len(static_sent) <= STATIC_FRAMES // 10, f"the static part must cost >= 90 % fewer requests: {sent}"
    assert static_sent == [1], "a static scene is classified once"
    assert set(starts) <= set(sent), f"every scene change is classified on its first frame: {sent}"
    assert sent == [1, *starts], "and nothing else: noise and codec artefacts are no change"
    assert len(predict_paths(devserver)) == len(results)
    assert state["frames"] == len(frames)
    assert state["results"] == len(results)
    assert state["skipped"] == len(frames) - len(results)
    assert state["errors"] == {} and "Traceback" not in proc.stderr


def test_max_interval_keeps_classifications_coming_from_a_static_scene(tmp_path, devserver, broker, collector):
    video = static_video(tmp_path / "static.avi", count=40, fps=20.0)
    config = agent_config(tmp_path, source=video, server_url=devserver.url, mqtt_port=broker.port,
                          camera={"fps": 20, "skip_unchanged": {"max_interval_s": 0.2}})

    proc = run_agent(config)  # 40 frames paced to 20 fps: at least 1.95 s whatever the machine's speed

    assert proc.returncode == 0, proc.stderr
    state = final_state(collector)
    results = collector.results()
    assert len(results) >= 5, "one classification per 0.2 s at least, changed or not"
    captured = [datetime.fromisoformat(r["captured_at"].replace("Z", "+00:00")).timestamp() for r in results]
    gaps = [later - earlier for earlier, later in zip(captured, captured[1:])]
    assert min(gaps) >= 0.15, f"a static scene is not classified more often than max_interval_s: {gaps}"
    assert state["frames"] == 40 and state["skipped"] == 40 - len(results) == 40 - state["results"]


def test_sighup_turning_skip_unchanged_on_applies_in_place_and_skips_from_then_on(
        tmp_path, devserver, broker, collector, agent_processes):
    image = SAMPLES / "chelsea.png"  # read again and again: every frame is the same

    def write(**camera) -> Path:
        return agent_config(tmp_path, source=image, server_url=devserver.url, mqtt_port=broker.port,
                            camera={"loop": True, "fps": 20, **camera}, mqtt={"state_interval_s": 0.2})

    agent = start_agent(agent_processes, write())
    assert collector.wait_for(lambda: len(collector.results()) >= 3), agent.stderr
    config = write(skip_unchanged={"max_interval_s": 3600})
    agent.process.send_signal(signal.SIGHUP)
    assert wait_until(lambda: "config reloaded" in agent.stderr), agent.stderr
    assert f"config reloaded path={config} changed=camera.skip_unchanged" in agent.stderr
    assert collector.wait_for(lambda: collector.on("state")[-1].json().get("skipped", 0) >= 20), agent.stderr

    assert agent.terminate(signal.SIGTERM) == 0, agent.stderr
    state = final_state(collector)
    sent = [r["frame"] for r in collector.results()]
    assert sent == list(range(1, len(sent) + 1)), "every frame was classified until the reload"
    assert state["skipped"] == state["frames"] - sent[-1] >= 20, "and every frame after the first one since"
    assert state["results"] == len(sent) == len(predict_paths(devserver))
