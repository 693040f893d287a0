"""TF Serving REST stand-in for the demo and the integration tests (never imported by the daemon).

It answers like TensorFlow Serving's HTTP/REST API: the URL grammar, the JSON bodies and their
whitespace, the status codes and the exact error texts, as read from TF Serving's source
(http_rest_api_handler.cc, http_rest_api_util.cc, json_tensor.cc; see
shared/reference/tfserving-protocol.md). On top of that: injected faults, a request log, and a
control surface under ``/_dev/`` so that a devserver run as a separate process can be driven.

Run it: ``python -m agent.devserver --builtin`` (``--help``: ONNX, model folders, the zero-cost model).
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import json
import logging
import re
import socket
import sys
import threading
import time
import zlib
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable

from agent.devjson import encode, error_body
from agent.devmodels import ModelRepository, VersionStatus, make_model_base
from agent.devrest import Reply, RestApi

__all__ = ["DevServer", "Fault", "RecordedRequest", "make_model_base"]

logger = logging.getLogger(__name__)

_MAX_GUNZIP_BYTES = 100 * 1024 * 1024  # ZLib::kMaxUncompressedBytes

# --- faults, the request log and the server -----------------------------------------------------

_FAULT_FIELDS = {"status", "body", "body_b64", "delay_s", "count", "path_regex", "drop_connection"}


@dataclass(frozen=True)
class Fault:
    """Misbehave on the next ``count`` requests whose path (with ?query) matches ``path_regex``.

    ``status`` alone answers that status with a TF-style ``{"error": ...}`` body; ``body`` alone is sent
    raw with status 200; ``delay_s`` sleeps first (then the real reply, unless told otherwise);
    ``drop_connection`` closes the socket without any reply.
    """

    status: int | None = None
    body: bytes | None = None
    delay_s: float = 0.0
    count: int = 1
    path_regex: str = r":predict$"
    drop_connection: bool = False

    def __post_init__(self) -> None:
        if self.count < 1 or self.delay_s < 0:
            raise ValueError(f"Fault needs count >= 1 and delay_s >= 0, got count={self.count} delay_s={self.delay_s}")
        if self.status is not None and not 100 <= self.status <= 599:
            raise ValueError(f"Fault status {self.status} is not an HTTP status (100..599)")
        re.compile(self.path_regex)

    def reply(self) -> Reply | None:
        """The reply that replaces the real one, or None to answer normally (after the delay)."""
        if self.status is None and self.body is None:
            return None
        status = self.status or 200
        body = self.body if self.body is not None else encode(error_body(f"HTTP {status} (injected by devserver)"))
        content_type = "text/html" if body.lstrip()[:1] == b"<" else "application/json"
        return Reply(status, body, (("Content-Type", content_type),))

    @classmethod
    def from_json(cls, data: Any) -> Fault:
        """A Fault from the control surface's JSON (``body`` as text or ``body_b64``)."""
        if not isinstance(data, dict) or not set(data) <= _FAULT_FIELDS:
            raise ValueError(f"a fault is an object with keys from {sorted(_FAULT_FIELDS)}, got {data!r}")
        fields = dict(data)
        if "body_b64" in fields:
            fields["body"] = base64.b64decode(fields.pop("body_b64"))
        elif isinstance(fields.get("body"), str):
            fields["body"] = fields["body"].encode("utf-8")
        checks: dict[str, tuple[type, ...]] = {
            "status": (int, type(None)), "body": (bytes, type(None)), "delay_s": (int, float),
            "count": (int,), "path_regex": (str,), "drop_connection": (bool,),
        }  # fmt: skip
        for key, value in fields.items():
            if not isinstance(value, checks[key]) or (isinstance(value, bool) and key != "drop_connection"):
                raise ValueError(f"fault field {key}={value!r} has the wrong type")
        return cls(**fields)


@dataclass(frozen=True)
class RecordedRequest:
    """One request as the server saw it, logged on arrival (control requests under /_dev/ are not)."""

    method: str
    path: str
    status: int  # 0 until the reply is sent; stays 0 for a dropped connection
    body_bytes: int  # as received, before gzip decoding
    headers: dict[str, str]
    at: float  # time.time() when the request arrived
    client_port: int = 0  # the client's TCP port: equal ports = one keep-alive connection
    body: bytes | None = dataclasses.field(default=None, repr=False)  # gzip-decoded; kept with record_bodies


def _gunzip(data: bytes) -> bytes:
    """Auto-uncompress as EvHTTPRequest: any failure, or more than 100 MB, leaves an empty body."""
    try:
        inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
        plain = inflater.decompress(data, _MAX_GUNZIP_BYTES + 1)
    except zlib.error:
        return b""
    return plain if inflater.eof and len(plain) <= _MAX_GUNZIP_BYTES else b""


class _HttpServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], devserver: DevServer):
        self.devserver = devserver
        super().__init__(address, _Handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Clients that hang up (timeouts, stop()) are routine here, not worth a traceback on stderr.
        if isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            logger.debug("devserver connection closed client=%s", client_address, exc_info=True)
        else:
            logger.exception("devserver connection failed client=%s", client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as libevent
    server: _HttpServer

    def setup(self) -> None:
        super().setup()
        # Headers and body go out in two writes; without NODELAY, Nagle waits for a delayed ACK (40 ms).
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.server.devserver._opened(self.connection)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.devserver._closed(self.connection)

    def do_GET(self) -> None:
        arrived = time.time()
        raw = self._read_body()
        if raw is None:
            self.close_connection = True
            return
        self._send(self.server.devserver._answer(self, raw, arrived))

    do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = do_GET

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("devserver %s", format % args)

    def _read_body(self) -> bytes | None:
        try:
            if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
                return self._read_chunked()
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            return None
        return self.rfile.read(length) if length > 0 else b""

    def _read_chunked(self) -> bytes:
        parts: list[bytes] = []
        while True:
            size = int(self.rfile.readline(65537).split(b";")[0].strip() or b"0", 16)
            if size == 0:
                while self.rfile.readline(65537).strip():
                    pass  # trailer fields
                return b"".join(parts)
            parts.append(self.rfile.read(size))
            self.rfile.readline()

    def _send(self, reply: Reply | None) -> None:
        if reply is None:  # drop the connection without a word
            self.close_connection = True
            return
        self.send_response_only(reply.status)
        self.send_header("Date", self.date_time_string())
        for name, value in reply.headers:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(reply.body)))
        if reply.close:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(reply.body)


class DevServer:
    """A TF Serving REST stand-in on a local port, serving the models found under ``model_base``."""

    def __init__(
        self,
        model_base: Path | str,
        labels: dict[str, dict[str, int]] | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        record_bodies: bool = False,  # keep every request's body in the log, for tests that read them
    ):
        self.repository = ModelRepository(Path(model_base), labels)
        self.api = RestApi(self.repository)
        self._host, self._port, self._keep_bodies = host, port, record_bodies
        self._lock = threading.Lock()
        self._arrived = threading.Condition(self._lock)  # notified for every recorded request
        self._faults: list[list[Any]] = []  # [Fault, remaining count]
        self._requests: list[RecordedRequest] = []
        self._last_body = b""
        self._connections: set[socket.socket] = set()
        self._connection_count = 0
        self._stopping = threading.Event()
        self._httpd: _HttpServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        if not self._port:
            raise RuntimeError("DevServer.url: the server has not been started (call start())")
        return f"http://{self._host}:{self._port}"

    def start(self) -> DevServer:
        """Serve in a daemon thread; after stop(), start() serves again on the same port."""
        if self._httpd is not None:
            return self
        self._stopping.clear()
        httpd = _HttpServer((self._host, self._port), self)
        self._port = httpd.server_address[1]
        self._httpd = httpd
        self._thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), name="devserver", daemon=True)
        self._thread.start()
        logger.info("devserver started url=%s models=%s", self.url, self.repository.models())
        return self

    def stop(self) -> None:
        """Stop listening and cut every open connection, as a server going down would."""
        httpd, self._httpd = self._httpd, None
        if httpd is None:
            return
        self._stopping.set()
        httpd.shutdown()
        httpd.server_close()
        with self._lock:
            open_sockets = list(self._connections)
        for sock in open_sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        if self._thread is not None:
            self._thread.join(timeout=5)
        logger.info("devserver stopped url=%s", self.url)

    def __enter__(self) -> DevServer:
        return self.start()

    def __exit__(self, *exc_info: Any) -> None:
        self.stop()

    def inject(self, fault: Fault) -> None:
        with self._lock:
            self._faults.append([fault, fault.count])

    def clear_faults(self) -> int:
        with self._lock:
            count, self._faults = len(self._faults), []
        return count

    def recorded(self) -> list[RecordedRequest]:
        """Every request so far (control requests under /_dev/ excepted), in arrival order."""
        with self._lock:
            return list(self._requests)

    def wait_for_request(self, predicate: Callable[[RecordedRequest], bool], timeout: float = 10.0) -> bool:
        """Block until a recorded request (arrived, maybe not yet answered) satisfies ``predicate``."""
        with self._arrived:
            return self._arrived.wait_for(lambda: any(predicate(r) for r in self._requests), timeout)

    def last_body(self) -> bytes:
        """The body of the latest request (gzip-decoded), b"" before any; older bodies are not kept."""
        with self._lock:
            return self._last_body

    def clear_requests(self) -> int:
        with self._lock:
            count, self._requests = len(self._requests), []
        return count

    @property
    def connection_count(self) -> int:
        """Connections accepted so far; keep-alive clients reuse one."""
        with self._lock:
            return self._connection_count

    def set_label(self, model: str, label: str, version: int) -> None:
        self.repository.set_label(model, label, version)

    def set_state(self, model: str, version: int, state: str) -> None:
        self.repository.set_state(model, version, state)

    def add_version(self, model: str, version: int) -> VersionStatus:
        """Load ``<model_base>/<model>/<version>`` (create it first, e.g. with make_model_base)."""
        return self.repository.add_version(model, version)

    def remove_version(self, model: str, version: int) -> None:
        self.repository.remove_version(model, version)

    # -- called from handler threads --

    def _opened(self, sock: socket.socket) -> None:
        with self._lock:
            self._connection_count += 1
            self._connections.add(sock)

    def _closed(self, sock: socket.socket) -> None:
        with self._lock:
            self._connections.discard(sock)

    def _take_fault(self, path: str) -> Fault | None:
        with self._lock:
            for entry in self._faults:
                if re.search(entry[0].path_regex, path):
                    entry[1] -= 1
                    if entry[1] == 0:
                        self._faults.remove(entry)
                    return entry[0]
        return None

    def _answer(self, handler: _Handler, raw: bytes, arrived: float) -> Reply | None:
        """The reply to one request (None = drop the connection); logged on arrival, status on reply."""
        path, method, port = handler.path, handler.command, handler.client_address[1]
        if path.startswith("/_dev/"):
            return self._control(method, path, raw)
        headers = dict(handler.headers.items())
        body = _gunzip(raw) if "gzip" in headers.get("Content-Encoding", "") else raw
        record = RecordedRequest(method, path, 0, len(raw), headers, arrived, port, body if self._keep_bodies else None)
        with self._lock:
            self._requests.append(record)
            self._arrived.notify_all()
            self._last_body = body
        fault = self._take_fault(path)
        if fault is not None and fault.delay_s:
            self._stopping.wait(fault.delay_s)
        if fault is not None and fault.drop_connection:
            return None
        reply = fault.reply() if fault is not None else None
        if reply is None:
            reply = self.api.handle(method, path, body, headers.get("Origin", ""))
        with self._lock:  # the log may have been cleared meanwhile: find the record by identity
            index = next((i for i in range(len(self._requests) - 1, -1, -1) if self._requests[i] is record), None)
            if index is not None:
                self._requests[index] = dataclasses.replace(record, status=reply.status)
        logger.debug("devserver request method=%s path=%s status=%d", method, path, reply.status)
        return reply

    def _control(self, method: str, path: str, body: bytes) -> Reply:
        """The /_dev/ surface: faults, the request log, labels and states, driven over HTTP."""
        try:
            data = json.loads(body) if body else None
            result = self._control_action(method, path, data)
        except (ValueError, TypeError, KeyError, re.error) as exc:
            return Reply(400, encode(json.dumps({"error": f"{method} {path}: {exc}"})))
        if result is None:
            endpoints = "POST|DELETE /_dev/faults, GET|DELETE /_dev/requests, POST /_dev/labels, POST /_dev/state"
            return Reply(404, encode(json.dumps({"error": f"no control endpoint {method} {path}; use {endpoints}"})))
        return Reply(200, encode(json.dumps(result, indent=1)))

    def _control_action(self, method: str, path: str, data: Any) -> Any:
        if (method, path) == ("POST", "/_dev/faults"):
            faults = [Fault.from_json(item) for item in (data if isinstance(data, list) else [data])]
            for fault in faults:
                self.inject(fault)
            return {"queued": len(faults)}
        if (method, path) == ("DELETE", "/_dev/faults"):
            return {"cleared": self.clear_faults()}
        if (method, path) == ("GET", "/_dev/requests"):
            return [{k: v for k, v in dataclasses.asdict(r).items() if k != "body"} for r in self.recorded()]
        if (method, path) == ("DELETE", "/_dev/requests"):
            return {"cleared": self.clear_requests()}
        if (method, path) == ("POST", "/_dev/labels"):
            self.set_label(str(data["model"]), str(data["label"]), int(data["version"]))
            return {"model": data["model"], "label": data["label"], "version": int(data["version"])}
        if (method, path) == ("POST", "/_dev/state"):
            self.set_state(str(data["model"]), int(data["version"]), str(data["state"]))
            return {"model": data["model"], "version": int(data["version"]), "state": data["state"]}
        return None


if __name__ == "__main__":
    from agent.devcli import main

    raise SystemExit(main())
