"""Network cameras against a real MJPEG-over-HTTP server: OpenCV's FFmpeg reads it, in-process and in the agent.

The server (tests/mjpeg_server.py) numbers its frames in their pixels and records when it sent each
one, so a test can tell which frame the agent classified and how old it was when it did.
"""

from __future__ import annotations

import gc
import os
import signal
import socket
import subprocess
import threading
import time
from datetime import datetime
from pathlib import Path

import pytest
from conftest import MODEL, Collector, agent_command, agent_config, device_for, run_agent, start_agent
from mjpeg_server import MARK_BOTTOM, MARK_TOP, MjpegServer, frame_number, mark_colours, predict_tensor

from agent.config import CameraConfig, ReconnectConfig
from agent.devbroker import free_port
from agent.devserver import DevServer, Fault
from agent.errors import SourceError, SourceUnavailable
from agent.sources import open_source
from agent.sources.live import LiveSource

pytest.importorskip("cv2")

STREAM_FPS = 30.0
JPEG_TOLERANCE = 40  # JPEG's chroma subsampling blurs saturated colours a little


@pytest.fixture
def mjpeg() -> MjpegServer:
    with MjpegServer(fps=STREAM_FPS) as server:
        yield server


def opened_stream(url: str, *, timeout_s: float = 2.0, initial_s: float = 0.1, max_s: float = 0.5) -> LiveSource:
    source = open_source(CameraConfig(source=url, timeout_s=timeout_s,
                                      reconnect=ReconnectConfig(initial_s=initial_s, max_s=max_s)))
    assert isinstance(source, LiveSource)
    source.open()
    return source


def epoch(iso: str) -> float:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


# --- in-process: LiveSource over stream_camera ------------------------------------------------------------

def test_stream_frames_arrive_in_order_as_rgb_and_fresh(mjpeg):
    source = opened_stream(mjpeg.url)
    try:
        assert source.info is not None and (source.info.width, source.info.height) == (160, 120)
        frames = [source.read() for _ in range(5)]
    finally:
        source.close()

    for frame in frames:
        assert frame.rgb.dtype.name == "uint8" and frame.rgb.shape == (120, 160, 3)
        top, bottom = mark_colours(frame.rgb)
        assert abs(top - MARK_TOP).max() <= JPEG_TOLERANCE, f"top mark {top.round()} is not red: BGR handed out?"
        assert abs(bottom - MARK_BOTTOM).max() <= JPEG_TOLERANCE, f"bottom mark {bottom.round()} is not blue"
    numbers = [frame_number(frame.rgb) for frame in frames]
    assert numbers == sorted(set(numbers)), f"frames repeat or go back in time: {numbers}"
    assert [frame.seq for frame in frames] == [1, 2, 3, 4, 5]
    assert [frame.origin for frame in frames] == [f"stream {mjpeg.url}"] * 5
    # Each read gets a frame grabbed after it asked: at that moment the newest sent or the one on the
    # wire (its first bytes are out, the last not yet read); captured_at + 1 ms covers the clocks' rounding.
    # The first read may get a frame FFmpeg buffered while it probed the stream during open().
    gaps = [mjpeg.newest_sent(frame.captured_at + 0.001) - number for frame, number in zip(frames, numbers)]
    assert all(0 <= gap <= 2 for gap in gaps[1:]), f"frames older than a capture interval: gaps {gaps}"


def test_fifty_cut_and_restore_cycles_reconnect_every_time_without_leaking_threads_or_descriptors(mjpeg):
    """Each cut: the capture thread sees the stream end, retries while it is refused, reopens after the
    restore, and hands out frames again; what it opened for the old connection is all released."""
    source = opened_stream(mjpeg.url, timeout_s=1.0, initial_s=0.01, max_s=0.1)

    last_number = -1

    def cut_and_restore() -> None:
        nonlocal last_number
        reopened, refused = source.reopened, mjpeg.refused
        mjpeg.cut()
        # The source noticed: it is already knocking again while the stream is cut (and refused).
        assert mjpeg.wait_until(lambda server: server.refused > refused), "the source never tried to reopen"
        mjpeg.restore()
        deadline = time.monotonic() + 10.0
        while True:  # a read may time out once if the reopen is slow on a loaded machine
            try:
                frame = source.read()
                break
            except SourceError:
                if time.monotonic() > deadline:
                    raise
        assert source.reopened == reopened + 1, "one cut, one reopening"
        number = frame_number(frame.rgb)
        assert number > last_number, "the frame after the reopen is not newer than those before the cut"
        last_number = number
        assert mjpeg.wait_until(lambda server: server.clients == 1), "the old connection was not let go"

    def usage() -> dict[str, int]:
        gc.collect()  # an earlier test's unreferenced sockets would otherwise close mid-measurement
        return {"python threads": threading.active_count(), "os threads": len(os.listdir("/proc/self/task")),
                "fds": len(os.listdir("/proc/self/fd"))}

    started = time.monotonic()
    try:
        last_number = frame_number(source.read().rgb)
        cut_and_restore()  # warm-up: OpenCV and FFmpeg initialise what they keep for the process' life
        before = usage()
        for _ in range(50):
            cut_and_restore()
        after = usage()
    finally:
        source.close()
    elapsed = time.monotonic() - started

    assert source.reopened == 51 and mjpeg.accepted == 52
    # No slack for growth: the capture thread is the same one throughout, FFmpeg's decoder threads end with
    # each release(), and the only sockets open are the current connection's two ends and the listener.
    # A count may fall (CI saw fds 23 -> 21) when something an earlier test left behind is finalised.
    grown = {what: after[what] - before[what] for what in before if after[what] > before[what]}
    assert not grown, f"grew over 50 reconnects: {before} -> {after}"
    assert elapsed < 40, f"50 cycles took {elapsed:.1f} s"


def test_a_stream_that_hangs_without_closing_is_given_up_by_its_read_timeout_and_reopened(mjpeg):
    """The connection stays open but no byte comes (a camera that froze, a network that drops packets):
    only FFmpeg's read timeout (camera.timeout_s) notices; without it a grab would block for minutes."""
    source = opened_stream(mjpeg.url, timeout_s=1.0, initial_s=0.05, max_s=0.2)
    try:
        before = frame_number(source.read().rgb)
        mjpeg.freeze()
        with pytest.raises(SourceError, match=f"stream {mjpeg.url}: no frame for 1 s"):
            for _ in range(5):  # a frame already on the wire when the server froze may still arrive
                source.read()
        # The capture thread gave up the silent connection and is trying new ones (frozen too).
        assert mjpeg.wait_until(lambda server: server.accepted >= 3, timeout=20), "a grab hangs on a frozen stream"
        assert source.camera_error is not None and mjpeg.url in source.camera_error
        mjpeg.freeze(False)
        deadline = time.monotonic() + 10.0
        while True:
            try:
                after = frame_number(source.read().rgb)
                break
            except SourceError:
                if time.monotonic() > deadline:
                    raise
    finally:
        source.close()

    assert after > before and source.reopened == 1


def test_an_unreachable_stream_is_unavailable_at_open_with_the_credentials_hidden():
    url = f"http://viewer:s3cret@127.0.0.1:{free_port()}/stream.mjpg?token=abc123"
    source = open_source(CameraConfig(source=url, timeout_s=1.0))

    with pytest.raises(SourceUnavailable) as raised:
        source.open()

    message = str(raised.value)
    assert "***@127.0.0.1" in message and "cannot open the stream" in message
    assert "s3cret" not in message and "viewer" not in message and "abc123" not in message
    assert "s3cret" not in source.description


def test_a_stream_that_accepts_but_never_answers_fails_to_open_within_its_timeout():
    with socket.socket() as silent:  # listens, never accepts: FFmpeg's GET gets no answer
        silent.bind(("127.0.0.1", 0))
        silent.listen(4)
        source = open_source(CameraConfig(source=f"http://127.0.0.1:{silent.getsockname()[1]}/stream.mjpg",
                                          timeout_s=1.0))
        started = time.monotonic()
        with pytest.raises(SourceUnavailable):
            source.open()
        waited = time.monotonic() - started

    assert waited < 10, f"open waited {waited:.1f} s despite camera.timeout_s 1"


# --- end to end: catdog-agent run ---------------------------------------------------------------------------

def test_the_agent_reports_a_cut_stream_and_resumes_on_its_own_when_it_comes_back(
        tmp_path, mjpeg, devserver, broker, collector, agent_processes):
    config = agent_config(tmp_path, source=mjpeg.url, server_url=devserver.url, mqtt_port=broker.port,
                          camera={"fps": 5, "timeout_s": 1, "reconnect": {"initial_s": 0.1, "max_s": 0.5}})
    agent = start_agent(agent_processes, config)
    assert collector.wait_for(lambda: len(collector.results()) >= 3), agent.stderr
    pid = agent.process.pid

    mjpeg.cut()
    assert collector.wait_for(lambda: any(not m.json()["camera_ok"] for m in collector.on("state"))), agent.stderr
    down = next(m.json() for m in collector.on("state") if not m.json()["camera_ok"])
    assert down["status"] == "degraded"
    assert f"stream {mjpeg.url}: no frame for 1 s" in down["last_error"], down["last_error"]
    late = Collector(broker.port, topic=f"catdog/{device_for(tmp_path)}/state").start()
    try:  # what a dashboard connecting during the outage sees: the retained state says camera down
        assert late.wait_for(lambda: late.on("state"))
        retained = late.on("state")[0]
        assert retained.retain and retained.json()["camera_ok"] is False
    finally:
        late.stop()
    results_during_cut = len(collector.results())

    restored_at = time.time()
    mjpeg.restore()
    assert collector.wait_for(lambda: collector.on("state")[-1].json()["camera_ok"] is True), agent.stderr
    assert collector.wait_for(lambda: len(collector.results()) >= results_during_cut + 3), agent.stderr
    fresh = [r for r in collector.results()[results_during_cut:] if epoch(r["captured_at"]) >= restored_at]
    assert len(fresh) >= 3, "no results from frames captured after the restore"

    assert agent.process.poll() is None and agent.process.pid == pid, "the agent was never restarted"
    assert mjpeg.accepted >= 2
    assert agent.terminate(signal.SIGTERM) == 0, agent.stderr
    assert collector.wait_for(lambda: collector.on("availability")[-1].payload == b"offline")
    assert "Traceback" not in agent.stderr
    assert "camera lost" in agent.stderr and "camera reopened" in agent.stderr, agent.stderr
    frames = [r["frame"] for r in collector.results()]
    assert frames == sorted(set(frames)), "frame numbers keep counting across the reconnect"
    assert {r["source"] for r in collector.results()} == {f"stream {mjpeg.url}"}


@pytest.fixture
def recording_devserver(builtin_models: Path) -> DevServer:
    with DevServer(builtin_models, labels={MODEL: {"stable": 1, "canary": 2}}, record_bodies=True) as server:
        yield server


def test_a_slow_server_classifies_the_newest_frame_never_a_backlog(
        tmp_path, mjpeg, recording_devserver, broker, collector, agent_processes):
    delay_s = 0.5
    recording_devserver.inject(Fault(delay_s=delay_s, count=100_000))
    config = agent_config(tmp_path, source=mjpeg.url, server_url=recording_devserver.url, mqtt_port=broker.port,
                          camera={"fps": 0, "timeout_s": 2})
    agent = start_agent(agent_processes, config)
    assert collector.wait_for(lambda: len(collector.results()) >= 12, timeout=60), agent.stderr
    assert agent.terminate() == 0, agent.stderr
    assert collector.wait_for(lambda: collector.on("availability")[-1].payload == b"offline")  # results are in

    requests = [r for r in recording_devserver.recorded() if r.path.endswith(":predict")]
    results = collector.results()
    assert 0 <= len(requests) - len(results) <= 1, "one request per result (the last may be cut by SIGTERM)"
    used = [frame_number(predict_tensor(request.body)) for request in requests[:len(results)]]
    captured = [epoch(result["captured_at"]) for result in results]

    # Freshness at capture: the frame the agent took is the newest the server had sent (gap 0), or the one
    # before it when the next one was already on its way (1: stamped as sent before its bytes arrived);
    # 2 leaves room for the 1 ms added because captured_at has ms precision.
    # A capture thread that did not drain the stream would use frames queued in the socket and FFmpeg:
    # ~delay_s * fps = 15 frames older per request, and growing.
    at_capture = [mjpeg.newest_sent(t + 0.001) - n for t, n in zip(captured, used)]
    assert all(0 <= gap <= 2 for gap in at_capture), f"stale frames classified: gaps at capture {at_capture}"
    # Freshness when the request arrived: the same, plus the frames the server sent while the agent
    # resized, encoded and posted the frame (a fast machine: none or one; a loaded one: more).
    at_arrival = [mjpeg.newest_sent(r.at) - n for r, n in zip(requests, used)]
    allowed = [2 + mjpeg.sent_between(t + 0.001, r.at) for t, r in zip(captured, requests)]
    assert all(gap <= limit for gap, limit in zip(at_arrival, allowed)), f"gaps {at_arrival} > {allowed}"
    # No backlog: each result is of a frame taken after the previous slow reply, so frames advance by
    # about delay_s * fps (15), not by 1 as they would going through a queue.
    assert captured == sorted(captured) and len(set(captured)) == len(captured)
    steps = [b - a for a, b in zip(used, used[1:])]
    assert all(step >= delay_s * STREAM_FPS / 2 for step in steps), f"frame steps {steps}"
    assert all(b - a >= delay_s * 0.9 for a, b in zip(captured, captured[1:])), "captured faster than served"
    assert collector.on("state")[-1].json()["camera_ok"] is True


def test_an_unreachable_stream_at_start_exits_69_without_showing_the_password(tmp_path, devserver, broker):
    url = f"http://viewer:s3cret@127.0.0.1:{free_port()}/stream.mjpg?token=abc123"
    config = agent_config(tmp_path, source=url, server_url=devserver.url, mqtt_port=broker.port,
                          camera={"timeout_s": 1})

    proc = run_agent(config)

    assert proc.returncode == 69, proc.stderr
    assert "cannot start" in proc.stderr and "***@127.0.0.1" in proc.stderr, proc.stderr
    assert "s3cret" not in proc.stderr and "abc123" not in proc.stderr and "Traceback" not in proc.stderr


def test_check_reads_one_stream_frame_and_prints_its_size_and_colour_order(tmp_path, devserver, broker, mjpeg):
    config = agent_config(tmp_path, source=mjpeg.url, server_url=devserver.url, mqtt_port=broker.port)

    done = subprocess.run(agent_command("check", "--config", str(config)), capture_output=True, text=True,
                          timeout=60)

    line = next((line for line in done.stdout.splitlines() if "source:" in line), "")
    assert line.startswith(f"✓ source: stream {mjpeg.url}: first frame 160x120"), done.stdout + done.stderr
    assert "colour: BGR from OpenCV, converted to RGB" in line
    assert done.returncode == 0, done.stdout + done.stderr


def test_sigterm_while_a_stream_is_still_opening_at_start_exits_0_within_5_s(tmp_path, devserver, broker,
                                                                             agent_processes):
    with socket.socket() as silent:  # takes the agent's connection, never answers its GET
        silent.bind(("127.0.0.1", 0))
        silent.listen(4)
        silent.settimeout(30)
        config = agent_config(tmp_path, source=f"http://127.0.0.1:{silent.getsockname()[1]}/stream.mjpg",
                              server_url=devserver.url, mqtt_port=broker.port, camera={"timeout_s": 12})
        agent = start_agent(agent_processes, config)
        connection, _ = silent.accept()  # the agent is inside the camera's open now, for up to 12 s
        with connection:
            started = time.monotonic()
            code = agent.terminate(timeout=15)
            took = time.monotonic() - started

    assert code == 0, agent.stderr
    assert took < 5.0, f"SIGTERM during the camera's open took {took:.1f} s"
    assert "cannot start" not in agent.stderr and "Traceback" not in agent.stderr
