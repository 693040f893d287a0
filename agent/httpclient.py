"""One keep-alive HTTP/1.1 connection to one server, on the standard library's ``http.client``.

Why not urllib3 or requests: per 0.5 MB predict request they cost 1.3 ms and 2 ms of CPU here, this
0.7 ms (bench/frame_path.py); on a Pi that is a tenth of a frame. What they add and the agent needs is
kept: keep-alive with reconnection, TLS verified against a CA file, proxies from the environment
(``http_proxy``/``https_proxy``/``no_proxy``, looked up once), separate connect and read timeouts.

Errors are the standard ones: ``TimeoutError`` (``socket.timeout`` on 3.9), ``OSError`` for everything
that stops a connection (refused, DNS, TLS, reset), ``http.client.HTTPException`` for a reply that is
not HTTP. The caller decides what they mean.
"""

from __future__ import annotations

import base64
import http.client
import select
import ssl
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit
from urllib.request import getproxies

# A request that fails in these ways on a connection that was idle was never read by the server: the
# server closed the connection meanwhile (keep-alive timeout). Sent again once on a fresh one.
_STALE = (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError, ConnectionAbortedError)


@dataclass(frozen=True)
class Response:
    status: int
    reason: str
    data: bytes


@dataclass(frozen=True)
class _Proxy:
    host: str
    port: int
    authorization: str | None  # the Proxy-Authorization value for credentials in the proxy URL


class Connection:
    """Requests to one ``scheme://host:port``, one at a time, over one reused connection."""

    def __init__(self, url: str, *, connect_timeout: float, read_timeout: float, ca_certs: str | None = None):
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"{url!r} is not an http:// or https:// URL with a host")
        self.scheme = parts.scheme
        self.host = parts.hostname
        self.port = parts.port or (443 if self.scheme == "https" else 80)
        self.origin = f"{self.scheme}://{parts.netloc.rsplit('@', 1)[-1]}"
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.ca_certs = ca_certs
        self._context: ssl.SSLContext | None = None  # made on first connect: a bad CA file is a connect error
        self._setup_error: ValueError | None = None
        try:
            self.proxy = _environment_proxy(url)
        except ValueError as exc:  # raised by the first request, where the caller maps errors
            self.proxy, self._setup_error = None, exc
        self._conn: http.client.HTTPConnection | None = None

    def request(self, method: str, url: str, body: bytes | None = None,
                headers: dict[str, str] | None = None) -> Response:
        """Send one request to ``url`` (on this server), read the whole reply; a dropped idle connection is replaced."""
        parts = urlsplit(url)
        headers = dict(headers or {})
        target = parts.path or "/"
        if parts.query:
            target += "?" + parts.query
        if self.proxy is not None and self.scheme == "http":  # a plain-HTTP proxy takes the absolute URL
            target = self.origin + target
            if self.proxy.authorization:
                headers["Proxy-Authorization"] = self.proxy.authorization
        reused = self._conn is not None and not self._dropped(self._conn)
        while True:
            conn = self._conn if reused and self._conn is not None else self._open()
            try:
                conn.request(method, target, body=body, headers=headers)
                reply = conn.getresponse()
                data = reply.read()
            except _STALE:
                self.close()
                if reused:
                    reused = False
                    continue
                raise
            except BaseException:
                self.close()  # a half-read reply must not be mistaken for the next one's start
                raise
            if reply.will_close:
                self.close()
            return Response(reply.status, reply.reason, data)

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def __del__(self) -> None:  # a client dropped without close() must not leak its socket
        self.close()

    def _open(self) -> http.client.HTTPConnection:
        self.close()
        if self._setup_error is not None:
            raise self._setup_error
        host, port = (self.proxy.host, self.proxy.port) if self.proxy else (self.host, self.port)
        conn: http.client.HTTPConnection
        if self.scheme == "https":
            if self._context is None:
                self._context = ssl.create_default_context(cafile=self.ca_certs)
            conn = http.client.HTTPSConnection(host, port, timeout=self.connect_timeout, context=self._context)
            if self.proxy is not None:
                tunnel_headers = {"Proxy-Authorization": self.proxy.authorization} if self.proxy.authorization else None
                conn.set_tunnel(self.host, self.port, headers=tunnel_headers)
        else:
            conn = http.client.HTTPConnection(host, port, timeout=self.connect_timeout)
        conn.connect()  # now, so the read timeout below applies to the replies only
        assert conn.sock is not None
        conn.sock.settimeout(self.read_timeout)
        self._conn = conn
        return conn

    @staticmethod
    def _dropped(conn: http.client.HTTPConnection) -> bool:
        """An idle keep-alive socket that is readable was closed by the server (or got garbage)."""
        sock = conn.sock
        if sock is None:
            return True
        poller = select.poll()  # not select(): it cannot watch descriptors above 1023
        poller.register(sock, select.POLLIN)
        return bool(poller.poll(0))


def _environment_proxy(url: str) -> _Proxy | None:
    if not getproxies():  # the usual case; spares importing requests (~0.1 s here, up to 1 s on a Pi)
        return None
    import requests.utils  # its no_proxy matching (CIDR ranges too) is what the rest of the world uses

    proxy_url = requests.utils.get_environ_proxies(url).get(urlsplit(url).scheme)
    if not proxy_url:
        return None
    parts = urlsplit(proxy_url if "://" in proxy_url else f"http://{proxy_url}")
    if parts.scheme != "http" or not parts.hostname:
        raise ValueError(f"proxy {proxy_url!r} from the environment: only http:// proxies are supported")
    authorization = None
    if parts.username is not None:
        credentials = f"{unquote(parts.username)}:{unquote(parts.password or '')}".encode()
        authorization = "Basic " + base64.b64encode(credentials).decode("ascii")
    return _Proxy(parts.hostname, parts.port or 80, authorization)
