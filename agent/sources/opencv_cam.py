"""Cameras read through OpenCV: network streams (FFmpeg), USB/V4L2 devices and Jetson CSI (GStreamer).

Each kind only differs in how its ``cv2.VideoCapture`` is opened and configured; grabbing, decoding
and the colour conversion (OpenCV hands out BGR) are shared in :class:`OpenCVCamera`.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from agent.config import CameraConfig
from agent.errors import SourceError, SourceUnavailable
from agent.sources.base import redact
from agent.sources.color import to_rgb
from agent.sources.live import CameraInfo
from agent.sources.video import import_cv2

logger = logging.getLogger(__name__)

# nvvidconv flip-method for camera.flip (0 none, 2 rotate-180, 4 horizontal, 6 vertical).
CSI_FLIP_METHODS = {"none": 0, "rotate-180": 2, "horizontal": 4, "vertical": 6}
CSI_DEFAULT_SIZE = (1280, 720)
CSI_DEFAULT_FPS = 30.0

NO_GSTREAMER = ("csi://{n}: this OpenCV was built without GStreamer ({where}), and Jetson CSI cameras need it: "
                "use JetPack's OpenCV (apt install nvidia-opencv, or python3-opencv from JetPack), and remove "
                "pip's opencv-python(-headless) from the venv, which shadows it (sudo ./install.sh does both)")
ARGUS_HINT = ("is the camera connected (nvgstcapture-1.0 or `ls /dev/video*`) and the nvargus-daemon running? "
              "After a crash Argus can be left wedged (\"Failed to create CaptureSession\"): "
              "sudo systemctl restart nvargus-daemon")


def flipped(pixels: np.ndarray, flip: str) -> np.ndarray:
    """``pixels`` turned as camera.flip says (a view; the colour conversion makes it contiguous)."""
    if flip == "rotate-180":
        return pixels[::-1, ::-1]
    if flip == "horizontal":
        return pixels[:, ::-1]
    if flip == "vertical":
        return pixels[::-1]
    return pixels


@dataclass
class OpenCVCamera:
    """A cv2.VideoCapture opened by ``opener``; frames are grabbed undecoded and retrieved on demand."""

    description: str
    opener: Callable[[Any], Any]  # cv2 -> an opened VideoCapture; raises SourceError/SourceUnavailable
    swap_rb: bool = False
    flip: str = "none"  # done in software here; CSI flips in hardware and passes "none"
    colour: str = "BGR from OpenCV, converted to RGB"
    hint: str = ""  # appended to read failures: what the user can do about this kind of device
    _capture: Any = field(default=None, init=False, repr=False)

    def open(self) -> CameraInfo:
        cv2 = import_cv2()
        self.close()
        self._capture = self.opener(cv2)
        capture = self._capture
        return CameraInfo(int(capture.get(cv2.CAP_PROP_FRAME_WIDTH)), int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT)),
                          float(capture.get(cv2.CAP_PROP_FPS) or 0.0),
                          self.colour + (", then red and blue swapped (swap_rb)" if self.swap_rb else ""))

    def grab(self) -> None:
        if self._capture is None or not self._capture.grab():
            raise SourceError(f"{self.description}: no frame (stream ended, device unplugged or read timed out)"
                              + (f"; {self.hint}" if self.hint else ""))

    def retrieve(self) -> np.ndarray:
        ok, bgr = self._capture.retrieve() if self._capture is not None else (False, None)
        if not ok or bgr is None:
            raise SourceError(f"{self.description}: the grabbed frame could not be decoded")
        return to_rgb(flipped(bgr, self.flip), "BGR", self.swap_rb)

    def close(self) -> None:
        capture, self._capture = self._capture, None
        if capture is not None:
            capture.release()

    release = close  # an OpenCV capture reopens from scratch: nothing more to let go of for good


def capture_with_timeouts(cv2: Any, target: str, api: int, timeout_s: float) -> Any:
    """``cv2.VideoCapture(target, api)`` with open and read timeouts where this OpenCV's backend takes them.

    Without them an unreachable camera or a cut stream blocks a read for 30-90 s (FFmpeg), and a wedged
    Argus blocks a GStreamer read for 30 s or for ever.
    """
    params = timeout_params(cv2, api, timeout_s)
    if params is None:
        logger.warning("OpenCV %s cannot set capture timeouts for this camera: a failing one may block a read "
                       "for 30 s or more", getattr(cv2, "__version__", "?"))
        return cv2.VideoCapture(target, api)
    return cv2.VideoCapture(target, api, params)


def timeout_params(cv2: Any, api: int, timeout_s: float) -> list[int] | None:
    """The open parameters for both timeouts, or None where passing them would make the open fail.

    FFmpeg takes them wherever the properties exist; GStreamer since 4.7 (JetPack 6 has 4.8), and an
    older backend refuses to open with parameters it does not know (JetPack 5's 4.5).
    """
    if not hasattr(cv2, "CAP_PROP_OPEN_TIMEOUT_MSEC"):
        return None
    if api == cv2.CAP_GSTREAMER and opencv_version(cv2) < (4, 7):
        return None
    milliseconds = int(timeout_s * 1000)
    return [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, milliseconds, cv2.CAP_PROP_READ_TIMEOUT_MSEC, milliseconds]


def opencv_version(cv2: Any) -> tuple[int, int]:
    """(major, minor) of the cv2 module; (0, 0) when it does not say."""
    match = re.match(r"(\d+)\.(\d+)", getattr(cv2, "__version__", ""))
    return (int(match.group(1)), int(match.group(2))) if match else (0, 0)


def _opened(capture: Any, problem: str) -> Any:
    """``capture`` when OpenCV opened it; otherwise release it and raise SourceUnavailable(problem)."""
    if capture.isOpened():
        return capture
    capture.release()
    raise SourceUnavailable(problem)


# --- network cameras ---------------------------------------------------------------------------------

def stream_camera(camera: CameraConfig) -> OpenCVCamera:
    """rtsp://, rtsps://, http:// (MJPEG) and https:// cameras through OpenCV's FFmpeg backend."""
    url, shown = camera.source.strip(), redact(camera.source.strip())

    def opener(cv2: Any) -> Any:
        capture = capture_with_timeouts(cv2, url, cv2.CAP_FFMPEG, camera.timeout_s)
        return _opened(capture, f"{shown}: cannot open the stream (unreachable, wrong path or credentials, or "
                                f"not a video stream; waited up to {camera.timeout_s:g} s)")

    return OpenCVCamera(f"stream {shown}", opener, camera.swap_rb, camera.flip)


# --- USB / V4L2 ----------------------------------------------------------------------------------------

def v4l2_path(source: str) -> str:
    """The device path of a V4L2 source: ``v4l2:///dev/video0`` -> ``/dev/video0``."""
    text = source.strip()
    return text[len("v4l2://"):] if text.lower().startswith("v4l2://") else text


def v4l2_camera(camera: CameraConfig) -> OpenCVCamera:
    """A USB webcam (or any V4L2 capture node) through OpenCV's V4L2 backend."""
    path = v4l2_path(camera.source)

    def opener(cv2: Any) -> Any:
        if not os.path.exists(path):
            raise SourceUnavailable(f"{path}: no such video device (unplugged? `ls /dev/v4l/by-id/` lists the "
                                    "cameras by a name that survives replugging)")
        if not os.access(path, os.R_OK | os.W_OK):
            raise SourceUnavailable(f"{path}: permission denied (the user must be in group video)")
        capture = _opened(cv2.VideoCapture(path, cv2.CAP_V4L2),
                          f"{path}: OpenCV cannot open this V4L2 device (busy in another program, or not a "
                          "capture node: a UVC camera's second node only carries metadata; use its "
                          "/dev/v4l/by-id/...-video-index0 link)")
        configure_v4l2(capture, cv2, camera)
        return capture

    return OpenCVCamera(f"v4l2 {path}", opener, camera.swap_rb, camera.flip)


def configure_v4l2(capture: Any, cv2: Any, camera: CameraConfig) -> None:
    """MJPG first (YUYV caps most webcams at a few fps above 640x480), then size and rate, then one buffer.

    Each FOURCC or buffer change restarts the V4L2 stream, so every property is set once, before the
    first read; the size the driver actually chose is read back and logged.
    """
    capture.set(cv2.CAP_PROP_FOURCC, cv2.VideoWriter_fourcc(*"MJPG"))
    if camera.width and camera.height:
        capture.set(cv2.CAP_PROP_FRAME_WIDTH, camera.width)
        capture.set(cv2.CAP_PROP_FRAME_HEIGHT, camera.height)
    if camera.capture_fps:
        capture.set(cv2.CAP_PROP_FPS, camera.capture_fps)
    capture.set(cv2.CAP_PROP_BUFFERSIZE, 1)
    width, height = int(capture.get(cv2.CAP_PROP_FRAME_WIDTH)), int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT))
    fourcc = int(capture.get(cv2.CAP_PROP_FOURCC))
    fourcc_text = "".join(chr((fourcc >> (8 * i)) & 0xFF) for i in range(4)).strip("\0") or "?"
    logger.info("v4l2 configured asked=%s got=%dx%d fourcc=%s fps=%g", _asked_size(camera), width, height,
                fourcc_text, capture.get(cv2.CAP_PROP_FPS))
    if camera.width and camera.height and (width, height) != (camera.width, camera.height):
        logger.warning("v4l2 camera gives %dx%d, not the %dx%d asked for (camera.width/height): it does not "
                       "offer that size (`v4l2-ctl --list-formats-ext` lists what it does)",
                       width, height, camera.width, camera.height)


def _asked_size(camera: CameraConfig) -> str:
    return f"{camera.width}x{camera.height}" if camera.width and camera.height else "default"


# --- Jetson CSI ------------------------------------------------------------------------------------------

def csi_sensor(source: str) -> int:
    """The sensor id of ``csi://N`` (``csi://`` alone is sensor 0)."""
    match = re.fullmatch(r"csi://(\d*)/?", source.strip(), flags=re.IGNORECASE)
    if match is None:
        raise SourceUnavailable(f"camera.source {source!r}: use csi://N with N the sensor id, e.g. csi://0")
    return int(match.group(1) or 0)


def csi_pipeline(sensor: int, width: int, height: int, fps: float, flip: str = "none") -> str:
    """The GStreamer pipeline for a Jetson CSI camera: Argus captures, the VIC converts and flips, BGR out.

    ``appsink drop=true max-buffers=1`` keeps only the newest frame; ``sync=false`` hands it over at once.
    """
    rate = _fraction(fps)
    return (f"nvarguscamerasrc sensor-id={sensor} ! "
            f"video/x-raw(memory:NVMM), width=(int){width}, height=(int){height}, framerate=(fraction){rate}, "
            f"format=(string)NV12 ! "
            f"nvvidconv flip-method={CSI_FLIP_METHODS[flip]} ! "
            f"video/x-raw, width=(int){width}, height=(int){height}, format=(string)BGRx ! "
            f"videoconvert ! video/x-raw, format=(string)BGR ! "
            f"appsink drop=true max-buffers=1 sync=false")


def _fraction(fps: float) -> str:
    """A GStreamer fraction for ``fps``: 30 -> 30/1, 29.97 -> 2997/100."""
    if float(fps).is_integer():
        return f"{int(fps)}/1"
    return f"{round(fps * 100)}/100"


def gstreamer_missing(cv2: Any) -> str | None:
    """None when this OpenCV has GStreamer; otherwise what its build information says."""
    for line in cv2.getBuildInformation().splitlines():
        if line.strip().startswith("GStreamer:"):
            verdict = line.split(":", 1)[1].strip()
            return None if verdict.upper().startswith("YES") else f"GStreamer: {verdict}"
    return "no GStreamer in its build information"


def csi_camera(camera: CameraConfig) -> OpenCVCamera:
    """A Jetson CSI camera through nvarguscamerasrc in a GStreamer pipeline opened by OpenCV."""
    sensor = csi_sensor(camera.source)
    width, height = (camera.width, camera.height) if camera.width and camera.height else CSI_DEFAULT_SIZE
    pipeline = csi_pipeline(sensor, width, height, camera.capture_fps or CSI_DEFAULT_FPS, camera.flip)

    def opener(cv2: Any) -> Any:
        missing = gstreamer_missing(cv2)
        if missing is not None:
            raise SourceUnavailable(NO_GSTREAMER.format(n=sensor, where=missing))
        logger.debug("csi pipeline=%s", pipeline)
        return _opened(capture_with_timeouts(cv2, pipeline, cv2.CAP_GSTREAMER, camera.timeout_s),
                       f"csi://{sensor}: the GStreamer pipeline did not start: {ARGUS_HINT}")

    # The flip is done by nvvidconv in hardware, so none is left for software.
    return OpenCVCamera(f"csi://{sensor}", opener, camera.swap_rb, "none",
                        colour="BGR from GStreamer (nvvidconv BGRx, videoconvert BGR), converted to RGB",
                        hint=ARGUS_HINT)
