"""End to end: real photos -> `catdog-agent run` (a child process) -> TF Serving stand-in -> real mosquitto."""

from __future__ import annotations

import re
import signal
import time
from pathlib import Path

import pytest
from conftest import (
    MODEL,
    Collector,
    agent_config,
    device_for,
    predict_paths,
    run_agent,
    start_agent,
)

from agent.devbroker import free_port

RESULT_FIELDS = {"device", "label", "score", "scores", "model", "version", "frame", "captured_at", "latency_ms"}


def assert_clean_finite_run(proc, collector, expected_results: int) -> list[dict]:
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    assert collector.wait_for(lambda: len(collector.on("availability")) >= 2 and
                              collector.on("availability")[-1].payload == b"offline")
    availability = [m.payload for m in collector.on("availability")]
    assert availability[0] == b"online" and availability[-1] == b"offline"
    results = collector.results()
    assert len(results) == expected_results
    return results


def test_folder_of_photos_gives_one_result_per_photo_with_pinned_version_and_clean_exit(
        tmp_path, photos, devserver, broker, collector):
    config = agent_config(tmp_path, source=photos, server_url=devserver.url, mqtt_port=broker.port)

    proc = run_agent(config)

    results = assert_clean_finite_run(proc, collector, expected_results=4)
    assert [r["frame"] for r in results] == [1, 2, 3, 4]
    assert [r["source"] for r in results] == sorted(p.name for p in photos.iterdir())
    for result in results:
        assert RESULT_FIELDS <= set(result)
        assert result["device"] == device_for(tmp_path) and result["model"] == MODEL and result["version"] == "2"
        assert result["label"] in ("cat", "dog")
        assert result["score"] == result["scores"][result["label"]]
        assert abs(sum(result["scores"].values()) - 1) < 1e-3
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", result["captured_at"])
    # The same photo gives the same answer: the built-in model is deterministic.
    assert results[0]["scores"] == results[2]["scores"] and results[1]["scores"] == results[3]["scores"]
    assert predict_paths(devserver) == [f"/v1/models/{MODEL}/versions/2:predict"] * 4
    late = Collector(broker.port, topic=f"catdog/{device_for(tmp_path)}/#").start()
    try:  # what a dashboard that connects afterwards sees: retained state and availability
        assert late.wait_for(lambda: late.on("state") and late.on("availability"))
        state = late.on("state")[0]
        assert state.retain and state.json()["status"] == "stopped" and state.json()["results"] == 4
        assert late.on("availability")[0].payload == b"offline" and late.on("availability")[0].retain
    finally:
        late.stop()


def test_real_model_labels_the_cat_and_the_dog_correctly(tmp_path, photos, onnx_devserver, broker, collector):
    config = agent_config(tmp_path, source=photos, server_url=onnx_devserver.url, mqtt_port=broker.port)

    proc = run_agent(config)

    results = assert_clean_finite_run(proc, collector, expected_results=4)
    assert [r["label"] for r in results] == ["cat", "dog", "cat", "dog"]
    assert all(r["version"] == "2" and r["score"] > 0.9 for r in results)


@pytest.mark.parametrize(
    ("server_section", "expected_path", "expected_version"),
    [
        pytest.param({"version": 1}, f"/v1/models/{MODEL}/versions/1:predict", "1", id="version-1"),
        pytest.param({"version": None, "label": "stable"}, f"/v1/models/{MODEL}/labels/stable:predict", "1",
                     id="label-stable"),
        pytest.param({"version": None, "label": "canary"}, f"/v1/models/{MODEL}/labels/canary:predict", "2",
                     id="label-canary"),
        pytest.param({"version": None}, f"/v1/models/{MODEL}:predict", "2", id="latest"),
    ],
)
def test_version_or_label_pin_reaches_the_url_and_the_result_names_the_version_served(
        tmp_path, photos, devserver, broker, collector, server_section, expected_path, expected_version):
    config = agent_config(tmp_path, source=photos, server_url=devserver.url, mqtt_port=broker.port,
                          server=server_section)

    proc = run_agent(config)

    results = assert_clean_finite_run(proc, collector, expected_results=4)
    assert set(predict_paths(devserver)) == {expected_path}
    assert {r["version"] for r in results} == {expected_version}


def test_pinned_version_that_is_not_served_exits_69_listing_the_available_versions(
        tmp_path, photos, devserver, broker):
    config = agent_config(tmp_path, source=photos, server_url=devserver.url, mqtt_port=broker.port,
                          server={"version": 3})

    proc = run_agent(config)

    assert proc.returncode == 69, proc.stderr
    assert "version 3" in proc.stderr and "available versions: 2, 1" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert predict_paths(devserver) == []


def test_unknown_label_exits_69_with_the_servers_reason(tmp_path, photos, devserver, broker):
    config = agent_config(tmp_path, source=photos, server_url=devserver.url, mqtt_port=broker.port,
                          server={"version": None, "label": "nightly"})

    proc = run_agent(config)

    assert proc.returncode == 69, proc.stderr
    assert "Unrecognized servable version label: nightly" in proc.stderr
    assert "available versions: 2, 1" in proc.stderr


@pytest.mark.parametrize("server", ["up", "down"])
def test_missing_source_folder_exits_69_even_while_the_server_is_down(tmp_path, devserver, broker, server):
    url = devserver.url if server == "up" else f"http://127.0.0.1:{free_port()}"  # nothing listens there
    config = agent_config(tmp_path, source=tmp_path / "nowhere", server_url=url, mqtt_port=broker.port)

    proc = run_agent(config)

    assert proc.returncode == 69, proc.stderr
    assert "nowhere" in proc.stderr and "Traceback" not in proc.stderr


def test_sigterm_during_a_looping_run_exits_0_within_5_s_and_publishes_offline(
        tmp_path, photos, devserver, broker, collector, agent_processes):
    config = agent_config(tmp_path, source=photos, server_url=devserver.url, mqtt_port=broker.port,
                          camera={"loop": True, "fps": 20})
    agent = start_agent(agent_processes, config)
    assert collector.wait_for(lambda: len(collector.on("result")) >= 6), "no results while looping"

    started = time.monotonic()
    code = agent.terminate(signal.SIGTERM)

    assert code == 0, agent.stderr
    assert time.monotonic() - started < 5.0
    assert collector.wait_for(lambda: collector.on("availability")[-1].payload == b"offline", timeout=5)
    frames = [r["frame"] for r in collector.results()]
    assert frames == list(range(1, len(frames) + 1)), "looping keeps counting frames, none lost or repeated"


def test_sigint_stops_like_sigterm(tmp_path, photos, devserver, broker, collector, agent_processes):
    config = agent_config(tmp_path, source=photos, server_url=devserver.url, mqtt_port=broker.port,
                          camera={"loop": True, "fps": 20})
    agent = start_agent(agent_processes, config)
    assert collector.wait_for(lambda: len(collector.on("result")) >= 2)

    assert agent.terminate(signal.SIGINT) == 0, agent.stderr
    assert collector.wait_for(lambda: collector.on("availability")[-1].payload == b"offline", timeout=5)


def test_sigterm_while_a_predict_hangs_still_exits_within_5_s(
        tmp_path, photos, devserver, broker, collector, agent_processes):
    from agent.devserver import Fault

    config = agent_config(tmp_path, source=photos, server_url=devserver.url, mqtt_port=broker.port,
                          server={"timeout_s": 30})
    devserver.inject(Fault(delay_s=20, count=1))
    agent = start_agent(agent_processes, config)
    assert devserver.wait_for_request(lambda r: r.path.endswith(":predict")), "the predict never arrived"

    started = time.monotonic()
    code = agent.terminate(signal.SIGTERM)

    assert code == 0, agent.stderr
    assert time.monotonic() - started < 5.0
    assert collector.wait_for(lambda: collector.on("availability")[-1].payload == b"offline", timeout=5)


def test_fps_paces_classification(tmp_path, photos, devserver, broker, collector):
    config = agent_config(tmp_path, source=photos, server_url=devserver.url, mqtt_port=broker.port,
                          camera={"fps": 10})

    proc = run_agent(config)

    results = assert_clean_finite_run(proc, collector, expected_results=4)
    stamps = [r["captured_at"] for r in results]
    from datetime import datetime

    times = [datetime.fromisoformat(s.replace("Z", "+00:00")).timestamp() for s in stamps]
    # Pacing spaces the loop's iterations, never faster than fps; a slow machine only makes gaps longer.
    # captured_at is stamped after decoding, so one gap may be shorter by a decode-time difference.
    assert times[-1] - times[0] >= 3 * 0.1 - 0.05, times


def test_video_file_source_runs_end_to_end(tmp_path, devserver, broker, collector):
    cv2 = pytest.importorskip("cv2")
    import numpy as np

    video = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (160, 120))
    for index in range(20):  # 2 seconds at 10 fps
        writer.write(np.full((120, 160, 3), index * 10, dtype=np.uint8))
    writer.release()
    config = agent_config(tmp_path, source=video, server_url=devserver.url, mqtt_port=broker.port,
                          camera={"fps": 0})

    proc = run_agent(config)

    results = assert_clean_finite_run(proc, collector, expected_results=20)
    assert [r["frame"] for r in results] == list(range(1, 21))


def test_corrupt_image_is_skipped_with_a_warning_and_counted(tmp_path, photos, devserver, broker, collector):
    (photos / "02b-broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg")
    config = agent_config(tmp_path, source=photos, server_url=devserver.url, mqtt_port=broker.port)

    proc = run_agent(config)

    assert_clean_finite_run(proc, collector, expected_results=4)
    assert "02b-broken.jpg" in proc.stderr
    assert collector.on("state")[-1].json()["errors"] == {"decode": 1}


def test_single_image_source(tmp_path, devserver, broker, collector):
    image = Path(__file__).resolve().parent.parent / "agent" / "samples" / "dog.jpg"
    config = agent_config(tmp_path, source=image, server_url=devserver.url, mqtt_port=broker.port)

    proc = run_agent(config)

    results = assert_clean_finite_run(proc, collector, expected_results=1)
    assert results[0]["source"] == "dog.jpg"


def test_moving_a_label_on_the_server_changes_the_version_results_report(
        tmp_path, photos, devserver, broker, collector, agent_processes):
    config = agent_config(tmp_path, source=photos, server_url=devserver.url, mqtt_port=broker.port,
                          camera={"loop": True, "fps": 20}, server={"version": None, "label": "stable",
                                                                    "refresh_s": 0.2})
    agent = start_agent(agent_processes, config)
    assert collector.wait_for(lambda: any(r["version"] == "1" for r in collector.results()))

    devserver.set_label(MODEL, "stable", 2)

    assert collector.wait_for(lambda: any(r["version"] == "2" for r in collector.results()))
    assert agent.terminate() == 0
    versions = [r["version"] for r in collector.results()]
    assert versions == sorted(versions), "once moved, results never report the old version again"
    assert "model version changed pin=label stable from=1 to=2" in agent.stderr
