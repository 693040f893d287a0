"""The picamera2 source against a fake picamera2 built to the real API (tests/fakes), found only on sys.path.

In-process tests put tests/fakes first on sys.path; the agent runs get it through PYTHONPATH, with the
fake's behaviour set by FAKE_PICAMERA2 and its counters reported back in a JSON file at exit.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import REPO, agent_command, agent_config, run_agent, start_agent, wait_until
from helpers_media import BLUE, GREEN, RED, WHITE, quadrant_colours
from PIL import Image

from agent.config import CameraConfig, ReconnectConfig
from agent.errors import SourceError, SourceUnavailable
from agent.sources import open_source
from agent.sources.live import LiveSource
from agent.sources.picam import Picamera2Camera, picamera2_camera

FAKES = REPO / "tests" / "fakes"
CAMERA_MODULES = ("picamera2", "libcamera")


def forget_camera_modules() -> None:
    """Drop picamera2/libcamera from the import cache, so the next import looks at sys.path afresh."""
    for name in [n for n in sys.modules if n.split(".")[0] in CAMERA_MODULES]:
        del sys.modules[name]


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """The fake picamera2's world (test controls and counters), with the fake first on sys.path."""
    forget_camera_modules()
    monkeypatch.syspath_prepend(str(FAKES))
    world = importlib.import_module("picamera2")._fake
    yield world
    world.reset()  # closes any camera a failed test left running
    forget_camera_modules()


def camera_config(**values: Any) -> CameraConfig:
    values.setdefault("source", "picamera2")
    values.setdefault("timeout_s", 2.0)
    return CameraConfig(**values)


@contextmanager
def opened_source(config: CameraConfig) -> Iterator[LiveSource]:
    """The registry's source for ``config`` (a LiveSource over Picamera2Camera), opened, closed after."""
    source = open_source(config)
    assert isinstance(source, LiveSource)
    source.open()
    try:
        yield source
    finally:
        source.close()


def one_frame(camera: Picamera2Camera) -> np.ndarray:
    camera.grab()
    return camera.retrieve()


def assert_quadrants(rgb: np.ndarray, top_left: tuple, top_right: tuple, bottom_left: tuple,
                     bottom_right: tuple) -> None:
    colours = {name: tuple(value.tolist()) for name, value in quadrant_colours(rgb).items()}
    assert colours == {"top_left": top_left, "top_right": top_right, "bottom_left": bottom_left,
                       "bottom_right": bottom_right}


# --- pixels -------------------------------------------------------------------------------------------------


def test_bgr888_frames_reach_the_live_source_as_rgb_fresh_and_with_every_request_released(fake):
    picamera2 = importlib.import_module("picamera2")
    with opened_source(camera_config()) as source:
        assert source.info is not None
        assert (source.info.width, source.info.height) == (320, 240)
        assert 'picamera2 "BGR888" (R,G,B bytes), used as RGB' == source.info.colour
        for _ in range(3):
            delivered_before = fake.frames
            frame = source.read()
            assert frame.rgb.shape == (240, 320, 3) and frame.rgb.dtype == np.uint8
            assert_quadrants(frame.rgb, RED, GREEN, BLUE, WHITE)
            # queue=False: the frame handed out was taken after the read was asked for, never an old one.
            assert picamera2.frame_number(frame.rgb) > delivered_before
        assert fake.held <= 1
    assert fake.max_held == 1 and fake.held == 0
    assert (fake.created, fake.closed, fake.closed_at_exit) == (1, 1, 0)


@pytest.mark.parametrize(("driver_swaps", "swap_rb"), [(False, True), (True, False), (True, True)],
                         ids=["swap_rb", "driver-bug-848", "driver-bug-848-fixed-by-swap_rb"])
def test_swap_rb_exchanges_red_and_blue_once_more(fake, driver_swaps, swap_rb):
    fake.swap_channels = driver_swaps
    camera = picamera2_camera(camera_config(swap_rb=swap_rb))
    info = camera.open()
    try:
        rgb = one_frame(camera)
    finally:
        camera.release()
    red, blue = (BLUE, RED) if driver_swaps != swap_rb else (RED, BLUE)
    assert_quadrants(rgb, red, GREEN, blue, WHITE)
    assert info.colour.endswith(", then red and blue swapped (swap_rb)") == swap_rb


# --- the configuration ----------------------------------------------------------------------------------------


def test_default_configuration_is_small_bgr888_unqueued_video_at_the_default_rate(fake):
    libcamera = importlib.import_module("libcamera")
    camera = picamera2_camera(camera_config())
    info = camera.open()
    camera.release()

    [config] = fake.configured
    assert config["use_case"] == "video"
    assert config["main"]["format"] == "BGR888" and config["main"]["size"] == (320, 240)
    assert config["queue"] is False and config["buffer_count"] == 4
    assert "FrameRate" not in config["controls"]  # the video default: FrameDurationLimits 33333 us
    assert config["transform"] == libcamera.Transform()
    assert info.fps == pytest.approx(30, abs=0.01)


@pytest.mark.parametrize(("flip", "hflip", "vflip", "top_left"), [
    ("none", False, False, RED),
    ("rotate-180", True, True, WHITE),
    ("horizontal", True, False, GREEN),
    ("vertical", False, True, BLUE),
])
def test_size_frame_rate_and_flip_are_asked_of_the_isp(fake, flip, hflip, vflip, top_left):
    camera = picamera2_camera(camera_config(width=640, height=480, capture_fps=20, flip=flip))
    info = camera.open()
    try:
        rgb = one_frame(camera)
    finally:
        camera.release()

    [config] = fake.configured
    assert config["main"]["size"] == (640, 480)
    assert config["controls"]["FrameRate"] == 20
    assert (config["transform"].hflip, config["transform"].vflip) == (hflip, vflip)
    assert rgb.shape == (480, 640, 3) and tuple(quadrant_colours(rgb)["top_left"].tolist()) == top_left
    assert (info.width, info.height, info.fps) == (640, 480, 20)


def test_camera_info_reports_the_size_libcamera_applied(fake):
    fake.adjusted_size = (336, 252)  # validate() said Adjusted: the configuration shows what was applied
    camera = picamera2_camera(camera_config())
    info = camera.open()
    try:
        rgb = one_frame(camera)
    finally:
        camera.release()
    assert (info.width, info.height) == (336, 252) and rgb.shape == (252, 336, 3)


def test_capture_timeout_covers_a_few_frames_at_a_low_rate(fake):
    assert picamera2_camera(camera_config(timeout_s=2.0)).wait_s == 2.0
    assert picamera2_camera(camera_config(timeout_s=2.0, capture_fps=0.5)).wait_s == 6.0


# --- failures at start ------------------------------------------------------------------------------------------


def test_no_camera_is_unavailable_with_what_to_check(fake):
    fake.cameras = 0
    with pytest.raises(SourceUnavailable, match="no camera found") as raised:
        open_source(camera_config()).open()
    assert "ribbon cable" in str(raised.value) and "camera_auto_detect=1" in str(raised.value)
    assert fake.created == 0


def test_a_camera_number_beyond_the_list_names_how_many_there_are(fake):
    fake.cameras = 2
    with pytest.raises(SourceUnavailable, match=r"there is no camera 2: libcamera lists 2 cameras"):
        picamera2_camera(camera_config(source="picamera2:2")).open()
    camera = picamera2_camera(camera_config(source="picamera2:1"))
    camera.open()
    camera.release()
    assert fake.created == 1


def test_a_busy_camera_is_unavailable_with_the_librarys_reason(fake):
    fake.busy = True
    with pytest.raises(SourceUnavailable) as raised:
        open_source(camera_config()).open()
    message = str(raised.value)
    assert "camera busy or failed to start" in message
    assert "Camera __init__ sequence did not complete: Failed to acquire camera: Device or resource busy" in message
    assert "rpicam-hello" in message


def test_a_second_source_on_the_same_camera_finds_it_busy(fake):
    first = picamera2_camera(camera_config())
    first.open()
    try:
        with pytest.raises(SourceUnavailable, match="Device or resource busy"):
            picamera2_camera(camera_config()).open()
    finally:
        first.release()


def test_a_refused_configuration_leaves_the_camera_closed(fake, monkeypatch):
    picamera2 = importlib.import_module("picamera2")

    def refuse(self, config):
        raise RuntimeError("Invalid camera configuration")

    monkeypatch.setattr(picamera2.Picamera2, "configure", refuse)
    with pytest.raises(SourceUnavailable, match="libcamera refused the configuration: Invalid camera"):
        picamera2_camera(camera_config()).open()
    assert (fake.created, fake.closed) == (1, 1) and not fake.open_cameras


def test_without_picamera2_the_error_says_how_to_install_it():
    forget_camera_modules()
    assert importlib.util.find_spec("picamera2") is None, "a real picamera2 is importable here"
    camera = picamera2_camera(camera_config())
    with pytest.raises(SourceUnavailable) as raised:
        camera.open()
    message = str(raised.value)
    assert "sudo apt install python3-picamera2 --no-install-recommends" in message
    assert "--system-site-packages" in message and "sudo ./install.sh" in message
    camera.release()  # nothing was opened: harmless


# --- running: requests, reconnects, release ----------------------------------------------------------------------


def test_a_grab_never_returns_a_frame_completed_before_it(fake):
    picamera2 = importlib.import_module("picamera2")
    camera = picamera2_camera(camera_config(capture_fps=20))
    camera.open()
    try:
        one_frame(camera)
        delivered = fake.frames
        assert wait_until(lambda: fake.frames > delivered)  # a frame completes while nobody captures
        delivered = fake.frames
        assert picamera2.frame_number(one_frame(camera)) > delivered  # queue=True would hand that one out
    finally:
        camera.release()


def test_grabbed_frames_hold_one_buffer_at_most_and_close_returns_it(fake):
    camera = picamera2_camera(camera_config())
    camera.open()
    for _ in range(3):  # grabbed and never retrieved, as the capture thread does while nobody asks
        camera.grab()
        assert fake.held == 1
    camera.retrieve()
    assert fake.held == 0
    camera.grab()
    camera.close()
    assert fake.held == 0 and fake.max_held == 1
    camera.release()


def test_close_stops_open_restarts_the_same_picamera2_and_release_closes_it(fake):
    camera = picamera2_camera(camera_config(capture_fps=15))
    camera.open()
    camera.close()
    camera.close()
    camera.open()
    one_frame(camera)
    assert fake.created == 1 and fake.closed == 0 and fake.stops == 1
    assert fake.starts[-1] == {"FrameRate": 15}  # sent again with the restart
    camera.release()
    camera.release()
    assert fake.closed == 1 and fake.closed_at_exit == 0 and not fake.open_cameras


def test_a_hung_camera_fails_reads_then_reconnects_with_the_same_picamera2(fake):
    config = camera_config(timeout_s=1.0, capture_fps=20, reconnect=ReconnectConfig(initial_s=0.05, max_s=0.2))
    with opened_source(config) as source:
        source.read()
        fake.hang = True  # the ribbon cable is knocked loose
        started = time.monotonic()
        with pytest.raises(SourceError, match="no frame for 1 s"):
            source.read()
        assert time.monotonic() - started < 3.0
        assert wait_until(lambda: "no frame within 1 s (cable loose or sensor hung)" in (source.camera_error or ""))
        fake.hang = False
        assert wait_until(lambda: source.reopened >= 1 and source.camera_error is None)
        frame = source.read()
        assert_quadrants(frame.rgb, RED, GREEN, BLUE, WHITE)
        # Stopped and restarted, never re-created; the timed-out capture was cancelled, not left to strand a buffer.
        assert fake.created == 1 and fake.closed == 0
        assert len(fake.starts) >= 2 and fake.starts[-1] == {"FrameRate": 20}
        assert fake.flushes >= 1 and fake.stops >= 1
    assert (fake.created, fake.closed, fake.closed_at_exit) == (1, 1, 0)
    assert fake.held == 0 and fake.max_held == 1


# --- the agent, end to end ------------------------------------------------------------------------------------------


def fake_environment(monkeypatch: pytest.MonkeyPatch, **settings: Any) -> None:
    """Child processes import the fake picamera2 (PYTHONPATH) with these FAKE_PICAMERA2 settings."""
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(FAKES), os.environ.get("PYTHONPATH")])))
    monkeypatch.setenv("FAKE_PICAMERA2", json.dumps(settings))


def test_agent_classifies_picamera2_frames_survives_a_hang_and_exits_0_on_sigterm(
        tmp_path: Path, devserver, broker, collector, agent_processes, monkeypatch):
    report = tmp_path / "picamera2.json"
    # 45 frames = 1.5 s at 30 fps, then no frame for 2 s: longer than camera.timeout_s.
    fake_environment(monkeypatch, hang_after=45, hang_for_s=2.0, report=str(report))
    config = agent_config(tmp_path, source="picamera2", server_url=devserver.url, mqtt_port=broker.port,
                          camera={"timeout_s": 1, "reconnect": {"initial_s": 0.1, "max_s": 0.5}})

    agent = start_agent(agent_processes, config)

    def camera_down() -> bool:
        return any(m.json()["camera_ok"] is False for m in collector.on("state"))

    assert collector.wait_for(camera_down, timeout=30), agent.stderr
    results_while_down = len(collector.results())
    assert results_while_down >= 1, agent.stderr
    assert collector.wait_for(lambda: len(collector.results()) >= results_while_down + 2, timeout=20), agent.stderr
    assert agent.terminate() == 0, agent.stderr

    for result in collector.results():
        assert result["source"] == "picamera2 camera 0" and result["label"] in ("cat", "dog")
    log = agent.stderr
    assert 'colour: picamera2 "BGR888" (R,G,B bytes), used as RGB' in log
    assert "camera lost" in log and "camera reopened" in log and "Traceback" not in log
    counters = json.loads(report.read_text())
    assert counters["created"] == 1 and counters["closed"] == 1 and counters["closed_at_exit"] == 0
    assert counters["held"] == 0 and counters["max_held"] == 1


def test_agent_without_a_camera_exits_69_saying_no_camera_found(tmp_path: Path, devserver, broker, monkeypatch):
    fake_environment(monkeypatch, cameras=0)
    config = agent_config(tmp_path, source="picamera2", server_url=devserver.url, mqtt_port=broker.port)

    proc = run_agent(config, timeout=30)

    assert proc.returncode == 69, proc.stderr
    assert "no camera found" in proc.stderr and "Traceback" not in proc.stderr


def test_check_reads_one_picamera2_frame_and_prints_size_rate_and_colour_order(tmp_path: Path, devserver, broker,
                                                                               monkeypatch):
    fake_environment(monkeypatch)
    config = agent_config(tmp_path, source="picamera2", server_url=devserver.url, mqtt_port=broker.port,
                          camera={"capture_fps": 15})

    done = subprocess.run(agent_command("check", "--config", str(config)), capture_output=True, text=True,
                          timeout=60)

    line = next((line for line in done.stdout.splitlines() if "source:" in line), "")
    assert line.startswith("✓ source: picamera2 camera 0: first frame 320x240"), done.stdout + done.stderr
    assert '320x240, 15 fps; colour: picamera2 "BGR888" (R,G,B bytes), used as RGB' in line
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize(("swap_rb", "top_left"), [(False, RED), (True, BLUE)])
def test_snapshot_from_picamera2_shows_red_where_the_sensor_sees_red(tmp_path: Path, monkeypatch, swap_rb, top_left):
    fake_environment(monkeypatch)
    config = agent_config(tmp_path, source="picamera2", server_url="http://127.0.0.1:9", mqtt_port=1,
                          camera={"swap_rb": swap_rb}, model={"size": [150, 150]})
    out = tmp_path / "seen.png"

    done = subprocess.run(agent_command("snapshot", "--config", str(config), str(out)), capture_output=True,
                          text=True, timeout=60)

    assert done.returncode == 0, done.stderr
    assert "from a 320x240 frame of picamera2 camera 0" in done.stdout
    with Image.open(out) as saved:
        colours = quadrant_colours(np.asarray(saved.convert("RGB")))
    assert tuple(colours["top_left"]) == top_left
