"""Raspberry Pi CSI cameras through picamera2 (libcamera): the ISP scales and flips, frames come as RGB bytes.

The Picamera2 object made by the first ``open()`` lives until ``release()``: creating it again after a
failure leaks DMA/CMA memory on small Pis (picamera2 issues #887, #1183), so a reconnect only stops
(``close()``) and restarts (``open()``) the same object. picamera2 exists only as an apt package on a Pi,
so it is imported by ``open()``, never at module import.
"""

from __future__ import annotations

import concurrent.futures
import importlib
import logging
import re
from typing import Any, Callable

import numpy as np

from agent.config import CameraConfig
from agent.errors import SourceError, SourceUnavailable
from agent.sources.color import to_rgb
from agent.sources.live import CameraInfo

logger = logging.getLogger(__name__)

# Small, so that resizing to the model input (150x150 typically) costs the CPU little: the ISP scales the
# sensor image down in hardware for free. 4:3 like the full field of view of most Pi sensors.
DEFAULT_SIZE = (320, 240)
# libcamera names formats as little-endian fourccs: "BGR888" is R,G,B bytes in memory ("RGB888" is B,G,R).
PIXEL_FORMAT = "BGR888"
BUFFERS = 4  # one held by us while a frame is decoded, the rest keep the sensor busy
FLIP_TRANSFORMS = {"none": (False, False), "rotate-180": (True, True), "horizontal": (True, False),
                   "vertical": (False, True)}
FRAME_PERIODS_WAITED = 3  # at a low capture_fps a timeout shorter than a few frames would fire on a healthy camera
CAPTURE_TIMEOUTS = (TimeoutError, concurrent.futures.TimeoutError)  # the same class from Python 3.11 on

NOT_INSTALLED = ("picamera2 is not installed: sudo apt install python3-picamera2 --no-install-recommends, and "
                 "create the venv with --system-site-packages (sudo ./install.sh does both)")
NO_CAMERA = ("no camera found (libcamera lists none: check the ribbon cable, camera_auto_detect=1 in "
             "/boot/firmware/config.txt, and that the user is in group video for /dev/dma_heap)")
BUSY_HINT = "is another program (rpicam-hello, a second agent) using it?"


def camera_number(source: str) -> int:
    """The camera number of ``picamera2`` (0) or ``picamera2:N``."""
    match = re.fullmatch(r"picamera2(?::(\d+))?", source.strip(), flags=re.IGNORECASE)
    if match is None:
        raise SourceUnavailable(f"camera.source {source!r}: use picamera2 or picamera2:N with N a camera number")
    return int(match.group(1) or 0)


def capture_wait_s(camera: CameraConfig) -> float:
    """How long one capture may wait for a frame: camera.timeout_s, or a few frame periods if longer."""
    if camera.capture_fps:
        return max(camera.timeout_s, FRAME_PERIODS_WAITED / camera.capture_fps)
    return camera.timeout_s


def reason(exc: BaseException) -> str:
    """``exc``'s message followed by its causes': picamera2 wraps the useful one ("Device or resource busy")."""
    parts: list[str] = []
    current: BaseException | None = exc
    while current is not None and len(parts) < 4:
        text = str(current).strip().rstrip(".") or type(current).__name__
        if text not in parts:
            parts.append(text)
        current = current.__cause__
    return ": ".join(parts)


def import_picamera2() -> tuple[Any, Any]:
    """The picamera2 and libcamera modules; SourceUnavailable with the fix when they cannot be imported."""
    try:
        return importlib.import_module("picamera2"), importlib.import_module("libcamera")
    except ImportError as exc:  # also a venv without --system-site-packages: "No module named 'libcamera'"
        raise SourceUnavailable(f"{NOT_INSTALLED} ({exc})") from exc
    except Exception as exc:  # e.g. pip's numpy 2 under apt's simplejpeg: "numpy.dtype size changed"
        raise SourceUnavailable(f"picamera2 cannot be imported: {reason(exc)} (a pip-installed numpy 2 breaks "
                                "apt's picamera2: pip install 'numpy<2' in the venv)") from exc


class Picamera2Camera:
    """One CSI camera, implementing the Camera protocol of ``agent.sources.live`` plus ``release()``."""

    def __init__(self, number: int, camera: CameraConfig):
        self.number = number
        self.description = f"picamera2 camera {number}"
        self.size = (camera.width, camera.height) if camera.width and camera.height else DEFAULT_SIZE
        self.capture_fps = camera.capture_fps
        self.flip = camera.flip
        self.swap_rb = camera.swap_rb
        self.wait_s = capture_wait_s(camera)
        self._picam2: Any = None  # made once, kept across reconnects
        self._running = False
        self._request: Any = None  # the grabbed frame: it holds a camera buffer until released

    @property
    def controls(self) -> dict[str, Any]:
        # FrameRate is picamera2's pseudo-control for FrameDurationLimits=(1e6/fps, 1e6/fps).
        return {"FrameRate": self.capture_fps} if self.capture_fps else {}

    def open(self) -> CameraInfo:
        """The first call makes, configures and starts the camera; later calls restart the same one."""
        if self._picam2 is None:
            self._picam2 = self._create()
            self._start(first=True)
        elif not self._running:
            self._start(first=False)
        return self._info()

    def grab(self) -> None:
        """Wait (at most ``wait_s``) for the next frame and hold it, undecoded, until retrieve()."""
        self._release_request()
        if self._picam2 is None or not self._running:
            raise SourceError(f"{self.description}: the camera is not started")
        try:
            self._request = self._picam2.capture_request(wait=self.wait_s)
        except CAPTURE_TIMEOUTS as exc:
            raise SourceError(f"{self.description}: no frame within {self.wait_s:g} s (cable loose or sensor "
                              "hung)") from exc
        except Exception as exc:  # the library boundary: whatever libcamera reports is a failed capture
            raise SourceError(f"{self.description}: capture failed: {reason(exc)}") from exc

    def retrieve(self) -> np.ndarray:
        """The grabbed frame as RGB (its buffer goes back to the camera at once: make_array copies)."""
        request, self._request = self._request, None
        if request is None:
            raise SourceError(f"{self.description}: no grabbed frame to retrieve")
        try:
            pixels = request.make_array("main")
        except Exception as exc:
            raise SourceError(f"{self.description}: the frame could not be read: {reason(exc)}") from exc
        finally:
            self._release(request)
        return to_rgb(pixels, "RGB", self.swap_rb)

    def close(self) -> None:
        """Stop capturing (after a failure; open() restarts); the Picamera2 object is kept. Idempotent."""
        self._release_request()
        picam2 = self._picam2
        if picam2 is None or not self._running:
            return
        self._running = False
        # A capture that timed out stays queued inside picamera2 and would strand a buffer on the next frame.
        cancel = getattr(picam2, "cancel_all_and_flush", None)
        if cancel is not None:
            self._quietly(cancel, "cancel_all_and_flush")
        self._quietly(picam2.stop, "stop")

    def release(self) -> None:
        """Stop and close the camera for good (the source is done with it). Idempotent."""
        self.close()
        picam2, self._picam2 = self._picam2, None
        if picam2 is not None:
            self._quietly(picam2.close, "close")
            logger.info("picamera2 closed source=%s", self.description)

    # --- helpers -------------------------------------------------------------------------------------------

    def _create(self) -> Any:
        """A configured Picamera2 for this camera; SourceUnavailable (nothing left open) when that fails."""
        picamera2, libcamera = import_picamera2()
        self._check_listed(picamera2.Picamera2)
        try:
            picam2 = picamera2.Picamera2(self.number)
        except Exception as exc:  # busy: RuntimeError("Camera __init__ ...") from "Failed to acquire camera: ..."
            raise SourceUnavailable(f"{self.description}: camera busy or failed to start: {reason(exc)}; "
                                    f"{BUSY_HINT}") from exc
        try:
            picam2.configure(self._configuration(picam2, libcamera))
        except Exception as exc:
            self._quietly(picam2.close, "close")
            raise SourceUnavailable(f"{self.description}: libcamera refused the configuration: {reason(exc)}") \
                from exc
        self._log_configuration(picam2)
        return picam2

    def _check_listed(self, picamera2_class: Any) -> None:
        """SourceUnavailable unless libcamera lists this camera (the message of a failed open varies by version)."""
        try:
            cameras = list(picamera2_class.global_camera_info())
        except Exception as exc:
            raise SourceUnavailable(f"{self.description}: libcamera cannot list the cameras: {reason(exc)}") from exc
        if not cameras:
            raise SourceUnavailable(f"{self.description}: {NO_CAMERA}")
        if self.number >= len(cameras):
            models = ", ".join(f"{n}: {info.get('Model', '?')}" for n, info in enumerate(cameras))
            raise SourceUnavailable(f"{self.description}: there is no camera {self.number}: libcamera lists "
                                    f"{len(cameras)} camera{'s' if len(cameras) > 1 else ''} ({models})")

    def _configuration(self, picam2: Any, libcamera: Any) -> Any:
        hflip, vflip = FLIP_TRANSFORMS[self.flip]
        # queue=False: picamera2 keeps no completed frame, so every capture is of a frame taken after the call.
        return picam2.create_video_configuration(main={"size": tuple(self.size), "format": PIXEL_FORMAT},
                                                 buffer_count=BUFFERS, queue=False, controls=self.controls,
                                                 transform=libcamera.Transform(hflip=hflip, vflip=vflip))

    def _start(self, *, first: bool) -> None:
        try:
            if not first:  # sent again: whether libcamera keeps controls across stop/start is not documented
                self._picam2.set_controls(self.controls)
            self._picam2.start()
        except Exception as exc:
            if first:
                self.release()
                raise SourceUnavailable(f"{self.description}: the camera did not start: {reason(exc)}") from exc
            raise SourceError(f"{self.description}: the camera did not restart: {reason(exc)}") from exc
        self._running = True

    def _info(self) -> CameraInfo:
        config = self._picam2.camera_configuration()
        width, height = config["main"]["size"]
        colour = f'picamera2 "{PIXEL_FORMAT}" (R,G,B bytes), used as RGB'
        if self.swap_rb:
            colour += ", then red and blue swapped (swap_rb)"
        return CameraInfo(int(width), int(height), self.capture_fps or frame_rate(config.get("controls")), colour)

    def _log_configuration(self, picam2: Any) -> None:
        config = picam2.camera_configuration()
        main = config["main"]
        logger.info("picamera2 configured source=%s asked=%dx%d got=%dx%d format=%s buffers=%s queue=%s "
                    "controls=%s transform=%s", self.description, *self.size, *main["size"], main["format"],
                    config.get("buffer_count"), config.get("queue"), config.get("controls"), config.get("transform"))
        if tuple(main["size"]) != tuple(self.size):
            logger.warning("picamera2 camera gives %dx%d, not the %dx%d asked for (libcamera adjusted it)",
                           *main["size"], *self.size)

    def _release_request(self) -> None:
        request, self._request = self._request, None
        if request is not None:
            self._release(request)

    def _release(self, request: Any) -> None:
        self._quietly(request.release, "request release")

    def _quietly(self, action: Callable[[], Any], what: str) -> None:
        """Run a clean-up step; its failure is logged, never raised (there is nothing more to undo)."""
        try:
            action()
        except Exception as exc:
            logger.warning("picamera2 %s failed source=%s: %s", what, self.description, reason(exc))


def frame_rate(controls: dict | None) -> float:
    """The fixed frame rate a configuration's controls ask for; 0 when the rate may vary."""
    controls = controls or {}
    if controls.get("FrameRate"):
        return float(controls["FrameRate"])
    limits = controls.get("FrameDurationLimits")
    if limits and limits[0] == limits[1] and limits[0] > 0:
        return round(1e6 / limits[0], 2)
    return 0.0


def picamera2_camera(camera: CameraConfig) -> Picamera2Camera:
    """The Camera for ``camera.source`` = ``picamera2`` or ``picamera2:N``."""
    return Picamera2Camera(camera_number(camera.source), camera)
