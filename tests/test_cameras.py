"""Live cameras: the capture thread (freshness, reconnect, close), USB/V4L2 set-up, Jetson CSI through a fake Argus.

The capture thread is driven by a scripted camera (a device at the hardware edge, to the Camera
protocol); V4L2 set-up is checked on a recording capture because no /dev/video exists here; Jetson CSI
runs through real OpenCV with only ``VideoCapture(nvarguscamerasrc …, CAP_GSTREAMER)`` faked.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
import types
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from conftest import wait_until
from helpers_media import BLUE, RED, quadrant_colours, quadrants

from agent.config import CameraConfig
from agent.errors import CameraStalled, SourceError, SourceUnavailable
from agent.sources import open_source
from agent.sources.live import CameraInfo, LiveSource, Reconnect
from agent.sources.opencv_cam import (
    ARGUS_HINT,
    configure_v4l2,
    csi_pipeline,
    csi_sensor,
    gstreamer_missing,
    v4l2_path,
)

FAST = Reconnect(initial_s=0.01, max_s=0.05)


class ScriptedCamera:
    """A camera at the hardware edge: frames numbered 1, 2, 3… at ``fps``; ``fail``/``refuse`` switch it off."""

    description = "scripted camera"

    def __init__(self, fps: float = 200.0):
        self.interval = 1.0 / fps
        self.grabbed = 0  # frame number of the last grab
        self.decoded = 0  # retrieve() calls: decoding is the expensive part
        self.opens = self.closes = self.released = 0
        self.open_times: list[float] = []
        self.fail = False  # grabs raise (stream cut)
        self.refuse = False  # opens raise (camera still gone)
        self.hang = threading.Event()  # grabs block while set… until cleared
        self.hanging = threading.Event()  # a grab is blocked in the hang now
        self.grab_times: dict[int, float] = {}

    def open(self) -> CameraInfo:
        if self.refuse:
            raise SourceError("scripted camera: refused")
        self.opens += 1
        self.open_times.append(time.monotonic())
        return CameraInfo(64, 48, 1 / self.interval, "RGB")

    def grab(self) -> None:
        while self.hang.is_set():
            self.hanging.set()
            time.sleep(0.005)
        self.hanging.clear()
        if self.fail:
            raise SourceError("scripted camera: stream cut")
        time.sleep(self.interval)
        self.grabbed += 1
        self.grab_times[self.grabbed] = time.time()

    def retrieve(self) -> np.ndarray:
        self.decoded += 1
        return np.full((48, 64, 3), self.grabbed % 256, dtype=np.uint8)

    def close(self) -> None:
        self.closes += 1

    def release(self) -> None:
        self.released += 1
        self.close()


@pytest.fixture
def scripted() -> ScriptedCamera:
    return ScriptedCamera()


def live_over(camera: Any, timeout_s: float = 2.0) -> LiveSource:
    source = LiveSource(camera, timeout_s=timeout_s, reconnect=FAST)
    source.open()
    return source


# --- the capture thread ------------------------------------------------------------------------------


def test_read_returns_the_newest_frame_however_slow_the_reader(scripted: ScriptedCamera) -> None:
    source = live_over(scripted)
    try:
        for _ in range(5):
            time.sleep(0.1)  # a slow server: 20 frames go by between two reads
            newest_when_asked = scripted.grabbed
            frame = source.read()
            # The frame grabbed when the request came in, or a later one: never one from the backlog.
            assert _grab_of(scripted, frame) >= newest_when_asked
    finally:
        source.close()


def _grab_of(camera: ScriptedCamera, frame: Any) -> int:
    """The grab number whose pixels the frame carries (grab numbers are stamped mod 256)."""
    value = int(frame.rgb[0, 0, 0])
    return max(n for n in camera.grab_times if n % 256 == value)


def test_frames_nobody_asked_for_are_grabbed_but_never_decoded(scripted: ScriptedCamera) -> None:
    source = live_over(scripted)
    try:
        for _ in range(3):
            source.read()
            time.sleep(0.1)
        assert scripted.grabbed > 3 * scripted.decoded
        assert scripted.decoded == 3
    finally:
        source.close()


def test_frames_are_numbered_in_order_and_stamped_with_their_grab_time(scripted: ScriptedCamera) -> None:
    source = live_over(scripted)
    try:
        frames = [source.read() for _ in range(4)]
    finally:
        source.close()
    assert [f.seq for f in frames] == [1, 2, 3, 4]
    assert all(b.captured_at > a.captured_at for a, b in zip(frames, frames[1:]))
    for frame in frames:
        assert frame.captured_at == pytest.approx(scripted.grab_times[_grab_of(scripted, frame)])


def test_a_failing_camera_is_reported_then_reopened_by_the_capture_thread(scripted: ScriptedCamera) -> None:
    source = live_over(scripted, timeout_s=0.5)
    try:
        source.read()
        scripted.fail, scripted.refuse = True, True
        assert wait_until(lambda: source.camera_error is not None)
        with pytest.raises(SourceError, match=r"no frame for 0.5 s: scripted camera: (stream cut|refused)"):
            source.read()
        scripted.fail, scripted.refuse = False, False
        assert source.read().rgb.shape == (48, 64, 3)  # back without anyone reopening it
        assert source.camera_error is None
        assert source.reopened == 1 and scripted.opens == 2
        assert scripted.closes >= 1  # the failed device was released before reopening
    finally:
        source.close()


def test_a_read_never_waits_longer_than_the_camera_timeout(scripted: ScriptedCamera) -> None:
    source = live_over(scripted, timeout_s=0.3)
    try:
        scripted.hang.set()  # a device that stops delivering without an error
        assert scripted.hanging.wait(5)
        started = time.monotonic()
        with pytest.raises(SourceError, match="the camera delivers no frames"):
            source.read()
        assert time.monotonic() - started < 5.0  # bounded (0.3 s asked); generous for a busy machine
        scripted.hang.clear()
        assert source.read() is not None
    finally:
        source.close()


def test_a_frame_decoded_for_a_read_that_timed_out_is_not_handed_out_later(scripted: ScriptedCamera) -> None:
    source = live_over(scripted, timeout_s=0.2)
    try:
        scripted.hang.set()
        assert scripted.hanging.wait(5)
        with pytest.raises(SourceError):
            source.read()
        scripted.hang.clear()
        time.sleep(0.2)  # the thread answers the timed-out request meanwhile
        before = scripted.grabbed
        frame = source.read()
        assert _grab_of(scripted, frame) > before
    finally:
        source.close()


def test_close_stops_the_thread_and_releases_the_camera(scripted: ScriptedCamera) -> None:
    before = threading.active_count()
    source = live_over(scripted)
    source.read()
    source.close()
    assert threading.active_count() == before
    assert scripted.closes >= 1
    with pytest.raises(SourceError, match="closed"):
        source.read()


def test_a_library_exception_is_a_camera_failure_that_is_reported_and_recovered_from() -> None:
    class Flaky(ScriptedCamera):
        broken = True

        def grab(self) -> None:
            if self.broken:
                raise ZeroDivisionError("inside the driver")
            super().grab()

    camera = Flaky()
    source = live_over(camera, timeout_s=0.3)
    try:
        assert wait_until(lambda: source.camera_error is not None)
        with pytest.raises(SourceError, match="scripted camera: ZeroDivisionError: inside the driver"):
            source.read()
        camera.broken = False
        assert source.read() is not None  # the thread survived it and reopened the camera
        assert source.reopened == 1
    finally:
        source.close()


def test_a_camera_call_that_never_returns_is_reported_as_a_stall(scripted: ScriptedCamera) -> None:
    source = live_over(scripted, timeout_s=0.2)
    source.stall_after_s = 0.5  # 20 s in real life: longer than any device timeout
    try:
        scripted.hang.set()
        assert scripted.hanging.wait(5)
        with pytest.raises(SourceError) as first:
            source.read()
        assert not isinstance(first.value, CameraStalled)  # a slow camera is only down at first
        time.sleep(0.5)
        with pytest.raises(CameraStalled, match="a call into the camera has not returned for"):
            source.read()
    finally:
        scripted.hang.clear()
        source.close()


def test_the_reopen_back_off_grows_while_a_camera_opens_but_delivers_nothing(scripted: ScriptedCamera) -> None:
    source = live_over(scripted, timeout_s=0.5)
    source.reconnect = Reconnect(initial_s=0.02, max_s=0.32)
    try:
        scripted.fail = True  # opens succeed, every grab fails: an RTSP camera at its session limit
        assert wait_until(lambda: scripted.opens >= 6)
        gaps = [b - a for a, b in zip(scripted.open_times[1:], scripted.open_times[2:])]
        assert gaps[3] >= 4 * 0.02, f"back-off did not grow: {gaps}"  # 0.02, 0.04, 0.08, 0.16…
        assert source.reopened == 0  # opening is not recovering: no frame came
    finally:
        source.close()


def test_a_live_source_is_opened_once(scripted: ScriptedCamera) -> None:
    source = live_over(scripted)
    source.close()
    with pytest.raises(SourceError, match="opened only once"):
        source.open()


def test_a_close_during_a_slow_open_releases_the_camera_and_starts_no_thread() -> None:
    class SlowOpen(ScriptedCamera):
        go = threading.Event()

        def open(self) -> CameraInfo:
            self.go.wait(5)
            return super().open()

    camera = SlowOpen()
    source = LiveSource(camera, timeout_s=1, reconnect=FAST)
    before = threading.active_count()
    outcome: list[BaseException] = []
    opener = threading.Thread(target=lambda: _capture_error(source.open, outcome))
    opener.start()
    source.close()  # SIGTERM while the camera is still opening
    camera.go.set()
    opener.join(5)
    assert outcome and "closed while opening" in str(outcome[0])
    assert camera.released == 1
    assert threading.active_count() == before


def _capture_error(call: Any, errors: list) -> None:
    try:
        call()
    except BaseException as exc:  # handed to the test's thread
        errors.append(exc)


def test_a_camera_missing_at_start_is_unavailable_not_retried() -> None:
    class Missing(ScriptedCamera):
        def open(self) -> CameraInfo:
            raise SourceUnavailable("no camera found")

    before = threading.active_count()
    with pytest.raises(SourceUnavailable, match="no camera found"):
        LiveSource(Missing()).open()
    assert threading.active_count() == before  # no capture thread was started


# --- USB / V4L2 ----------------------------------------------------------------------------------------


class RecordingCapture:
    """A V4L2 device's side of cv2.VideoCapture: records each set(), reports what the driver chose."""

    def __init__(self, offers: tuple[int, int] = (1280, 720)):
        self.calls: list[tuple[str, float]] = []
        self.offers = offers
        self.props: dict[int, float] = {}

    def set(self, prop: int, value: float) -> bool:
        self.calls.append((NAMES.get(prop, str(prop)), value))
        self.props[prop] = value
        return True

    def get(self, prop: int) -> float:
        if prop == cv2.CAP_PROP_FRAME_WIDTH:
            return float(self.offers[0])
        if prop == cv2.CAP_PROP_FRAME_HEIGHT:
            return float(self.offers[1])
        return float(self.props.get(prop, 0.0))


NAMES = {cv2.CAP_PROP_FOURCC: "fourcc", cv2.CAP_PROP_FRAME_WIDTH: "width", cv2.CAP_PROP_FRAME_HEIGHT: "height",
         cv2.CAP_PROP_FPS: "fps", cv2.CAP_PROP_BUFFERSIZE: "buffersize"}


def test_v4l2_asks_for_mjpg_before_the_size_and_then_one_buffer(caplog: pytest.LogCaptureFixture) -> None:
    capture = RecordingCapture(offers=(1280, 720))
    with caplog.at_level(logging.INFO):
        configure_v4l2(capture, cv2, CameraConfig(source="/dev/video0", width=1280, height=720, capture_fps=15))
    assert capture.calls == [("fourcc", cv2.VideoWriter_fourcc(*"MJPG")), ("width", 1280), ("height", 720),
                             ("fps", 15), ("buffersize", 1)]
    assert "asked=1280x720 got=1280x720 fourcc=MJPG" in caplog.text


def test_v4l2_reads_back_the_size_and_warns_when_the_camera_gave_another(caplog: pytest.LogCaptureFixture) -> None:
    capture = RecordingCapture(offers=(640, 480))
    with caplog.at_level(logging.INFO):
        configure_v4l2(capture, cv2, CameraConfig(source="/dev/video0", width=1920, height=1080))
    assert "got=640x480" in caplog.text
    assert "gives 640x480, not the 1920x1080 asked for" in caplog.text


def test_v4l2_without_a_size_keeps_the_device_default_and_still_takes_one_buffer() -> None:
    capture = RecordingCapture()
    configure_v4l2(capture, cv2, CameraConfig(source="/dev/video0"))
    assert [name for name, _ in capture.calls] == ["fourcc", "buffersize"]


@pytest.mark.parametrize(("value", "path"), [
    ("/dev/video2", "/dev/video2"), ("v4l2:///dev/video2", "/dev/video2"),
    ("/dev/v4l/by-id/usb-Cam-video-index0", "/dev/v4l/by-id/usb-Cam-video-index0"),
])
def test_v4l2_source_forms_name_the_device_path(value: str, path: str) -> None:
    assert v4l2_path(value) == path


def test_a_missing_v4l2_device_is_unavailable_with_the_by_id_hint(tmp_path: Path) -> None:
    source = open_source(CameraConfig(source=f"v4l2://{tmp_path}/video7"))
    with pytest.raises(SourceUnavailable, match=r"video7: no such video device .*by-id"):
        source.open()


def test_a_node_that_is_not_a_capture_device_is_refused_by_real_opencv(tmp_path: Path) -> None:
    not_a_camera = tmp_path / "video9"
    not_a_camera.write_bytes(b"")
    with pytest.raises(SourceUnavailable, match="OpenCV cannot open this V4L2 device"):
        open_source(CameraConfig(source=str(not_a_camera).replace(str(tmp_path), f"v4l2://{tmp_path}"))).open()


# --- Jetson CSI -------------------------------------------------------------------------------------------


def test_csi_pipeline_is_argus_then_vic_conversion_then_a_one_frame_appsink() -> None:
    assert csi_pipeline(1, 1920, 1080, 30, "rotate-180") == (
        "nvarguscamerasrc sensor-id=1 ! "
        "video/x-raw(memory:NVMM), width=(int)1920, height=(int)1080, framerate=(fraction)30/1, "
        "format=(string)NV12 ! "
        "nvvidconv flip-method=2 ! "
        "video/x-raw, width=(int)1920, height=(int)1080, format=(string)BGRx ! "
        "videoconvert ! video/x-raw, format=(string)BGR ! "
        "appsink drop=true max-buffers=1 sync=false")


@pytest.mark.parametrize(("flip", "method"), [("none", 0), ("rotate-180", 2), ("horizontal", 4), ("vertical", 6)])
def test_csi_flip_is_done_by_nvvidconv(flip: str, method: int) -> None:
    assert f"nvvidconv flip-method={method} !" in csi_pipeline(0, 640, 480, 30, flip)


@pytest.mark.parametrize(("fps", "fraction"), [(30, "30/1"), (21, "21/1"), (29.97, "2997/100")])
def test_csi_frame_rate_is_a_gstreamer_fraction(fps: float, fraction: str) -> None:
    assert f"framerate=(fraction){fraction}," in csi_pipeline(0, 640, 480, fps)


@pytest.mark.parametrize(("value", "sensor"), [("csi://0", 0), ("csi://1", 1), ("CSI://", 0), ("csi://2/", 2)])
def test_csi_source_names_the_sensor(value: str, sensor: int) -> None:
    assert csi_sensor(value) == sensor


def test_a_malformed_csi_source_is_refused_with_the_form_to_use() -> None:
    with pytest.raises(SourceUnavailable, match="use csi://N"):
        csi_sensor("csi://front")


def test_pip_opencv_without_gstreamer_is_refused_with_the_jetpack_fix() -> None:
    assert gstreamer_missing(cv2) is not None  # the pip wheel here, like on a Jetson with the wrong cv2
    with pytest.raises(SourceUnavailable, match=r"built without GStreamer .*JetPack's OpenCV.*shadows it"):
        open_source(CameraConfig(source="csi://0")).open()


class FakeArgus:
    """Real cv2 for everything, except that a GStreamer pipeline from nvarguscamerasrc captures from a fake
    sensor: the part that needs a Jetson. The frames are the quadrants test card in the pipeline's BGR."""

    def __init__(self, wedged: bool = False, version: str = "4.8.0"):  # JetPack 6's OpenCV
        self.wedged, self.version = wedged, version
        self.pipelines: list[str] = []
        self.params: list[list[int] | None] = []
        self.released = 0

    def module(self) -> types.ModuleType:
        fake = types.ModuleType("cv2")
        fake.__dict__.update({k: getattr(cv2, k) for k in dir(cv2) if not k.startswith("__")})
        fake.__version__ = self.version
        fake.getBuildInformation = lambda: "  Video I/O:\n    GStreamer:                   YES (1.20.3)\n"
        fake.VideoCapture = self.capture
        return fake

    def capture(self, pipeline: str, api: int, params: list[int] | None = None) -> Any:
        assert api == cv2.CAP_GSTREAMER
        self.pipelines.append(pipeline)
        self.params.append(params)
        argus = self

        class Capture:
            opened = not argus.wedged and pipeline.startswith("nvarguscamerasrc ")

            def isOpened(self) -> bool:  # noqa: N802 (OpenCV's name)
                return self.opened

            def grab(self) -> bool:
                time.sleep(1 / 30)
                return self.opened

            def retrieve(self) -> tuple[bool, np.ndarray]:
                return True, np.ascontiguousarray(quadrants(72, 128)[:, :, ::-1])  # BGR, as the appsink gives

            def get(self, prop: int) -> float:
                return {cv2.CAP_PROP_FRAME_WIDTH: 128.0, cv2.CAP_PROP_FRAME_HEIGHT: 72.0, cv2.CAP_PROP_FPS: 30.0}.get(
                    prop, 0.0)

            def release(self) -> None:
                argus.released += 1
                self.opened = False

        return Capture()


def test_csi_frames_arrive_as_rgb_through_the_gstreamer_pipeline(monkeypatch: pytest.MonkeyPatch) -> None:
    argus = FakeArgus()
    monkeypatch.setitem(sys.modules, "cv2", argus.module())
    source = open_source(CameraConfig(source="csi://0", width=128, height=72, capture_fps=30))
    source.open()
    try:
        colours = quadrant_colours(source.read().rgb)
    finally:
        source.close()
    assert tuple(colours["top_left"]) == RED and tuple(colours["bottom_left"]) == BLUE
    assert argus.pipelines == [csi_pipeline(0, 128, 72, 30)]
    assert argus.params == [[cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, 5000, cv2.CAP_PROP_READ_TIMEOUT_MSEC, 5000]]
    assert argus.released == 1  # Argus is left wedged by a capture that is never released


def test_csi_on_an_opencv_older_than_4_7_opens_without_timeouts_it_would_refuse(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    argus = FakeArgus(version="4.5.4")  # JetPack 5: its GStreamer backend refuses unknown open parameters
    monkeypatch.setitem(sys.modules, "cv2", argus.module())
    source = open_source(CameraConfig(source="csi://0"))
    with caplog.at_level(logging.WARNING):
        source.open()
    source.close()
    assert argus.params == [None]
    assert "cannot set capture timeouts" in caplog.text


def test_a_wedged_argus_daemon_is_reported_with_the_restart_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "cv2", FakeArgus(wedged=True).module())
    with pytest.raises(SourceUnavailable) as raised:
        open_source(CameraConfig(source="csi://0")).open()
    assert "the GStreamer pipeline did not start" in str(raised.value)
    assert "sudo systemctl restart nvargus-daemon" in str(raised.value) and ARGUS_HINT in str(raised.value)
