"""The serving client's HTTP layer against real sockets: TLS with a configured CA, environment proxies (plain
and CONNECT tunnels, with credentials), and keep-alive connections the server drops."""

from __future__ import annotations

import base64
import json
import select
import socket
import ssl
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from test_mqtt_tls import Pki, pki  # noqa: F401 - the session's test certificates (a fixture)

from agent.errors import TransientServerError
from agent.serving import Endpoint, RetryPolicy, ServingClient

STATUS = {"model_version_status": [{"version": "2", "state": "AVAILABLE",
                                    "status": {"error_code": "OK", "error_message": ""}}]}


class _Recorder(BaseHTTPRequestHandler):
    """Answers every GET with a TF Serving status body and records the request line (a proxy sees full URLs)."""

    lines: list[str] = []
    seen: list[dict] = []  # per request: client port and the proxy credentials sent

    def do_GET(self) -> None:
        self.lines.append(self.requestline)
        self.seen.append({"port": self.client_address[1], "auth": self.headers.get("Proxy-Authorization")})
        body = json.dumps(STATUS).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


class _KeepAliveThenDrop(_Recorder):
    """HTTP/1.1 with keep-alive announced, but the connection is closed after each reply, as an idle timeout does."""

    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        super().do_GET()
        self.close_connection = True


class _Tunnel(BaseHTTPRequestHandler):
    """A CONNECT proxy: records the request line and credentials, then relays bytes both ways."""

    lines: list[str] = []
    seen: list[dict] = []

    def do_CONNECT(self) -> None:
        self.lines.append(self.requestline)
        self.seen.append({"auth": self.headers.get("Proxy-Authorization")})
        host, port = self.path.rsplit(":", 1)
        upstream = socket.create_connection((host, int(port)), timeout=5)
        self.send_response(200, "Connection established")
        self.end_headers()
        sockets = [self.connection, upstream]
        try:
            while True:
                readable, _, _ = select.select(sockets, [], [], 5)
                if not readable:
                    return
                for source in readable:
                    data = source.recv(65536)
                    if not data:
                        return
                    (upstream if source is self.connection else self.connection).sendall(data)
        finally:
            upstream.close()
            self.close_connection = True

    def log_message(self, *args: object) -> None:
        pass


def serve(context: ssl.SSLContext | None = None,
          handler_class: type = _Recorder) -> tuple[ThreadingHTTPServer, list[str]]:
    handler = type("Handler", (handler_class,), {"lines": [], "seen": []})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    if context is not None:
        server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    server.seen = handler.seen  # type: ignore[attr-defined]
    return server, handler.lines


def client(url: str, ca_certs: str | None = None) -> ServingClient:
    return ServingClient(Endpoint(url, "m", version=2), retry=RetryPolicy(1, 0.01, 0.01), timeout_s=3,
                         ca_certs=ca_certs)


@pytest.fixture
def https_server(pki: Pki):  # noqa: F811 - the fixture imported above
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(pki.crt("server"), pki.key("server"))
    server, _ = serve(context)
    yield f"https://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_an_https_server_is_trusted_through_the_configured_ca(https_server, pki):  # noqa: F811
    serving = client(https_server, ca_certs=pki.crt("ca"))
    try:
        assert [s.state for s in serving.status()] == ["AVAILABLE"]
    finally:
        serving.close()


def test_an_https_server_the_client_cannot_verify_is_a_transient_cannot_connect(https_server):
    serving = client(https_server)  # the system's CAs do not know the test CA
    try:
        with pytest.raises(TransientServerError, match="cannot connect .*certificate verify failed"):
            serving.status()
    finally:
        serving.close()


def test_the_environments_proxy_is_used_and_no_proxy_is_honoured(monkeypatch):
    proxy, seen = serve()
    try:
        monkeypatch.setenv("http_proxy", f"http://127.0.0.1:{proxy.server_address[1]}")
        monkeypatch.setenv("no_proxy", "direct.invalid")
        serving = client("http://models.invalid:8501")
        assert [s.version for s in serving.status()] == ["2"]
        assert seen == ["GET http://models.invalid:8501/v1/models/m/versions/2 HTTP/1.1"]
        serving.close()
        bypassed = client("http://direct.invalid:8501")
        with pytest.raises(TransientServerError, match="cannot connect"):
            bypassed.status()  # straight to a host that does not resolve, not through the proxy
        bypassed.close()
        assert len(seen) == 1
    finally:
        proxy.shutdown()
        proxy.server_close()


def test_a_keep_alive_connection_the_server_dropped_is_replaced_without_an_error_or_a_retry():
    server, lines = serve(handler_class=_KeepAliveThenDrop)
    serving = client(f"http://127.0.0.1:{server.server_address[1]}")  # one attempt: a retry would fail the test
    try:
        for _ in range(3):
            assert [s.version for s in serving.status()] == ["2"]
        assert len(lines) == 3
        assert len({seen["port"] for seen in server.seen}) == 3, "each request after a drop needs a new connection"
    finally:
        serving.close()
        server.shutdown()
        server.server_close()


def test_proxy_credentials_in_the_environment_are_sent_as_basic_proxy_authorization(monkeypatch):
    proxy, seen = serve()
    try:
        monkeypatch.setenv("http_proxy", f"http://edge%40site:s3cret@127.0.0.1:{proxy.server_address[1]}")
        serving = client("http://models.invalid:8501")
        assert [s.version for s in serving.status()] == ["2"]
        serving.close()
        assert seen == ["GET http://models.invalid:8501/v1/models/m/versions/2 HTTP/1.1"]
        assert proxy.seen[0]["auth"] == "Basic " + base64.b64encode(b"edge@site:s3cret").decode()
    finally:
        proxy.shutdown()
        proxy.server_close()


def test_an_https_server_is_reached_through_a_connect_tunnel_of_the_environments_proxy(https_server, pki,  # noqa: F811
                                                                                   monkeypatch):
    tunnel, lines = serve(handler_class=_Tunnel)
    try:
        monkeypatch.setenv("https_proxy", f"http://user:pw@127.0.0.1:{tunnel.server_address[1]}")
        port = https_server.rsplit(":", 1)[1]
        serving = client(https_server, ca_certs=pki.crt("ca"))
        for _ in range(2):  # the test server speaks HTTP/1.0: a new connection, so a new tunnel, each time
            assert [s.state for s in serving.status()] == ["AVAILABLE"]
        serving.close()
        assert lines == [f"CONNECT 127.0.0.1:{port} HTTP/1.0"] * 2
        assert tunnel.seen[0]["auth"] == "Basic " + base64.b64encode(b"user:pw").decode()
    finally:
        tunnel.shutdown()
        tunnel.server_close()
