"""The serving client's HTTP layer against real sockets: TLS with a configured CA, and environment proxies."""

from __future__ import annotations

import json
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

    def do_GET(self) -> None:
        self.lines.append(self.requestline)
        body = json.dumps(STATUS).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def serve(context: ssl.SSLContext | None = None) -> tuple[ThreadingHTTPServer, list[str]]:
    handler = type("Handler", (_Recorder,), {"lines": []})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    if context is not None:
        server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
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
