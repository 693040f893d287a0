"""A real MJPEG-over-HTTP camera for tests: ``multipart/x-mixed-replace`` on 127.0.0.1, numbered frames.

Frames follow a wall clock: frame ``n`` is due ``n / fps`` seconds after start(), whoever watches, so
numbers keep growing across reconnects and a client that falls behind is sent the newest frame (as a
real camera does), never a queue of old ones. Every frame carries its number in its pixels (see
``frame_image`` and ``frame_number``); the server records when each number was first sent, so a test
can tell how old the frame a client used was. ``cut()`` drops every client and refuses new ones until
``restore()`` (a camera gone); ``freeze()`` keeps connections open but sends nothing (a camera hung).

The stream is what OpenCV's FFmpeg reads (``mpjpeg`` demuxer): each part has a Content-Length, so
FFmpeg delivers a frame as soon as its last byte arrives instead of waiting for the next boundary.
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable

import numpy as np

STREAM_PATH = "/stream.mjpg"
BOUNDARY = "frame"

# Layout of a frame (any size; these are fractions of width and height, so a stretched resize keeps them):
# a 4x4 grid of black/white cells on the left 3/4 (16 bits of the frame number, most significant bit
# first, row by row), and a strip on the right 1/4: MARK_TOP over MARK_BOTTOM, to check colour order.
GRID = 4
GRID_WIDTH = 0.75
MARK_TOP = (255, 0, 0)  # red
MARK_BOTTOM = (0, 0, 255)  # blue


def frame_image(number: int, width: int = 160, height: int = 120) -> np.ndarray:
    """The RGB uint8 picture of frame ``number`` (0..65535)."""
    if not 0 <= number < 1 << (GRID * GRID):
        raise ValueError(f"frame number {number} does not fit in {GRID * GRID} bits")
    rgb = np.zeros((height, width, 3), dtype=np.uint8)
    grid_w = int(width * GRID_WIDTH)
    for index in range(GRID * GRID):
        if number >> (GRID * GRID - 1 - index) & 1:
            row, col = divmod(index, GRID)
            rgb[row * height // GRID:(row + 1) * height // GRID, col * grid_w // GRID:(col + 1) * grid_w // GRID] = 255
    rgb[:height // 2, grid_w:] = MARK_TOP
    rgb[height // 2:, grid_w:] = MARK_BOTTOM
    return rgb


def _as_levels(pixels: np.ndarray) -> np.ndarray:
    """HxWx3 pixels as floats 0..255: uint8 as is, floats as the agent's unit scale (0..1) times 255."""
    values = np.asarray(pixels, dtype=np.float64)
    if values.ndim != 3 or values.shape[2] != 3:
        raise ValueError(f"expected HxWx3 pixels, got shape {values.shape}")
    if not np.issubdtype(np.asarray(pixels).dtype, np.integer):
        values = values * 255.0
    return values


def _patch(levels: np.ndarray, x_rel: float, y_rel: float) -> np.ndarray:
    """The mean colour of a small patch centred at (x_rel, y_rel) of the picture."""
    height, width = levels.shape[:2]
    x, y = int(x_rel * width), int(y_rel * height)
    r = max(1, min(width, height) // 40)
    return levels[max(0, y - r):y + r + 1, max(0, x - r):x + r + 1].reshape(-1, 3).mean(axis=0)


def frame_number(pixels: np.ndarray) -> int:
    """The number ``frame_image`` drew into ``pixels``: an RGB uint8 frame, or the agent's float tensor
    (unit scale, any size: the grid survives JPEG and a stretched resize). ValueError when a cell is
    neither clearly black nor clearly white (not one of our frames, or colours swapped)."""
    levels = _as_levels(pixels)
    number = 0
    for index in range(GRID * GRID):
        row, col = divmod(index, GRID)
        level = float(_patch(levels, (col + 0.5) / GRID * GRID_WIDTH, (row + 0.5) / GRID).mean())
        if 60 < level < 195:
            raise ValueError(f"cell {index} has level {level:.0f}: not a numbered frame")
        number = number << 1 | (level >= 128)
    return number


def mark_colours(pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The colours of the strip's top and bottom halves (RGB levels 0..255 as floats)."""
    levels = _as_levels(pixels)
    x_rel = (1 + GRID_WIDTH) / 2
    return _patch(levels, x_rel, 0.25), _patch(levels, x_rel, 0.75)


def predict_tensor(body: bytes) -> np.ndarray:
    """The first instance of a row-format ``:predict`` body as an HxWx3 float array."""
    instance = json.loads(body)["instances"][0]
    if isinstance(instance, dict):
        (instance,) = instance.values()
    return np.asarray(instance, dtype=np.float64)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False

    def __init__(self, camera: MjpegServer):
        self.camera = camera
        super().__init__(("127.0.0.1", camera.port), _Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        # As ThreadingMixIn, but the threads are kept: cut() and stop() join them, so a test that counts
        # threads and descriptors never sees one of ours on its way out.
        thread = threading.Thread(target=self.process_request_thread, args=(request, client_address),
                                  name="mjpeg-client", daemon=True)
        self.camera._handler_started(thread)
        thread.start()

    def verify_request(self, request: Any, client_address: Any) -> bool:
        # While cut, a new connection is accepted and closed at once (socketserver closes it).
        return self.camera._admit()

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # clients hanging up, cut() and stop() are routine here


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.0"
    server: _Server

    def setup(self) -> None:
        super().setup()
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.server.camera._connected(self.connection, True)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.camera._connected(self.connection, False)

    def do_GET(self) -> None:
        camera = self.server.camera
        if self.path.split("?")[0] != STREAM_PATH:
            self.send_error(404)
            return
        if not camera._serving(self.connection, True):
            return
        try:
            camera._thawed()
            self.send_response(200)
            self.send_header("Content-Type", f"multipart/x-mixed-replace; boundary={BOUNDARY}")
            self.send_header("Cache-Control", "no-cache")
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.flush()
            camera._stream_to(self.wfile)
        except OSError:
            pass  # the client left, or cut()/stop() shut the socket
        finally:
            camera._serving(self.connection, False)

    def log_message(self, format: str, *args: Any) -> None:
        pass


class MjpegServer:
    """An MJPEG camera on a free 127.0.0.1 port: start(), url, cut()/restore(), stop(); a context manager."""

    def __init__(self, fps: float = 30.0, width: int = 160, height: int = 120, quality: int = 90, port: int = 0):
        self.fps, self.width, self.height, self.quality = fps, width, height, quality
        self.port = port
        self.accepted = 0  # client connections accepted and streamed to (not those refused while cut)
        self.refused = 0  # connections closed at once because the stream was cut
        self._lock = threading.Condition()
        self._sent: dict[int, float] = {}  # frame number -> time.time() it was first sent
        self._clients: set[socket.socket] = set()
        self._handlers: list[threading.Thread] = []
        self._connections: set[socket.socket] = set()  # every open connection, streamed to or not yet
        self._cut = False
        self._frozen = False
        self._stopped = threading.Event()
        self._t0 = 0.0
        self._jpeg: tuple[int, bytes] = (-1, b"")
        self._httpd: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}{STREAM_PATH}"

    def start(self) -> MjpegServer:
        self._stopped.clear()
        self._httpd = _Server(self)
        self.port = self._httpd.server_address[1]
        self._t0 = time.monotonic()
        self._thread = threading.Thread(target=self._httpd.serve_forever, args=(0.05,), name="mjpeg", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop listening, cut every client and wait for their threads to end."""
        httpd, self._httpd = self._httpd, None
        if httpd is None:
            return
        self._stopped.set()
        httpd.shutdown()
        httpd.server_close()
        self._drop_clients()
        if self._thread is not None:
            self._thread.join(5)

    def __enter__(self) -> MjpegServer:
        return self.start()

    def __exit__(self, *exc_info: Any) -> None:
        self.stop()

    def cut(self) -> None:
        """The camera goes away: every open stream is dropped and new connections are closed at once."""
        with self._lock:
            self._cut = True
        self._drop_clients()

    def restore(self) -> None:
        with self._lock:
            self._cut = False

    def freeze(self, frozen: bool = True) -> None:
        """The camera hangs: connections stay open (new ones are accepted) but no byte is sent until
        ``freeze(False)``; a client must give up by its own read timeout."""
        with self._lock:
            self._frozen = frozen
            self._lock.notify_all()

    @property
    def clients(self) -> int:
        """Connections being streamed to right now."""
        with self._lock:
            return len(self._clients)

    def wait_until(self, predicate: Callable[[MjpegServer], bool], timeout: float = 10.0) -> bool:
        """Block until ``predicate(self)`` holds (checked whenever a frame is sent or a client comes or goes)."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while not predicate(self):
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._lock.wait(min(left, 0.1))
        return True

    def sent(self) -> dict[int, float]:
        """Frame number -> time.time() when it was first sent to a client."""
        with self._lock:
            return dict(self._sent)

    def newest_sent(self, at: float) -> int:
        """The newest frame number sent at or before ``at`` (time.time()); -1 before any."""
        with self._lock:
            return max((n for n, t in self._sent.items() if t <= at), default=-1)

    def sent_between(self, start: float, end: float) -> int:
        """How many frames were first sent in (start, end]."""
        with self._lock:
            return sum(1 for t in self._sent.values() if start < t <= end)

    # -- server threads --

    def _admit(self) -> bool:
        with self._lock:
            if self._cut or self._stopped.is_set():
                self.refused += 1
                self._lock.notify_all()
                return False
            return True

    def _serving(self, sock: socket.socket, starting: bool) -> bool:
        with self._lock:
            if starting:
                if self._cut or self._stopped.is_set():  # cut between accept and the request line
                    self.refused += 1
                    return False
                self.accepted += 1
                self._clients.add(sock)
            else:
                self._clients.discard(sock)
            self._lock.notify_all()
        return True

    def _connected(self, sock: socket.socket, opened: bool) -> None:
        with self._lock:
            if opened:
                self._connections.add(sock)
            else:
                self._connections.discard(sock)

    def _handler_started(self, thread: threading.Thread) -> None:
        with self._lock:
            self._handlers = [t for t in self._handlers if t.is_alive()] + [thread]

    def _drop_clients(self) -> None:
        """Shut down every client socket and wait (up to 5 s) until their handler threads have ended."""
        with self._lock:
            sockets, handlers = list(self._connections), list(self._handlers)
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        deadline = time.monotonic() + 5.0
        for thread in handlers:
            thread.join(max(0.0, deadline - time.monotonic()))

    def _thawed(self) -> None:
        """Return once the stream is not frozen (or it was cut or stopped meanwhile)."""
        self.wait_until(lambda server: not server._frozen or server._cut or server._stopped.is_set(), timeout=1e9)

    def _frame(self, number: int) -> bytes:
        with self._lock:
            cached, data = self._jpeg
        if cached != number:
            import cv2

            bgr = np.ascontiguousarray(frame_image(number, self.width, self.height)[:, :, ::-1])
            ok, encoded = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, self.quality])
            assert ok, "cv2.imencode failed"
            data = encoded.tobytes()
            with self._lock:
                self._jpeg = (number, data)
        return data

    def _stream_to(self, out: Any) -> None:
        """Send the frame that is due, wait for the next one, repeat, until the client goes or the cut."""
        last = -1
        while True:
            now = time.monotonic()
            due = int((now - self._t0) * self.fps)
            if due <= last:
                if self._stopped.wait((last + 1) / self.fps - (now - self._t0)):
                    return
                continue
            self._thawed()
            with self._lock:
                if self._cut or self._stopped.is_set():
                    return
            jpeg = self._frame(due)
            part = (f"--{BOUNDARY}\r\nContent-Type: image/jpeg\r\nContent-Length: {len(jpeg)}\r\n\r\n".encode()
                    + jpeg + b"\r\n")
            with self._lock:  # stamped before the write: a client can never hold a frame "not yet sent"
                self._sent.setdefault(due, time.time())
                self._lock.notify_all()
            out.write(part)
            out.flush()
            last = due
