"""Picamera2 and CompletedRequest, modelled on raspberrypi/picamera2 0.3.x (picamera2.py, request.py, job.py).

What is copied from the real library, because code under test depends on it:

- Construction indexes ``global_camera_info()[camera_num]`` first (IndexError with no camera), then
  acquires the camera; a failure is re-raised as RuntimeError("Camera __init__ sequence did not
  complete.") chained from the reason ("Failed to acquire camera: Device or resource busy"). A camera
  held by another open Picamera2 in this process is busy too, as it is on a Pi.
- Configurations are the real dicts (defaults, even-size alignment, checks that raise RuntimeError).
- Frames arrive in real time at the configured rate from a thread standing in for libcamera's event
  loop. Captures are jobs served in order as frames complete; ``queue=False`` keeps no completed frame,
  so a capture always gets a frame completed after the call. A job whose wait timed out stays queued
  and takes the next frame, stranding its buffer, until ``cancel_all_and_flush()``.
- ``buffer_count`` buffers: while callers hold them all the sensor has nowhere to write and captures
  time out. ``stop()`` then ``start()`` hands libcamera every buffer again.
"""

from __future__ import annotations

import atexit
import contextlib
import threading
import time
from collections.abc import Iterator
from concurrent.futures import CancelledError, Future
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any, Callable

import libcamera
import numpy as np

from . import _scene
from ._world import world

SENSOR_SIZE = (4608, 2592)
SENSOR_FORMAT = "SRGGB10_CSI2P"
MAX_SENSOR_FPS = 120.0  # frame durations shorter than this sensor mode allows are lengthened
RGB_FORMATS = {"BGR888", "RGB888", "XBGR8888", "XRGB8888", "RGB161616", "BGR161616"}
YUV_FORMATS = {"NV21", "NV12", "YUV420", "YVU420", "YVYU", "YUYV", "UYVY", "VYUY"}
CONTROLS = {"FrameRate", "FrameDurationLimits", "NoiseReductionMode", "ExposureTime", "AnalogueGain", "AeEnable",
            "AwbEnable", "ColourGains", "Brightness", "Contrast", "Saturation", "Sharpness", "ScalerCrop"}
FOREVER_S = 30.0  # a wait without timeout that lasts this long would hang forever on a Pi: fail the test


class CompletedRequest:
    """A frame handed out by the camera; holds one of its buffers until every reference is released."""

    def __init__(self, picam2: Picamera2, number: int, period_s: float):
        self.picam2 = picam2
        self.number = number
        self.ref_count = 1
        self.stop_count = picam2.stop_count
        self.config = picam2.camera_config.copy()
        self.stream_map = {name: name for name in ("main", "lores", "raw") if self.config.get(name)}
        self.request: object | None = object()  # the libcamera request; None once recycled
        self.handed_out = False
        exposure_ns = int(period_s * 0.5e9)
        self._metadata = {"SensorTimestamp": time.monotonic_ns(), "ExposureTime": exposure_ns // 1000,
                          "FrameDuration": int(period_s * 1e6)}

    def acquire(self) -> None:
        with self.picam2.lock:
            if self.ref_count == 0:
                raise RuntimeError("CompletedRequest: acquiring lock with ref_count 0")
            self.ref_count += 1

    def release(self) -> None:
        with self.picam2.lock:
            self.ref_count -= 1
            if self.ref_count < 0:
                raise RuntimeError("CompletedRequest: lock now has negative ref_count")
            if self.ref_count == 0:
                self.picam2._recycle(self)
                self.request, self.config, self.stream_map = None, {}, {}

    def get_metadata(self) -> dict[str, Any]:
        return dict(self._metadata)

    def make_array(self, name: str) -> np.ndarray:
        """A copy of the named stream's pixels, in the byte order its format really has."""
        config = self.config.get(name)
        if config is None:
            raise RuntimeError(f"Stream {name!r} is not defined")
        width, height = config["size"]
        transform = self.config["transform"]
        rgb = _scene.transformed(_scene.scene(width, height, self.number), transform.hflip, transform.vflip)
        return _scene.in_format(rgb, config["format"], world.swap_channels)


class Job:
    """An operation for the event loop: its functions run in turn as frames arrive (picamera2 job.py)."""

    def __init__(self, functions: list[Callable[[], tuple[bool, Any]]], signal_function: Callable | None = None):
        self._functions = list(functions)
        self._future: Future = Future()
        self._future.set_running_or_notify_cancel()
        self._signal_function = signal_function
        self._result: Any = None

    def execute(self) -> bool:
        try:
            while self._functions:
                done, result = self._functions[0]()
                if not done:
                    break
                self._functions.pop(0)
            if not self._functions:
                self._result = result
        except Exception as exc:
            self._future.set_exception(exc)
            self._functions = []
        return not self._functions

    def signal(self) -> None:
        if not self._future.done():
            self._future.set_result(self._result)
        if self._signal_function:
            self._signal_function(self)

    def get_result(self, timeout: float | None = None) -> Any:
        if timeout is None:
            try:
                return self._future.result(FOREVER_S)
            except FutureTimeout:
                raise RuntimeError(f"fake picamera2: a wait without timeout lasted {FOREVER_S:g} s; on a Pi it "
                                   "would never end (pass wait=<seconds>)") from None
        return self._future.result(timeout)

    def cancel(self) -> None:
        if not self._future.done():
            self._future.set_exception(CancelledError())


class Picamera2:
    """One camera, opened by the constructor and released by close()."""

    @staticmethod
    def global_camera_info() -> list[dict]:
        """Model, Location, Rotation, Id and Num of every camera libcamera lists ([] when none)."""
        return world.camera_list()

    def __init__(self, camera_num: int = 0, verbose_console: Any = None, tuning: Any = None, allocator: Any = None):
        self.is_open = False
        self.started = False
        self._stop_pipeline: Any = None
        # Like the real one, before its try block: no camera (or no such number) is an IndexError.
        self.camera_idx = self.global_camera_info()[camera_num]["Num"]
        try:
            self._acquire()
        except Exception as exc:
            raise RuntimeError("Camera __init__ sequence did not complete.") from exc
        self.lock = threading.RLock()
        self.sensor_resolution, self.sensor_format = SENSOR_SIZE, SENSOR_FORMAT
        self.camera_config: dict[str, Any] = {}
        self.stop_count = self.configure_count = 0
        self._pending_controls: dict[str, Any] = {}
        self._period_s = 1 / 30
        self._jobs: list[Job] = []
        self._completed: list[CompletedRequest] = []
        self._max_queue_len = 1
        self._buffers_in_use = 0
        atexit.register(self._close_at_exit)  # the real one registers close() so exit releases the camera

    def _acquire(self) -> None:
        with world.lock:
            if world.busy or self.camera_idx in world.open_cameras:
                raise RuntimeError("Failed to acquire camera: Device or resource busy")
            world.open_cameras[self.camera_idx] = self
            world.created += 1
        self.is_open = True

    def __enter__(self) -> Picamera2:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # --- configurations --------------------------------------------------------------------------------

    def create_video_configuration(self, main: dict | None = None, lores: dict | None = None,
                                   raw: dict | None = {},  # noqa: B006 - the real default: a raw stream
                                   transform: Any = None, colour_space: Any = None, buffer_count: int = 6,
                                   controls: dict | None = None, display: str | None = "main",
                                   encode: str | None = "main", queue: bool = True, sensor: dict | None = None,
                                   use_case: str = "video") -> dict[str, Any]:
        """1280x720 XBGR8888, 6 buffers, fixed 30 fps unless overridden (the real defaults)."""
        main_cfg = self._stream({"format": "XBGR8888", "size": (1280, 720), "preserve_ar": True}, main or {})
        if colour_space is None:
            small = main_cfg["size"][0] < 1280 or main_cfg["size"][1] < 720
            colour_space = libcamera.ColorSpace.Smpte170m() if small else libcamera.ColorSpace.Rec709()
        defaults = {"NoiseReductionMode": 1, "FrameDurationLimits": (33333, 33333)}
        return self._config(use_case, main_cfg, lores, raw, transform, colour_space, buffer_count,
                            defaults | (controls or {}), display, encode, queue, sensor or {})

    def create_preview_configuration(self, main: dict | None = None, lores: dict | None = None,
                                     raw: dict | None = {},  # noqa: B006
                                     transform: Any = None, colour_space: Any = None, buffer_count: int = 4,
                                     controls: dict | None = None, display: str | None = "main",
                                     encode: str | None = "main", queue: bool = True,
                                     sensor: dict | None = None, use_case: str = "preview") -> dict[str, Any]:
        """640x480 XBGR8888, 4 buffers, 12 fps or faster (the real defaults)."""
        main_cfg = self._stream({"format": "XBGR8888", "size": (640, 480), "preserve_ar": True}, main or {})
        defaults = {"NoiseReductionMode": 0, "FrameDurationLimits": (100, 83333)}
        return self._config(use_case, main_cfg, lores, raw, transform, colour_space or libcamera.ColorSpace.Sycc(),
                            buffer_count, defaults | (controls or {}), display, encode, queue, sensor or {})

    @staticmethod
    def _stream(base: dict, updates: dict, ignore: tuple = ()) -> dict:
        for key, value in updates.items():
            if key in ("format", "size", "stride", "preserve_ar"):
                base[key] = value
            elif key not in ignore:
                raise ValueError(f"Bad key {key!r}: valid stream configuration keys are "
                                 "('format', 'size', 'stride', 'preserve_ar')")
        width, height = base["size"]
        base["size"] = (width - width % 2, height - height % 2)  # align_stream(optimal=False)
        return base

    def _config(self, use_case: str, main: dict, lores: dict | None, raw: dict | None, transform: Any,
                colour_space: Any, buffer_count: int, controls: dict, display: str | None, encode: str | None,
                queue: bool, sensor: dict) -> dict[str, Any]:
        if lores is not None:
            lores = self._stream({"format": "YUV420", "size": main["size"], "preserve_ar": False}, lores)
        if raw is not None:
            raw = self._stream({"format": self.sensor_format, "size": main["size"]}, raw,
                               ("bit_depth", "crop_limits", "exposure_limits", "fps", "unpacked"))
        config = {"use_case": use_case, "transform": transform if transform is not None else libcamera.Transform(),
                  "colour_space": colour_space, "buffer_count": buffer_count, "queue": queue, "main": main,
                  "lores": lores, "raw": raw, "controls": controls, "sensor": sensor}
        for key, stream in (("display", display), ("encode", encode)):
            if stream is not None and config.get(stream) is None:
                raise RuntimeError(f"{key.capitalize()} stream {stream} was not defined")
            config[key] = stream
        return config

    def configure(self, camera_config: Any = None) -> None:
        """Apply a configuration (a dict or "preview"/"video"); the camera must be stopped."""
        if self.started:
            raise RuntimeError("Camera must be stopped before configuring")
        if camera_config is None or isinstance(camera_config, str):
            make = self.create_video_configuration if camera_config == "video" else self.create_preview_configuration
            camera_config = make()
        if not isinstance(camera_config, dict):
            raise TypeError("Invalid type for `camera_config` given")
        config = camera_config.copy()
        self._check(config)
        if world.adjusted_size is not None:  # libcamera's validate() said Adjusted; the config shows the result
            config["main"] = dict(config["main"], size=tuple(world.adjusted_size))
        self._max_queue_len = 1 if config["queue"] and config["buffer_count"] > 1 else 0
        self.camera_config = config
        self._pending_controls = dict(config["controls"])
        self.configure_count += 1
        with world.lock:
            world.configured.append(config)

    def _check(self, config: dict) -> None:
        for name in ("colour_space", "transform", "main", "lores", "raw"):
            if name not in config:
                raise RuntimeError(f"{name!r} key expected in camera configuration")
        if not isinstance(config["colour_space"], libcamera.ColorSpace):
            raise RuntimeError("Colour space has incorrect type")
        if not isinstance(config["transform"], libcamera.Transform):
            raise RuntimeError("Transform has incorrect type")
        for name in ("main", "lores"):
            if config[name] is not None or name == "main":
                self._check_stream(config[name], name)
        self._check_controls(config.get("controls") or {})

    @staticmethod
    def _check_stream(stream: Any, name: str) -> None:
        if type(stream) is not dict:
            raise RuntimeError(name + " stream should be a dictionary")
        fmt, size = stream.get("format"), stream.get("size")
        if fmt not in RGB_FORMATS | YUV_FORMATS:
            raise RuntimeError(f"Bad format {fmt} in stream {name}")
        if type(size) is not tuple or len(size) != 2:
            raise RuntimeError("size in " + name + " stream should be (width, height)")
        if size[0] % 2 or size[1] % 2:
            raise RuntimeError("width and height should be even")

    @staticmethod
    def _check_controls(controls: dict) -> None:
        for name in controls:
            if name not in CONTROLS:
                raise RuntimeError(f"Control {name} is not advertised by libcamera")

    def camera_configuration(self) -> dict[str, Any]:
        return self.camera_config

    def stream_configuration(self, name: str = "main") -> dict[str, Any]:
        return self.camera_config[name]

    def set_controls(self, controls: dict) -> None:
        """Controls sent with the next start() (or the next frame when running)."""
        self._check_controls(controls)
        self._pending_controls.update(controls)
        if self.started:
            self._period_s = _frame_period(self._pending_controls, self._period_s)

    # --- running ------------------------------------------------------------------------------------------

    def start(self, config: Any = None, show_preview: Any = False) -> None:
        if not self.camera_config and config is None:
            config = "preview"
        if config is not None:
            self.configure(config)
        if self.started:
            return
        controls, self._pending_controls = self._pending_controls, {}
        # Controls not sent again keep their value: libcamera's pipeline handler remembers them.
        self._period_s = _frame_period(controls, self._period_s)
        with world.lock:
            world.starts.append(controls)
        with self.lock:
            self._buffers_in_use = 0  # every buffer is queued to the camera afresh
            self.started = True
        self._stop_pipeline = _start_pipeline(self)

    def stop(self) -> None:
        if not self.started:
            return
        self._stop_pipeline()
        with self.lock:
            self.started = False
            self.stop_count += 1
            while self._completed:
                self._completed.pop(0).release()
        with world.lock:
            world.stops += 1

    def close(self) -> None:
        atexit.unregister(self._close_at_exit)
        if not self.is_open:
            return
        self.stop()
        self.is_open = False
        with world.lock:
            world.open_cameras.pop(self.camera_idx, None)
            world.closed += 1

    def _close_at_exit(self) -> None:
        if self.is_open:
            with world.lock:
                world.closed_at_exit += 1
        self.close()

    def cancel_all_and_flush(self) -> None:
        """Cancel every queued job (after a timeout, so the camera can be stopped and closed)."""
        with self.lock:
            for job in self._jobs:
                job.cancel()
            self._jobs = []
        with world.lock:
            world.flushes += 1

    # --- captures --------------------------------------------------------------------------------------------

    def dispatch_functions(self, functions: list, wait: Any, signal_function: Callable | None = None) -> Any:
        """Queue a job; wait True/None: until done, a number: that many seconds (TimeoutError), False: the Job."""
        if wait is None:
            wait = signal_function is None
        timeout = None if wait is True else wait
        with self.lock:
            only_job = not self._jobs
            job = Job(functions, signal_function)
            self._jobs.append(job)
            finished = self._run_jobs() if only_job and self._completed else []
        for done in finished:
            done.signal()
        return job.get_result(timeout) if wait else job

    def wait(self, job: Job, timeout: float | None = None) -> Any:
        return job.get_result(timeout)

    def capture_request(self, wait: Any = None, signal_function: Callable | None = None, flush: Any = None) -> Any:
        """The next completed request; the caller holds it and must release() it."""
        if flush is True:
            flush = time.monotonic_ns()
        return self.dispatch_functions([lambda: self._wait_for_timestamp(flush), self._capture_request],
                                       wait, signal_function)

    @contextlib.contextmanager
    def captured_request(self, wait: Any = None, flush: Any = None) -> Iterator[CompletedRequest]:
        request = self.capture_request(wait=wait, flush=flush)
        try:
            yield request
        finally:
            request.release()

    def capture_array(self, name: str = "main", wait: Any = None, signal_function: Callable | None = None) -> Any:
        return self.dispatch_functions([lambda: self._capture_array(name)], wait, signal_function)

    def _capture_request(self) -> tuple[bool, Any]:
        if not self._completed:
            return False, None
        request = self._completed.pop(0)
        request.handed_out = True
        world.hold()
        return True, request

    def _capture_array(self, name: str) -> tuple[bool, Any]:
        if not self._completed:
            return False, None
        request = self._completed.pop(0)
        array = request.make_array(name)
        request.release()
        return True, array

    def _wait_for_timestamp(self, timestamp_ns: int | None) -> tuple[bool, Any]:
        if not timestamp_ns:
            return True, None
        while self._completed:
            metadata = self._completed[0].get_metadata()
            if metadata["SensorTimestamp"] - 1000 * metadata["ExposureTime"] >= timestamp_ns:
                return True, None
            self._completed.pop(0).release()
        return False, None

    # --- the event loop --------------------------------------------------------------------------------------

    def _frame_due(self) -> None:
        """One frame time has come: complete a request if the sensor works and a buffer is free."""
        with self.lock:
            if not self.started or world.is_hung() or self._buffers_in_use >= self.camera_config["buffer_count"]:
                return
            self._buffers_in_use += 1
            self._completed.append(CompletedRequest(self, world.frame_delivered(), self._period_s))
            finished = self._run_jobs()
            while len(self._completed) > self._max_queue_len:
                self._completed.pop(0).release()
        for job in finished:
            job.signal()

    def _run_jobs(self) -> list[Job]:
        finished = []
        while self._jobs and self._jobs[0].execute():
            finished.append(self._jobs.pop(0))
        return finished

    def _recycle(self, request: CompletedRequest) -> None:
        """A request's last reference went: its buffer goes back to the camera (if it still runs)."""
        if request.handed_out:
            world.unhold()
        if self.started and request.stop_count == self.stop_count:
            self._buffers_in_use -= 1


def _frame_period(controls: dict, current_s: float) -> float:
    """The frame period the controls ask for (FrameRate wins, as picamera2 maps it to FrameDurationLimits)."""
    period_s = current_s
    for name, value in controls.items():
        if name == "FrameRate":
            period_s = 1 / float(value)
        elif name == "FrameDurationLimits":
            period_s = value[0] / 1e6
    return max(period_s, 1 / MAX_SENSOR_FPS)


def _start_pipeline(picam2: Picamera2) -> Callable[[], None]:
    """Run the frame clock in a thread; returns the function that stops it (and waits for it)."""
    stopping = threading.Event()

    def run() -> None:
        due = time.monotonic() + picam2._period_s
        while not stopping.wait(max(0.0, due - time.monotonic())):
            picam2._frame_due()
            due += picam2._period_s
            if due < time.monotonic():  # a late clock skips the frames it missed rather than bursting
                due = time.monotonic() + picam2._period_s

    thread = threading.Thread(target=run, name=f"fake-libcamera-{picam2.camera_idx}", daemon=True)
    thread.start()

    def stop() -> None:
        stopping.set()
        if thread is not threading.current_thread():
            thread.join(5)

    return stop
